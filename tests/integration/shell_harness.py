"""A headless Weston, vmclient-shell on it (as an unprivileged user), and screenshots.

Weston's headless backend renders with pixman into memory; ``--debug`` lets
``weston-screenshooter`` read the composited output back: the pixels a person
would see.  The tests use Weston's desktop shell, not the kiosk shell the
image runs: Debian 12's Weston 10.0.1 kiosk-shell maps a window only when it
gives it a seat's keyboard focus, and the headless backend has no seat (fixed
in Weston 11: kiosk-shell activates surfaces without a keyboard).  The shell's
window is full screen either way.

:class:`PasswordSandbox` gives the shell a password without touching the host:
the shell runs in a mount namespace of its own with an overlay on ``/etc``
where ``pam.d`` also holds the image's ``vmclient-shell`` service file
(python-services/data/pam.d; it includes the host's ``common-*``), ``shadow``
is a copy with a password hash for the shell's user (made by ``openssl passwd
-6``), and ``nsswitch.conf`` reads shadow entries from files only (systemd's NSS
module synthesises a shadow entry for ``nobody``, which would keep pam_unix
from asking its helper).  The check
itself is the image's: pam_unix, and its setuid helper ``unix_chkpwd`` reading
that shadow file.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fixtures_bus import PrivateSystemBus
from fixtures_virt import TCG_SLOWDOWN, scaled
from pixels import Image

from testlib import SERVICES, run

PAM_SERVICE_FILE = SERVICES / "data" / "pam.d" / "vmclient-shell"

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 1024, 768
USER = 65534  # nobody: the shell runs unprivileged


def as_user(uid: int, groups: tuple[str, ...] = ()) -> list[str]:
    """setpriv's arguments to run as ``uid`` with the supplementary ``groups`` (names)."""
    gids = ",".join(str(grp.getgrnam(g).gr_gid) for g in groups)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}",
            f"--groups={gids}" if gids else "--clear-groups"]


def user_dir(uid: int, prefix: str) -> Path:
    """A new directory of the user's own (outside the test's 0700 tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(path, uid, uid)
    return path


class Weston:
    def __init__(self, uid: int = USER, keyboard: str | None = None, ini: str = "") -> None:
        """``keyboard``: the XKB layout Weston starts with (its ``XKB_DEFAULT_LAYOUT``, which
        the image's weston.service takes from the layout the first start kept); ``ini``:
        more of weston.ini (an ``[output]`` section named ``headless`` with a ``scale``
        makes a HiDPI screen of ``WIDTH``x``HEIGHT`` logical pixels)."""
        self.uid = uid
        self.keyboard = keyboard
        self.runtime = Path(tempfile.mkdtemp(prefix="vmclient-xdg-"))
        os.chown(self.runtime, uid, uid)
        os.chmod(self.runtime, 0o700)
        self.socket = f"wl-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.log_path = self.runtime.with_suffix(".log")
        # Weston's defaults but its animations: desktop-shell fades the whole output in at
        # start (a screenshot in that second has every colour a few percent dark, and a
        # frame's colour no longer matches) and fades it out when idle.
        config = self.runtime / "weston.ini"
        config.write_text("[core]\nidle-time=0\n\n[shell]\nstartup-animation=none\n"
                          "animation=none\nclose-animation=none\nfocus-animation=none\n"
                          + ini)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*as_user(uid), "weston", "--backend=headless-backend.so", "--use-pixman",
                 "--shell=desktop-shell.so", f"--config={config}", "--debug",
                 f"--socket={self.socket}", f"--width={WIDTH}", f"--height={HEIGHT}"],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + scaled(20)
        while not (self.runtime / self.socket).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("weston did not start:\n" + self.log())
            time.sleep(0.05)

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(self.runtime),
               "WAYLAND_DISPLAY": getattr(self, "socket", "")}
        if self.keyboard is not None:
            env["XKB_DEFAULT_LAYOUT"] = self.keyboard
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def screenshot(self) -> Image:
        """The composited output, as weston-screenshooter reads it back."""
        out = Path(tempfile.mkdtemp(prefix="vmclient-shot-"))
        try:
            os.chown(out, self.uid, self.uid)
            run([*as_user(self.uid), "weston-screenshooter"], cwd=out, env=self.env(),
                check=True, timeout=scaled(20))
            (png,) = list(out.glob("*.png"))
            return Image.load(png)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.runtime, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


class PasswordSandbox:
    """The shell's /etc: the host's, under an overlay holding the test's shadow, nsswitch.conf
    and the image's PAM service file."""

    def __init__(self, workdir: Path, user: str, password: str | None,
                 name: str = "etc-overlay") -> None:
        """``password`` None: the user's shadow entry as the host has it (nobody: none)."""
        self.dir = workdir / name
        upper = self.dir / "upper"
        (upper / "pam.d").mkdir(parents=True)
        (self.dir / "work").mkdir()
        shutil.copy(PAM_SERVICE_FILE, upper / "pam.d" / "vmclient-shell")
        digest = "" if password is None else run(
            ["openssl", "passwd", "-6", "-stdin"], input=password, check=True).stdout.strip()
        lines = []
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and password is not None:
                fields[1] = digest
            lines.append(":".join(fields))
        shadow = upper / "shadow"
        shadow.write_text("\n".join(lines) + "\n")
        shutil.chown(shadow, "root", "shadow")
        shadow.chmod(0o640)
        nss = [("shadow:         files" if ln.startswith("shadow:") else ln)
               for ln in Path("/etc/nsswitch.conf").read_text().splitlines()]
        (upper / "nsswitch.conf").write_text("\n".join(nss) + "\n")
        for d in (upper, upper / "pam.d"):
            d.chmod(0o755)
        self.shadow = shadow
        self.holder: subprocess.Popen[bytes] | None = None

    def _mount(self) -> str:
        opts = (f"lowerdir=/etc,upperdir={self.dir / 'upper'},"
                f"workdir={self.dir / 'work'}")
        return f"mount -t overlay vmclient-test-etc -o {opts} /etc"

    def hold(self) -> str:
        """A mount namespace with the overlay that outlives the shells run in it (a
        restarted shell, and syncd's nsenter, see the same /etc): its path."""
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"{self._mount()} && exec sleep infinity"])
        mounts = Path(f"/proc/{self.holder.pid}/mountinfo")
        deadline = time.monotonic() + scaled(10)
        while "vmclient-test-etc" not in mounts.read_text():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the /etc overlay was not mounted")
            time.sleep(0.05)
        return f"/proc/{self.holder.pid}/ns/mnt"

    def release(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def entry(self, user: str) -> str:
        """``user``'s shadow entry as it is in the overlay now (``chpasswd`` may have
        replaced the file)."""
        for line in self.shadow.read_text().splitlines():
            if line.split(":")[0] == user:
                return line
        raise AssertionError(f"no shadow entry for {user}")

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` in a mount namespace of its own with the overlay on /etc (the host's /etc
        stays as it is; other tests change it meanwhile, e.g. useradd)."""
        if self.holder is not None:
            return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", *cmd]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'{self._mount()} && exec "$@"', "sh", *cmd]


class ShellUnderTest:
    """shell_driver.py on the Weston, talking to vmclient-provd on the private bus."""

    def __init__(self, weston: Weston, bus: PrivateSystemBus, workdir: Path,
                 prefix: str, passwords: PasswordSandbox | None = None,
                 groups: tuple[str, ...] = (), state_home: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``groups``: the shell's user's (the image puts the seat's user in ``vmclient``,
        whom the bus policy lets call provd's methods); ``state_home``: the user's
        XDG_STATE_HOME (one of its own, removed when it stops, if not given); ``env``:
        more of its environment (e.g. the sound server's address)."""
        self.weston = weston
        self.log_path = workdir / "shell.log"
        self.own_state = state_home is None
        self.state_home = state_home or user_dir(weston.uid, "vmclient-state-")
        cmd = [*as_user(weston.uid, groups), sys.executable, str(HERE / "shell_driver.py")]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                passwords.wrap(cmd) if passwords is not None else cmd,
                env={**weston.env(), "GDK_BACKEND": "wayland",
                     "DBUS_SYSTEM_BUS_ADDRESS": bus.address, "VMCLIENT_TEST_PREFIX": prefix,
                     "XDG_STATE_HOME": str(self.state_home),
                     "PYTHONPATH": str(SERVICES / "src"), **(env or {})},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        # Its first answer: GTK's main loop runs.  Importing GTK and spice-gtk cold on a
        # loaded machine (the first shell of a run) takes seconds: that is spent here,
        # waiting for the event, not inside a test's timed wait for a picture.
        self.ask("state")

    def ask(self, line: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            raise AssertionError(f"the shell exited ({self.proc.poll()}):\n{self.log()}\n"
                                 f"weston:\n{self.weston.log()[-3000:]}")
        return json.loads(answer)

    def key(self, code: int, name: str, *mods: str, kind: str = "key") -> None:
        """A key press and release (``kind`` "press" or "release": only that)."""
        assert self.ask(" ".join([kind, str(code), name, *mods])) == {"ok": True}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it may be dying meanwhile
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_state:
            shutil.rmtree(self.state_home, ignore_errors=True)


def need_desktop(*tools: str) -> None:
    """What every shell test needs: root, Weston, setpriv, spice-gtk's GTK bindings, and
    ``tools``; missing ones skip the test (fail it in CI: testlib.need)."""
    from testlib import need

    need(os.geteuid() == 0, "needs root (libvirt, setpriv)")
    for tool in ("weston", "setpriv", *tools):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    try:
        import gi

        gi.require_version("SpiceClientGtk", "3.0")
    except (ImportError, ValueError):
        need(False, "spice-gtk's GTK introspection data (gir1.2-spiceclientgtk-3.0) is missing")


def stop_desk(shell: ShellUnderTest | None, weston: Weston | None, provd: Any) -> None:
    """The shell, then Weston, then provd stopped, each whatever the one before did."""
    try:
        if shell is not None:
            shell.stop()
    finally:
        try:
            if weston is not None:
                weston.stop()
        finally:
            provd.stop()


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first true value, polled.  Bounded as a wait for a TCG guest is
    (``scaled()`` on a machine without KVM): the echo guests run under TCG on every
    machine, and they, Weston, the shell and the daemons share two loaded cores (a
    VM destroyed reaches the shell through libvirt's event, provd and the shell's
    2-s poll: 20 s and more at load 20).  It ends as soon as the state is seen."""
    deadline = time.monotonic() + timeout * TCG_SLOWDOWN
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)

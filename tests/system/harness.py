"""Boot a whole vmclient host image under QEMU and drive it: SSH and QMP.

    from tests.system.harness import BootConfig, Machine
    cfg = BootConfig.from_image_dir(path)            # tests/system/image/build output
    cfg = BootConfig.from_qemuboot("…/x.qemuboot.conf")   # a Yocto image (untested)
    with Machine(cfg) as m:
        m.start(); m.wait_ssh(); m.ssh("systemctl is-system-running --wait")
        m.qmp.execute("query-status"); m.events.wait_for("SUSPEND", timeout=60)

- QEMU runs as a child in its own process group, with a throw-away qcow2
  overlay over the image (the image never changes), user-mode network with
  `restrict=on` and one `hostfwd` to 127.0.0.1 only, and two QMP unix sockets:
  one for commands, one for an event logger thread (one client per socket).
- Under TCG (`-accel tcg,thread=multi -cpu max`) KVM works inside the guest,
  which is what the nested firmware-only VMs of the system tests use.
- `Machine.serve_to_guest(addr, port)` before start(): the guest reaches
  `addr:port` (e.g. 10.0.2.100:22) through a `guestfwd`; each connection runs a
  small relay on this machine to the 127.0.0.1 port `forward_to()` names (a
  server started later, or restarted on a new port).  restrict=on stays: the
  guest reaches nothing else.
- `-machine pc -global PIIX4_PM.disable_s3=0`: S3 works repeatedly (on q35
  only the first one does); the host sees QMP SUSPEND and wakes the guest with
  `system_wakeup`.
- close() always leaves nothing behind: QEMU is terminated (SIGTERM, then
  SIGKILL to its process group) and the work directory removed unless kept.
- An image that asks for them (image.json "tpm", "data_disk") gets a TPM 2.0
  from swtpm (`-tpmdev emulator`, `tpm-crb`) whose state `Machine.tpm_state`
  is kept across shutdown()/start() like the disks, and a blank second disk
  (serial `vmdata`, /dev/vdb) where the host makes its encrypted data
  partition on its first boot.  A test gives the machine another TPM by
  pointing `tpm_state` at another directory before start().

Standard library plus paramiko only; stays compatible with Python 3.11+.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paramiko

QEMU_DEFAULT = "qemu-system-x86_64"


class HarnessError(Exception):
    """The machine did not do what the harness waited for."""


class QMPError(HarnessError):
    pass


# --------------------------------------------------------------------------- QMP


class QMP:
    """A synchronous QMP client on one unix socket (one client per socket)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()
        self.greeting: dict[str, Any] = {}
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    def connect(self, deadline: float) -> None:
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise HarnessError(f"QMP socket {self.path} did not come up") from None
                time.sleep(0.05)
        self._sock = s
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError(f"QMP {self.path}: connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def read_event(self, timeout: float | None = None) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        return self._read()

    def execute(self, command: str, **arguments: Any) -> Any:
        with self._lock:
            assert self._sock is not None
            self._sock.settimeout(self.timeout)
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = self._read()
                if "event" in reply:
                    if self.on_event:
                        self.on_event(reply)
                    continue
                if "error" in reply:
                    raise QMPError(f"QMP {command}: {reply['error']}")
                return reply.get("return")

    def close(self) -> None:
        if self._sock:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


@dataclass
class Event:
    t: float  # time.monotonic() when the harness read it
    name: str
    data: dict[str, Any]


class EventLog:
    """Reads every QMP event of a second QMP socket in a thread, keeps and logs them."""

    def __init__(self, path: Path, logfile: Path) -> None:
        self._qmp = QMP(path)
        self._logfile = logfile
        self._cond = threading.Condition()
        self.events: list[Event] = []
        self._thread: threading.Thread | None = None
        self._stop = False

    def start(self, deadline: float) -> None:
        self._qmp.connect(deadline)
        self._thread = threading.Thread(target=self._run, name="qmp-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._logfile.open("a") as log:
            while not self._stop:
                try:
                    msg = self._qmp.read_event(timeout=0.5)
                except TimeoutError:
                    continue
                except (OSError, QMPError, json.JSONDecodeError):
                    break
                ev = Event(time.monotonic(), msg.get("event", "?"), msg.get("data", {}))
                log.write(json.dumps(msg) + "\n")
                log.flush()
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()

    def mark(self) -> int:
        """An index: wait_for(after=mark) ignores events before it."""
        with self._cond:
            return len(self.events)

    def wait_for(self, name: str, timeout: float, after: int = 0) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[after:]:
                    if ev.name == name:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.name for e in self.events[after:]]
                    raise HarnessError(f"no QMP event {name} within {timeout} s (saw {seen})")
                self._cond.wait(left)

    def names(self, after: int = 0) -> list[str]:
        with self._cond:
            return [e.name for e in self.events[after:]]

    def stop(self) -> None:
        self._stop = True
        self._qmp.close()
        if self._thread:
            self._thread.join(timeout=2)


# ------------------------------------------------------------------ boot config


@dataclass
class BootConfig:
    """What to boot and how.  Paths absolute."""

    disk: Path
    disk_format: str = "qcow2"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = "root=/dev/vda rw console=ttyS0"
    ssh_key: Path | None = None
    ssh_password: str | None = None  # e.g. "" for a Yocto image with empty-root-password
    root_user: str = "root"
    unprivileged_user: str | None = "alice"
    qemu: str = QEMU_DEFAULT
    memory_mb: int = 2560
    smp: int = 2
    accel: str = "tcg"  # "kvm" where the host's KVM boots a Linux guest
    cpu: str = "max"
    machine: str = "pc"
    extra_args: list[str] = field(default_factory=list)
    kind: str = "debian-test-host"
    tpm: bool = False  # a TPM 2.0 from swtpm (tpm-crb)
    data_disk_size: str | None = None  # a blank second disk (qemu-img size), serial vmdata
    # UEFI firmware (OVMF) instead of a direct kernel boot: its code (read-only) and the
    # template of its variable store, copied into the work directory at the first start
    firmware_code: Path | None = None
    firmware_vars: Path | None = None
    # (disk, serial), read-only: a qcow2 (*.qcow2) or a raw image (any other name)
    extra_disks: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def from_image_dir(cls, path: Path) -> BootConfig:
        """The output directory of tests/system/image/build (has image.json)."""
        path = Path(path).resolve()
        meta = json.loads((path / "image.json").read_text())
        fw = meta.get("firmware") or {}
        return cls(
            disk=path / meta["disk"],
            disk_format=meta.get("disk_format", "qcow2"),
            kernel=path / meta["kernel"] if "kernel" in meta else None,
            initrd=path / meta["initrd"] if "initrd" in meta else None,
            append=meta.get("append", ""),
            firmware_code=Path(fw["code"]) if fw else None,
            firmware_vars=Path(fw["vars"]) if fw else None,
            extra_disks=[(path / d["file"], d["serial"]) for d in meta.get("extra_disks", ())],
            ssh_key=path / meta["ssh_key"],
            root_user=meta["users"]["root"],
            unprivileged_user=meta["users"].get("unprivileged"),
            kind=meta.get("kind", "debian-test-host"),
            tpm=bool(meta.get("tpm", False)),
            data_disk_size=meta.get("data_disk"),
        )

    @classmethod
    def from_qemuboot(cls, conf: Path, ssh_key: Path | None = None) -> BootConfig:
        """A Yocto image from its <image>.qemuboot.conf (as runqemu reads it).

        Reads qb_default_kernel, qb_default_fstype, image_link_name/image_name,
        deploy_dir_image (or the conf's own directory), qb_mem, qb_smp,
        qb_kernel_cmdline_append, qb_system_name, qb_opt_append, qb_drive_type,
        qb_rootfs_opt and qb_cpu.  The machine stays `pc` with S3 enabled (the
        tests need repeated S3) unless VMCLIENT_QEMU_MACHINE says otherwise; the
        image's own network, serial and graphics options are replaced by the
        harness's.  Not exercised here (no Yocto build on these machines).
        """
        import configparser

        conf = Path(conf).resolve()
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(conf)
        sec = cp["config_bsp"] if cp.has_section("config_bsp") else cp[cp.sections()[0]]
        deploy = Path(sec.get("deploy_dir_image", "") or conf.parent)
        if not deploy.is_dir():
            deploy = conf.parent
        link = sec.get("image_link_name") or sec.get("image_name") or conf.name.split(".")[0]
        fstype = sec.get("qb_default_fstype", "ext4")
        disk = deploy / f"{link}.{fstype}"
        fmt = "qcow2" if fstype.endswith("qcow2") else "raw"
        kernel = sec.get("qb_default_kernel")
        drive = sec.get("qb_drive_type", "/dev/vd").strip() or "/dev/vd"
        rootdev = "/dev/vda" if drive.startswith("/dev/vd") else drive + "a"
        if fstype.startswith("wic"):
            rootdev = rootdev + "2"  # wic: boot partition first, then root
        append = f"root={rootdev} rw console=ttyS0 {sec.get('qb_kernel_cmdline_append', '')}"
        mem = sec.get("qb_mem", "-m 1024").replace("-m", "").strip().rstrip("M") or "1024"
        extra = shlex.split(sec.get("qb_opt_append", ""))
        # runqemu's extra options that the harness provides itself
        extra = [a for a in extra if not a.startswith("-show-cursor")]
        cpu = sec.get("qb_cpu", "-cpu max").replace("-cpu", "").strip() or "max"
        return cls(
            disk=disk,
            disk_format=fmt,
            kernel=(deploy / kernel) if kernel and not fstype.startswith("wic") else None,
            initrd=None,
            append=append.strip(),
            ssh_key=ssh_key,
            ssh_password=None if ssh_key else "",
            unprivileged_user=None,
            qemu=sec.get("qb_system_name", QEMU_DEFAULT) or QEMU_DEFAULT,
            memory_mb=max(int(mem), 2048),
            smp=int(sec.get("qb_smp", "-smp 2").replace("-smp", "").strip() or 2),
            cpu=cpu if os.environ.get("VMCLIENT_QEMU_CPU") is None else os.environ["VMCLIENT_QEMU_CPU"],
            machine=os.environ.get("VMCLIENT_QEMU_MACHINE", "pc"),
            extra_args=extra,
            kind="yocto",
        )


# ---------------------------------------------------------------------- machine

# One guestfwd connection: the guest's socket is this process's fd 0 (libslirp
# runs the command per connection); relay it to 127.0.0.1:<port in argv[1]'s file>.
GUEST_RELAY = """\
import os, selectors, socket, sys
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # fd 2 is the guest's socket too
with open(sys.argv[1]) as f:
    port = int(f.read())
up = socket.create_connection(("127.0.0.1", port))
down = socket.socket(fileno=0)
sel = selectors.DefaultSelector()
sel.register(up, selectors.EVENT_READ, down)
sel.register(down, selectors.EVENT_READ, up)
left = 2
while left:
    for key, _ in sel.select():
        data = key.fileobj.recv(65536)
        if data:
            key.data.sendall(data)
            continue
        sel.unregister(key.fileobj)
        left -= 1
        try:
            key.data.shutdown(socket.SHUT_WR)
        except OSError:
            pass
"""


@dataclass
class Result:
    cmd: str
    rc: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.rc != 0:
            raise HarnessError(
                f"command failed ({self.rc}): {self.cmd}\n--- stdout\n{self.stdout}"
                f"--- stderr\n{self.stderr}"
            )
        return self


def screen_args(vnc: bool = False) -> list[str]:
    """QEMU arguments (for ``BootConfig.extra_args``) that give the booted host a screen:
    QEMU's standard VGA at 1280x800 (the kernel's bochs DRM driver, where the test
    host's Weston and vmclient-shell start) and a tablet and keyboard.  Not virtio-vga:
    QEMU resets its devices when the host wakes from S3, and the test host's kernel
    (Debian 12, 6.1) has no freeze/restore for virtio-gpu (it has for virtio-blk, and
    bochs has suspend/resume): after the lid opened the screen stayed "Display output
    is not active" and the next GPU call hung. with ``vnc``, a VNC server on 127.0.0.1 (the first free
    display, ``vnc_port()`` says which) for a person to watch and type.  Without
    it the screen is only read back with QMP ``screendump``."""
    args = ["-vga", "none", "-device", "VGA,xres=1280,yres=800",
            "-device", "virtio-tablet-pci", "-device", "virtio-keyboard-pci"]
    return args + (["-display", "vnc=127.0.0.1:0,to=99"] if vnc else [])


def usb_args() -> list[str]:
    """QEMU arguments (for ``BootConfig.extra_args``) that give the booted host a USB
    port: an xHCI controller (``id=xhci``), empty until ``plug_usb()`` plugs a device
    in, as a person plugs a stick into a running laptop."""
    return ["-device", "qemu-xhci,id=xhci"]


def plug_usb(q: QMP, dev_id: str, driver: str, image: Path | None = None,
             **props: Any) -> None:
    """Plug a USB device into the xHCI of ``usb_args()``: ``driver`` is QEMU's
    (``usb-storage`` backed by the raw file ``image``, ``usb-mtp``, ``usb-kbd``…)."""
    if image is not None:
        q.execute("blockdev-add", driver="raw", **{"node-name": f"{dev_id}-disk"},
                  file={"driver": "file", "filename": str(image)})
        props["drive"] = f"{dev_id}-disk"
    q.execute("device_add", driver=driver, id=dev_id, bus="xhci.0", **props)


def vnc_port(q: QMP) -> int | None:
    """The TCP port of the machine's VNC server, if it has one."""
    info = q.execute("query-vnc")
    return int(info["service"]) if info.get("enabled") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Machine:
    """One QEMU machine booted from a BootConfig; restartable on the same disk."""

    def __init__(self, cfg: BootConfig, workdir: Path | None = None, keep: bool = False,
                 name: str = "vmclient-test", die_with_parent: bool = True,
                 cold_restarts: bool = False) -> None:
        self.cfg = cfg
        # a restart from inside ends QEMU (-no-reboot) and the harness starts a new one
        # on the same disks, NVRAM and TPM: every boot from a fresh QEMU (reboot())
        self.cold_restarts = cold_restarts
        self.die_with_parent = die_with_parent
        self.name = name
        self.keep = keep or bool(os.environ.get("VMCLIENT_KEEP_WORKDIR"))
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vmclient-system."))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.overlay = self.workdir / "disk.qcow2"
        self.efivars = self.workdir / "efivars.fd"  # the firmware's NVRAM, kept like the disks
        self.data_disk = self.workdir / "data.qcow2"
        # the machine's TPM: kept across shutdown()/start(), as a laptop keeps its own
        self.tpm_state = self.workdir / "tpm"
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.console_log = self.workdir / "console.log"
        self.events_log = self.workdir / "qmp-events.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMP | None = None
        self.events: EventLog | None = None
        self.port = 0
        self._clients: dict[str, paramiko.SSHClient] = {}
        self.boots = 0
        self._guest_services: dict[tuple[str, int], Path] = {}

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_overlay(self) -> None:
        if self.cfg.firmware_vars and not self.efivars.exists():
            shutil.copy(self.cfg.firmware_vars, self.efivars)
        if self.cfg.data_disk_size and not self.data_disk.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.data_disk),
                            self.cfg.data_disk_size], check=True)
        if self.overlay.exists():
            return
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.cfg.disk_format,
             "-b", str(self.cfg.disk), str(self.overlay)],
            check=True,
        )

    @property
    def _swtpm_sock(self) -> Path:
        return self.workdir / "swtpm.sock"

    def _start_swtpm(self, deadline: float) -> None:
        """One swtpm per QEMU run on the state in tpm_state; it ends with QEMU."""
        self.tpm_state.mkdir(parents=True, exist_ok=True)
        self._swtpm_sock.unlink(missing_ok=True)
        argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_state}",
                "--ctrl", f"type=unixio,path={self._swtpm_sock}", "--terminate",
                "--log", f"file={self.workdir / 'swtpm.log'}"]
        if self.die_with_parent and shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        self.swtpm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=(self.workdir / "swtpm.log").open("ab"),
                                      start_new_session=True)
        while not self._swtpm_sock.exists():
            if self.swtpm.poll() is not None or time.monotonic() > deadline:
                self._stop_swtpm()
                log = (self.workdir / "swtpm.log").read_text(errors="replace")[-2000:]
                raise HarnessError(f"swtpm did not start (state {self.tpm_state}):\n{log}")
            time.sleep(0.02)

    def _stop_swtpm(self) -> None:
        if self.swtpm is None:
            return
        if self.swtpm.poll() is None:
            try:
                self.swtpm.wait(timeout=5)  # --terminate: it ends when QEMU hangs up
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.swtpm.pid, signal.SIGKILL)
                self.swtpm.wait(timeout=10)
        self.swtpm = None

    def serve_to_guest(self, addr: str, port: int) -> None:
        """Before start(): let the guest connect to addr:port (an address of
        user-mode networking's 10.0.2.0/24 that no one else has, e.g. 10.0.2.100),
        relayed to the 127.0.0.1 port forward_to() names at connection time."""
        if self.running:
            raise HarnessError("serve_to_guest() must come before start()")
        relay = self.workdir / "guest-relay.py"
        relay.write_text(GUEST_RELAY)
        self._guest_services[(addr, port)] = self.workdir / f"guestfwd-{addr}-{port}.port"

    def forward_to(self, addr: str, port: int, local_port: int) -> None:
        """Where the guest's connections to addr:port go from now on."""
        path = self._guest_services[(addr, port)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(local_port))
        tmp.rename(path)

    def _netdev(self) -> str:
        netdev = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        for (addr, port), path in self._guest_services.items():
            cmd = f"{sys.executable} -I -S {self.workdir / 'guest-relay.py'} {path}"
            netdev += f",guestfwd=tcp:{addr}:{port}-cmd:{cmd.replace(',', ',,')}"
        return netdev

    def argv(self) -> list[str]:
        c = self.cfg
        accel = "tcg,thread=multi" if c.accel == "tcg" else c.accel
        argv = [
            c.qemu, "-name", self.name, "-nodefaults", "-no-user-config",
            "-machine", c.machine, "-accel", accel, "-cpu", c.cpu,
            "-smp", str(c.smp), "-m", str(c.memory_mb),
            "-global", "PIIX4_PM.disable_s3=0",
            *(["-drive", f"file={self.overlay},if=virtio,format=qcow2,discard=unmap"]
              if not c.firmware_code else
              # the firmware boots the root disk (bootindex), never the network (no ROM)
              ["-drive", f"if=pflash,format=raw,readonly=on,file={c.firmware_code}",
               "-drive", f"if=pflash,format=raw,file={self.efivars}",
               "-drive", f"file={self.overlay},if=none,id=root,format=qcow2,discard=unmap",
               "-device", "virtio-blk-pci,drive=root,bootindex=0"]),
            *(["-drive", f"file={self.data_disk},if=none,id=vmdata,format=qcow2,discard=unmap",
               # a slot after every automatic one: the root stays vda (if=virtio
               # devices are created after the -device ones)
               "-device", "virtio-blk-pci,drive=vmdata,serial=vmdata,addr=0x1e"]
              if c.data_disk_size else []),
            *(["-chardev", f"socket,id=chrtpm,path={self._swtpm_sock}",
               "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
               "-device", "tpm-crb,tpmdev=tpm0"] if c.tpm else []),
            "-netdev", self._netdev(),
            "-device", "virtio-net-pci,netdev=n0" + (",romfile=" if c.firmware_code else ""),
            "-device", "virtio-rng-pci",
            "-display", "none", "-vga", "none", "-monitor", "none",
            # the serial console: logged to console_log, and typed on through
            # console_type() (a person at a prompt on it)
            "-chardev", f"socket,id=con0,path={self._console_sock},server=on,wait=off,"
                        f"logfile={self.console_log},logappend=on",
            "-serial", "chardev:con0",
            "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
            "-qmp", f"unix:{self.workdir / 'qmp-events.sock'},server=on,wait=off",
        ]
        for i, (disk, serial) in enumerate(c.extra_disks):
            fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
            argv += ["-drive", f"file={disk},if=none,id=extra{i},format={fmt},readonly=on",
                     "-device", f"virtio-blk-pci,drive=extra{i},serial={serial},"
                     f"addr={0x1d - i:#x}"]
        if c.machine.startswith("q35") or "q35" in c.machine:
            argv[argv.index("PIIX4_PM.disable_s3=0")] = "ICH9-LPC.disable_s3=0"
        if self.cold_restarts:
            argv.append("-no-reboot")
        if c.kernel:
            argv += ["-kernel", str(c.kernel), "-append", c.append]
            if c.initrd:
                argv += ["-initrd", str(c.initrd)]
        return argv + list(c.extra_args)

    def start(self, timeout: float = 60, port: int = 0) -> None:
        """Start QEMU (again, on the same disk, after a shutdown); SSH is
        forwarded from 127.0.0.1:port (0: a free port)."""
        if self.running:
            raise HarnessError("machine already running")
        self._make_overlay()
        for sock in ("qmp.sock", "qmp-events.sock", self._console_sock.name):
            (self.workdir / sock).unlink(missing_ok=True)
        self.port = port or free_port()
        self.boots += 1
        with self.console_log.open("a") as f:
            f.write(f"\n===== harness: boot {self.boots} =====\n")
        if self.cfg.tpm:
            self._start_swtpm(time.monotonic() + timeout)
        argv = self.argv()
        if self.die_with_parent and shutil.which("setpriv"):
            # SIGKILL QEMU when the harness dies: a killed test run leaves no QEMU.
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "qemu.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.t_start = time.monotonic()
        deadline = time.monotonic() + timeout
        try:
            self.qmp = QMP(self.workdir / "qmp.sock")
            self.qmp.connect(deadline)
            self.events = EventLog(self.workdir / "qmp-events.sock", self.events_log)
            self.events.start(deadline)
        except (HarnessError, OSError):
            self.kill()
            raise HarnessError(f"QEMU did not start: {self.qemu_log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def qemu_log_tail(self, n: int = 20) -> str:
        p = self.workdir / "qemu.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""

    @property
    def _console_sock(self) -> Path:
        return self.workdir / "console.sock"

    def console_type(self, text: str) -> None:
        """Type text on the serial console, as a person at a prompt there would."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self._console_sock))
            for ch in text.encode():  # a UART takes one byte at a time
                s.sendall(bytes([ch]))
                time.sleep(0.01)
            time.sleep(1)  # QEMU reads what was sent before it sees the hang-up

    def console_tail(self, n: int = 40) -> str:
        if not self.console_log.exists():
            return ""
        return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-n:])

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"QEMU still running after {timeout} s") from None

    def _disconnect(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        if self.events:
            self.events.stop()
        if self.qmp:
            self.qmp.close()

    def drop_ssh(self) -> None:
        """Forget the SSH connections (the guest restarted: they are dead)."""
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def wait_resets(self, count: int, after: int, timeout: float) -> None:
        """Wait until the guest has reset ``count`` times since the event mark ``after``
        (QMP RESET: a restart from inside, QEMU keeps running)."""
        assert self.events is not None
        deadline = time.monotonic() + timeout
        while self.events.names(after).count("RESET") < count:
            if not self.running:
                raise HarnessError(f"QEMU exited while waiting for {count} restarts\n"
                                   f"{self.console_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.events.names(after).count('RESET')} of {count} "
                                   f"restarts within {timeout} s\n{self.console_tail()}")
            time.sleep(0.5)

    def wait_cold_restart(self, timeout: float) -> None:
        """cold_restarts: wait until QEMU ends on a guest reset, then start it again."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"no restart within {timeout} s\n{self.console_tail()}") from None
        time.sleep(0.5)  # the event thread reads the last events QEMU sent
        why = [e.data.get("reason") for e in (self.events.events if self.events else ())
               if e.name == "SHUTDOWN"]
        self._disconnect()
        self._stop_swtpm()
        if not why or why[-1] != "guest-reset":
            raise HarnessError(f"QEMU ended without a guest reset (SHUTDOWN {why[-1:]}, "
                               f"exit {self.proc.returncode})\n{self.console_tail()}")
        self.start(port=self.port)

    def reboot(self, resets: int = 1, timeout: float = 600) -> float:
        """Restart the guest from inside (``systemctl reboot``) and wait for SSH after
        ``resets`` restarts (more than one: the guest restarts again by itself);
        returns the seconds from the command to SSH.  With cold_restarts each restart
        ends QEMU and starts a new one; timeout is then per restart."""
        assert self.events is not None
        t0 = time.monotonic()
        mark = self.events.mark()
        self.ssh("systemctl reboot --no-block", timeout=30)
        if self.cold_restarts:
            self.drop_ssh()
            for _ in range(resets):
                self.wait_cold_restart(timeout)
        else:
            self.wait_resets(resets, mark, timeout)
        self.drop_ssh()
        self.wait_ssh(timeout=timeout)
        return time.monotonic() - t0

    def shutdown(self, timeout: float = 300) -> None:
        """Power the guest off from inside (systemd stops every service) and wait."""
        if not self.running:
            return
        with contextlib.suppress(Exception):
            self.ssh("systemctl poweroff --no-block", timeout=30)
        try:
            self.wait_exit(timeout)
        finally:
            self._disconnect()
            if self.running:
                self.kill()
            self._stop_swtpm()

    def kill(self) -> None:
        """Stop QEMU at once: SIGTERM, then SIGKILL to its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._disconnect()
        self._stop_swtpm()

    def close(self) -> None:
        self.kill()
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- SSH ---------------------------------------------------------------
    def _connect(self, user: str, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # A throw-away guest with host keys made at image build: accept its key.
        client.set_missing_host_key_policy(paramiko.MissingHostKeyPolicy())
        kw: dict[str, Any] = {}
        if self.cfg.ssh_key:
            kw["key_filename"] = str(self.cfg.ssh_key)
        if self.cfg.ssh_password is not None:
            kw["password"] = self.cfg.ssh_password
        client.connect(
            "127.0.0.1", port=self.port, username=user, timeout=timeout,
            banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
            allow_agent=False, **kw,
        )
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        return client

    def client(self, user: str | None = None) -> paramiko.SSHClient:
        user = user or self.cfg.root_user
        c = self._clients.get(user)
        t = c.get_transport() if c else None
        if c is None or t is None or not t.is_active():
            c = self._connect(user, timeout=30)
            self._clients[user] = c
        return c

    def _banner(self, timeout: float) -> bool:
        """True once sshd answers with its banner (user-mode networking
        accepts the connection before anything listens in the guest)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                return s.recv(4) == b"SSH-"
        except OSError:
            return False

    def wait_ssh(self, timeout: float = 400) -> float:
        """Wait until root can run a command over SSH; returns seconds since start()."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise HarnessError(
                    f"QEMU exited ({self.proc.returncode if self.proc else '?'}) before SSH came up\n"
                    f"{self.qemu_log_tail()}\n--- console\n{self.console_tail()}"
                )
            if not self._banner(timeout=5):
                time.sleep(1)
                continue
            try:
                client = self._connect(self.cfg.root_user, timeout=10)
                self._clients[self.cfg.root_user] = client
                self.ssh("true", timeout=30).check()
                return time.monotonic() - self.t_start
            except (OSError, EOFError, paramiko.SSHException, HarnessError) as exc:
                last = exc
                time.sleep(2)
        raise HarnessError(f"no SSH after {timeout} s ({last})\n--- console\n{self.console_tail()}")

    def ssh(self, cmd: str, user: str | None = None, timeout: float = 120,
            check: bool = False, stdin: str | None = None) -> Result:
        """Run cmd through the user's login shell; stdout/stderr decoded."""
        client = self.client(user)
        transport = client.get_transport()
        assert transport is not None
        deadline = time.monotonic() + timeout
        # the channel's opening is within the command's time: sshd answers it only after
        # the connection's last session is set up, and pam_systemd waits for root's user
        # manager, which on a host just booted under TCG takes tens of seconds (the A/B
        # test's restart into slot B: 30 s passed twice with "Starting user@0.service")
        chan = transport.open_session(timeout=timeout)
        chan.settimeout(max(1.0, deadline - time.monotonic()))
        chan.exec_command(cmd)
        if stdin is not None:
            chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        try:
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready():
                    break
                else:
                    if time.monotonic() > deadline:
                        raise HarnessError(f"timeout after {timeout} s: {cmd}")
                    time.sleep(0.02)
            # sshd sends the exit status as soon as the command ends, maybe before the
            # rest of its output (a long dmesg): read on to the channel's EOF, after which
            # stderr too is all here
            chan.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                while data := chan.recv(65536):
                    out += data
            except TimeoutError:
                raise HarnessError(f"timeout after {timeout} s (no end of output): {cmd}") \
                    from None
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        res = Result(cmd, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return res.check() if check else res

    def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        sftp = self.client().open_sftp()
        try:
            with sftp.open(path, "w") as f:
                f.write(text)
            sftp.chmod(path, mode)
        finally:
            sftp.close()

    # -- conveniences --------------------------------------------------------
    def wait_system_running(self, timeout: float = 300) -> str:
        """systemctl is-system-running --wait: 'running' or 'degraded' (with the failed units)."""
        r = self.ssh("systemctl is-system-running --wait", timeout=timeout)
        state = r.stdout.strip()
        if state not in ("running", "degraded"):
            raise HarnessError(f"system state {state!r}")
        return state

    def wait_until(self, cmd: str, timeout: float, interval: float = 0.5,
                   user: str | None = None) -> Result:
        """Run cmd until it succeeds; the last Result."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.ssh(cmd, user=user, timeout=max(30.0, timeout))
            if r.rc == 0:
                return r
            if time.monotonic() > deadline:
                raise HarnessError(f"still failing after {timeout} s: {cmd}\n{r.stdout}{r.stderr}")
            time.sleep(interval)

    def qmp_status(self) -> str:
        assert self.qmp is not None
        return str(self.qmp.execute("query-status")["status"])


@contextlib.contextmanager
def booted(cfg: BootConfig, **kw: Any) -> Iterator[Machine]:
    """A machine started and reachable over SSH; closed (killed, cleaned) on exit."""
    m = Machine(cfg, **kw)
    try:
        m.start()
        m.wait_ssh()
        yield m
    finally:
        m.close()


# ------------------------------------------------------- guest-side helpers


def put_image_files(m: Machine, files: dict[str, tuple[str, int]]) -> None:
    """Files an image would carry on its read-only root (the test host's root is
    read-only, as the image's): written with the root remounted read-write for the
    moment, then read-only again.  {path: (text, mode)}."""
    m.ssh("mount -o remount,rw /", check=True)
    try:
        for path, (text, mode) in files.items():
            m.ssh(f"mkdir -p {shlex.quote(os.path.dirname(path))}", check=True)
            m.put_text(path, text, mode)
    finally:
        m.ssh("sync && mount -o remount,ro /", check=True)

POWER_NS = "https://vmclient.org/xmlns/power/1"

NESTED_DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <metadata>{metadata}</metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def nested_domain_xml(name: str, policy: str | None = None, memory_mib: int = 64) -> str:
    """A firmware-only KVM domain (blank qcow2: it sits in SeaBIOS) with an
    optional vmclient power policy in its metadata."""
    meta = (f'<vmclient:power xmlns:vmclient="{POWER_NS}" policy="{policy}"/>'
            if policy else "")
    return NESTED_DOMAIN_XML.format(name=name, memory_mib=memory_mib, metadata=meta)


def define_nested_vm(m: Machine, name: str, policy: str | None = None,
                     start: bool = True) -> None:
    """Define (and start) a nested domain in the booted host through virsh."""
    m.put_text(f"/tmp/{name}.xml", nested_domain_xml(name, policy))
    script = (
        f"set -e; qemu-img create -q -f qcow2 /var/lib/libvirt/images/{name}.qcow2 64M; "
        f"virsh -q define /tmp/{name}.xml >/dev/null"
    )
    if start:
        script += f"; virsh -q start {name} >/dev/null"
    m.ssh(script, timeout=120, check=True)


def domstates(m: Machine) -> dict[str, str]:
    """{name: state} of every domain, e.g. 'running', 'paused', 'shut off'."""
    out = m.ssh("virsh list --all --name | while read -r d; do [ -z \"$d\" ] || "
                "printf '%s\\t%s\\n' \"$d\" \"$(virsh domstate \"$d\")\"; done",
                check=True).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


# Libvirt lifecycle events are copied into the kernel log by this watcher, so
# they and the kernel's "PM: suspend entry" share one clock and one order.
VIRT_EVENT_WATCHER = (
    "systemd-run --quiet --unit=vmclient-test-virt-events -p Restart=always "
    "/bin/sh -c 'stdbuf -oL virsh -q event --loop --event lifecycle | "
    "while read -r line; do echo \"vmclient-test: $line\" > /dev/kmsg; done'"
)


def start_virt_event_watcher(m: Machine) -> None:
    m.ssh("sysctl -q -w kernel.printk_devkmsg=on; "
          "systemctl stop vmclient-test-virt-events 2>/dev/null; "
          "systemctl reset-failed vmclient-test-virt-events 2>/dev/null; " + VIRT_EVENT_WATCHER,
          check=True)


LID_HELPER = Path(__file__).resolve().parent / "image/overlay/usr/local/sbin/vmclient-test-lid"


def ensure_test_lid(m: Machine) -> None:
    """The uinput lid: baked into the Debian test host; on another image (a
    Yocto one) copied over and started, then vmclient-powerd restarted so it
    finds the lid as it would at boot on a laptop."""
    if m.ssh("test -S /run/vmclient-test-lid.sock").rc == 0:
        return
    if m.ssh("command -v vmclient-test-lid").rc != 0:
        m.put_text("/run/vmclient-test-lid", LID_HELPER.read_text(), mode=0o755)
        helper = "/run/vmclient-test-lid"
    else:
        helper = "vmclient-test-lid"
    m.ssh(f"modprobe uinput 2>/dev/null; systemd-run --quiet --unit=vmclient-test-lid-run "
          f"python3 {helper} serve", check=True)
    m.wait_until("test -S /run/vmclient-test-lid.sock", timeout=30)
    m.ssh("systemctl try-restart vmclient-powerd", check=True, timeout=120)


def lid(m: Machine, action: str) -> str:
    """close | open | state of the uinput lid."""
    cmd = "vmclient-test-lid" if m.ssh("command -v vmclient-test-lid").rc == 0 \
        else "python3 /run/vmclient-test-lid"
    return m.ssh(f"{cmd} {action}", check=True, timeout=60).stdout.strip()


def kernel_mark(m: Machine) -> str:
    """Write a unique marker line into the kernel log; kernel_log_since(mark)
    returns what came after it (line counts do not survive a full ring buffer)."""
    boot = m.ssh("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
    for _ in range(5):  # a write to /dev/kmsg may be dropped (rate limit): check it landed
        token = f"vmclient-test: mark {time.monotonic_ns()} boot {boot}"
        m.ssh(f"echo '{token}' > /dev/kmsg", check=True)
        if m.ssh(f"dmesg --notime | grep -qxF '{token}'").rc == 0:
            return token
        time.sleep(1)
    raise HarnessError("a marker written to /dev/kmsg never reached the kernel log")


def kernel_log_since(m: Machine, mark: str) -> list[str]:
    """The kernel log after the marker line, oldest first (dmesg without times)."""
    # the ring buffer first; the journal (persistent on the test host) keeps what a
    # full ring buffer lost, in the same order
    for cmd in ("dmesg --notime", "journalctl -k -b -o cat --no-pager"):
        lines = m.ssh(cmd, check=True).stdout.splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].strip() == mark:
                return lines[i + 1:]
    boot = m.ssh("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
    if not mark.endswith(f" boot {boot}"):
        raise HarnessError(f"the host booted again (boot id now {boot}) since {mark!r}: "
                           "it did not resume from sleep, or it crashed")
    raise HarnessError(f"marker {mark!r} is no longer in the kernel log (ring buffer too small?)")

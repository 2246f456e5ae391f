"""A real OpenSSH sshd on 127.0.0.1 serving a vmclient repository over SFTP.

Design (documented for the tests and for ``vmclient-admin enrol``):

* ``sshd -D -e -f <own config>`` with its own Ed25519 host key, on a free port
  of 127.0.0.1.  sshd cannot take port 0, so the probe is racy: if sshd exits
  before it answers, a new port is tried (bounded).  Ready = it sends its
  ``SSH-`` banner.
* The repository and the sshd files live in a directory under
  ``/var/lib/vmclient-test`` (not ``/tmp``): sshd insists that every component
  of a ``ChrootDirectory`` and of an ``AuthorizedKeysFile`` is root-owned and
  not group/world-writable, and ``/tmp`` is world-writable.
* The admin logs in as root (no chroot; key in ``keys/root``).  Each device
  gets the confinement ``vmclient-admin enrol`` prints
  (:func:`vmclient.admin.sshd.confinement`): a system account created here,
  the repository as its ``ChrootDirectory``, ``ForceCommand internal-sftp``,
  ``devices/<id>/`` root:<account> 1770.  Accounts are removed at teardown.
* Tests run as root (CI does); without root, or without sshd, they skip
  (outside CI) or fail (in CI) through :func:`testlib.need`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testlib import need, run
from vmclient.admin.sshd import GLOBAL_CONFIG, Confinement, confinement, enrolment_dropbox
from vmclient.transport.sftp import SFTPStore, SFTPTarget

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin")
BASE = Path("/var/lib/vmclient-test")
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                "/usr/libexec/openssh/sftp-server") if Path(p).exists()),
                   "/usr/lib/openssh/sftp-server")
PORT_ATTEMPTS = 5
READY_TIMEOUT = 10.0

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
UsePAM no
StrictModes yes
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile {keys}/%u
MaxStartups 64:30:128
MaxSessions 64
LogLevel VERBOSE
"""


@dataclass(frozen=True)
class Account:
    user: str
    key_file: Path  # private key (OpenSSH format)
    public: str  # "ssh-ed25519 AAAA…"
    root: str  # the repository's path as this account sees it


def keygen(path: Path, comment: str = "vmclient-test") -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    return Path(f"{path}.pub").read_text().strip()


class SSHServer:
    def __init__(self) -> None:
        BASE.mkdir(mode=0o755, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=BASE))
        self.dir.chmod(0o755)
        self.repo = self.dir / "repo"  # the chroot of every device account
        self.repo.mkdir(mode=0o755)
        self.keys = self.dir / "keys"  # AuthorizedKeysFile <keys>/%u
        self.keys.mkdir(mode=0o755)
        self.client = self.dir / "client"  # private keys of the test clients
        self.client.mkdir(mode=0o700)
        self.host_key = self.dir / "host_ed25519"
        keygen(self.host_key, "vmclient-test-host")
        self.known_hosts = self.client / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.sftp_log = self.dir / "sftp-server.log"  # see log_sftp()
        self.matches: list[str] = []
        self.accounts: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        admin_pub = keygen(self.client / "admin")
        (self.keys / "root").write_text(admin_pub + "\n")
        self.admin = Account("root", self.client / "admin", admin_pub, str(self.repo))

    # --- accounts ---------------------------------------------------------------------------

    def add_device(self, device_id: str) -> Account:
        """Confine a device exactly as ``vmclient-admin enrol`` prints it; restart sshd."""
        key = self.client / f"device-{device_id[:12]}"
        pub = keygen(key, f"device {device_id}")
        conf = confinement(device_id, pub, str(self.repo), str(self.keys))
        self.confine(conf)
        return Account(conf.account, key, pub, "")

    def confine(self, conf: Confinement) -> None:
        """Apply what ``vmclient-admin`` printed for an account; restart sshd."""
        for attempt in range(3):  # useradd fails while another one holds /etc/passwd's lock
            r = run(["sh", "-c", conf.script()])
            if r.returncode == 0:
                break
            if attempt == 2 or "lock" not in r.stderr:
                raise RuntimeError(f"confining {conf.account} failed: {r.stderr}")
            time.sleep(0.5)
        self.accounts.append(conf.account)
        self.matches.append(conf.match_block)
        if self.proc is not None:
            self.restart()

    def log_sftp(self, user: str = "root") -> None:
        """Serve ``user``'s sessions with OpenSSH's ``sftp-server`` logging every request
        (open, fsync, close, rename...) to :attr:`sftp_log`; restart sshd."""
        self.matches.append(f"Match User {user}\n    ForceCommand {SFTP_SERVER} -e -l VERBOSE "
                            f"2>>{self.sftp_log}\n")
        if self.proc is not None:
            self.restart()

    def add_dropbox(self) -> Account:
        """The enrolment drop box, as ``vmclient-admin enrol --dropbox`` prints it."""
        key = self.client / "enrol"
        pub = keygen(key, "vmclient enrolment")
        conf = enrolment_dropbox(pub, str(self.repo), str(self.keys),
                                 account=f"vmc-enrol-{self.dir.name[-6:].lower()}")
        self.confine(conf)
        return Account(conf.account, key, pub, "")

    def store(self, account: Account, **kw: object) -> SFTPStore:
        target = SFTPTarget(host="127.0.0.1", port=self.port, user=account.user,
                            key_file=account.key_file, known_hosts=self.known_hosts,
                            root=account.root, **kw)  # type: ignore[arg-type]
        return SFTPStore(target)

    # --- process ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        text = CONFIG.format(port=self.port, host_key=self.host_key, keys=self.keys)
        self.config.write_text(text + GLOBAL_CONFIG + "".join(self.matches))
        pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")

    def start(self) -> SSHServer:
        problems = []
        for _attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self._write_config()
            log = self.log.open("ab")
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            if wait_banner(self.port, self.proc):
                return self
            problems.append(self.log.read_text()[-500:])
            self.stop()
        raise RuntimeError(f"sshd did not start on a free port: {problems}")

    def restart(self) -> None:
        self.stop()
        self._write_config()
        log = self.log.open("ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if not wait_banner(self.port, self.proc):
            raise RuntimeError(f"sshd did not restart: {self.log.read_text()[-500:]}")

    def session_pids(self) -> list[int]:
        """Every descendant of the listening sshd: the processes serving sessions."""
        if self.proc is None:
            return []
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            kids = [c for c, pp in parents.items() if pp == p]
            out += kids
            todo += kids
        return out

    def kill_sessions(self) -> int:
        """SIGKILL the processes serving every open session (the listener stays)."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill_sessions()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        for account in self.accounts:
            run(["userdel", account])
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_banner(port: int, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT
                ) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def need_sshd() -> None:
    need(SSHD is not None, "OpenSSH sshd is not installed (scripts/setup-host installs it)")
    need(os.geteuid() == 0, "the sshd fixture needs root (chroot, device accounts)")
    need(shutil.which("useradd") is not None, "useradd is missing")


@contextlib.contextmanager
def ssh_server() -> Iterator[SSHServer]:
    need_sshd()
    server = SSHServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def sshd() -> Iterator[SSHServer]:
    """A started :class:`SSHServer` for the test (conftest.py makes it every test's)."""
    with ssh_server() as server:
        yield server

"""OpenSSH's ``ssh`` as a child process carrying the SFTP subsystem (as restic and borg do).

All of SSH — key exchange, ciphers, host key check, authentication — happens in
``ssh``, in C and in its own process; this side speaks SFTP over a socketpair
connected to ssh's stdin and stdout.  The command line pins everything:

* ``-F none`` (the user's ``~/.ssh/config`` and ``/etc/ssh/ssh_config`` are not
  read) unless the target names an ``ssh_config`` file;
* ``BatchMode=yes`` (no prompt), ``StrictHostKeyChecking=yes`` with
  ``UserKnownHostsFile`` = the target's pinned ``known_hosts`` and no global
  file, ``UpdateHostKeys=no`` (the pin file is never written);
* ``IdentitiesOnly=yes``, ``IdentityFile`` = the device's key file,
  ``IdentityAgent=none``: the key file is the one credential.  The device key
  lives in a file already (``/var/lib/vmclient/device/ssh.key``, written 0600 at
  enrolment); it is refused here, before ssh runs, unless it is a regular file
  without group or other permissions, and no copy of it is made.  The laptop
  daemons never use an agent.
* the admin (``vmclient-admin``, :attr:`Endpoint.agent`) may add an ssh-agent
  socket: ``IdentityAgent`` = that socket.  With a key file too, ssh signs with
  the agent's copy of that key when it holds one (a passphrase-protected key,
  or a public key file naming a key the agent holds, e.g. on a PKCS#11 token
  added with ``ssh-add -s``) and ``IdentitiesOnly`` keeps the agent's other
  keys out; without a key file (``IdentityFile=none``) every key of the agent
  is offered, as OpenSSH does by default.
* no forwarding, no TTY, no escape character, no connection sharing.

When ssh fails it exits with status 255 and says why on stderr (kept in an
unnamed temporary file); :func:`diagnose` maps that text to what happened
(pure, unit-tested) so the store can say what to do.
"""

from __future__ import annotations

import contextlib
import enum
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..store.errors import LocalSyncError

SOCKET_BUFFER = 4 << 20  # bytes in flight each way between ssh and this process
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
CIPHER = "aes256-gcm@openssh.com"  # preferred: AES-NI on every laptop we target
SSH = "ssh"


@dataclass(frozen=True)
class Endpoint:
    """What ``ssh`` needs to reach the server."""

    host: str
    port: int
    user: str
    key_file: Path | None  # None: the agent's keys only
    known_hosts: Path
    subsystem: str = "sftp"
    timeout: float = 30.0
    ssh_config: Path | None = None  # an ssh_config to read (None: -F none)
    ssh: str = SSH
    agent: Path | None = None  # an ssh-agent socket (the admin's; None: no agent)


def _value(path: Path) -> str:
    """A path as an ssh_config value: quoted, with ``%`` tokens escaped."""
    text = str(path)
    if '"' in text or "\n" in text or "${" in text:  # ssh expands ${VAR} in these
        raise LocalSyncError(f"unusable path for ssh: {text!r}")
    return '"' + text.replace("%", "%%") + '"'


def argv(e: Endpoint) -> list[str]:
    """The ``ssh`` command line for ``e`` (pure)."""
    if e.host.startswith("-") or not e.host or e.user.startswith("-"):
        raise LocalSyncError(f"invalid SSH host or user: {e.user!r}@{e.host!r}")
    if e.key_file is None and e.agent is None:
        raise LocalSyncError("no SSH credential: neither a key file nor an ssh-agent")
    alive = max(5, int(e.timeout / 3))
    opts = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": _value(e.known_hosts),
        "GlobalKnownHostsFile": "none",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentitiesOnly": "yes" if e.key_file else "no",
        "IdentityFile": _value(e.key_file) if e.key_file else "none",
        "IdentityAgent": _value(e.agent) if e.agent else "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "PermitLocalCommand": "no",
        "Compression": "no",
        "Ciphers": "^" + CIPHER,
        "ConnectTimeout": str(max(1, int(e.timeout))),
        "ServerAliveInterval": str(alive),
        "ServerAliveCountMax": "3",
        "LogLevel": "ERROR",
    }
    out = [e.ssh, "-F", str(e.ssh_config) if e.ssh_config else "none", "-T", "-x", "-a",
           "-e", "none", "-p", str(e.port), "-l", e.user]
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    return [*out, "-s", "--", e.host, e.subsystem]


PUBLIC_KEY_RE = re.compile(rb"(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ AAAA[A-Za-z0-9+/]+=*( .*)?\n?")


def check_key_file(path: Path, *, public_ok: bool = False) -> None:
    """The device key must be a regular file only its owner may read (ssh would refuse a
    more open one with a warning nobody sees).  ``public_ok``: with an agent, a public
    key file (one ``ssh-ed25519 AAAA…`` line) names the agent's key to use; it may be
    world-readable."""
    try:
        st = path.stat()
    except OSError as exc:
        raise LocalSyncError(f"the SSH key {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise LocalSyncError(f"the SSH key {path} is not a regular file")
    if public_ok and st.st_size < 16 << 10 and PUBLIC_KEY_RE.fullmatch(path.read_bytes()):
        return
    if st.st_mode & 0o077:
        raise LocalSyncError(f"the SSH key {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                             f"it must be 0600 (chmod 600 {path})")


def _send_buffer(sock: socket.socket, size: int) -> None:
    """The most a sender may have queued on this end of a socket pair: with the default
    (~200 KiB, less than one 255 KiB SFTP answer) ssh and this process wait on each other
    for every answer.  Above ``net.core.wmem_max`` only with CAP_NET_ADMIN (root)."""
    for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


class Failure(enum.Enum):
    HOST_KEY_CHANGED = "host key changed"
    HOST_KEY_UNKNOWN = "host key unknown"
    AUTH = "authentication refused"
    SUBSYSTEM = "subsystem refused"
    UNREACHABLE = "unreachable"
    OTHER = "other"

    @property
    def final(self) -> bool:
        """A refusal that another attempt would not change."""
        return self in (Failure.HOST_KEY_CHANGED, Failure.HOST_KEY_UNKNOWN, Failure.AUTH,
                        Failure.SUBSYSTEM)


def diagnose(returncode: int | None, untrusted_stderr: str) -> Failure:
    """What went wrong, from ssh's exit status and what it wrote on stderr (pure)."""
    text = untrusted_stderr.lower()
    if "remote host identification has changed" in text:
        return Failure.HOST_KEY_CHANGED
    if "host key verification failed" in text or "host key is known for" in text:
        return Failure.HOST_KEY_UNKNOWN
    if "permission denied" in text or "too many authentication failures" in text:
        return Failure.AUTH
    if "subsystem request failed" in text:
        return Failure.SUBSYSTEM
    if returncode == 255 or returncode is None:
        return Failure.UNREACHABLE
    return Failure.OTHER


def last_lines(untrusted_stderr: str, limit: int = 300) -> str:
    """ssh's message, short and printable (it comes from the server's banner too)."""
    lines = [ln.strip() for ln in untrusted_stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("@") and "WARNING" not in ln]
    text = " / ".join(useful[-3:]) or "(no message)"
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


class Process:
    """A running ``ssh``: :attr:`sock` is this side of its stdin/stdout."""

    def __init__(self, e: Endpoint) -> None:
        exe = shutil.which(e.ssh)
        if exe is None:
            raise LocalSyncError(f"OpenSSH's {e.ssh!r} is not installed (package openssh-ssh)")
        if e.key_file is not None:
            check_key_file(e.key_file, public_ok=e.agent is not None)
        self.endpoint = e
        self.sock, child = socket.socketpair()
        for end in (self.sock, child):  # a window of a few MiB each way
            _send_buffer(end, SOCKET_BUFFER)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
        try:
            self.proc = subprocess.Popen([exe, *argv(e)[1:]], stdin=child.fileno(),
                                         stdout=child.fileno(), stderr=self.stderr,
                                         close_fds=True, start_new_session=True)
        except BaseException:
            self.sock.close()
            self.stderr.close()
            raise
        finally:
            child.close()

    def failure(self, wait: float) -> tuple[Failure, str]:
        """Why the connection ended: ssh's exit status and message (waits up to ``wait``)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
        self.stderr.seek(0)
        text = self.stderr.read(64 << 10).decode("utf-8", "replace")
        return diagnose(self.proc.returncode, text), last_lines(text)

    def close(self) -> None:
        """Close our end (ssh then ends the session and exits); kill it if it does not."""
        self.sock.close()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None


"""Reading an encrypted capture through QEMU: ``qemu-nbd`` and a minimal NBD client.

A LUKS qcow2 keeps ciphertext at its host offsets, and ``qemu-img map`` gives
no offsets for it, so the capture cannot be ``pread``.  ``qemu-nbd`` opens it
read-only with the disk's passphrase (a QEMU ``secret`` object read from a
pipe, never a file or an argument) and serves the *guest-visible* plaintext on
a Unix socket in a 0700 directory; the plaintext only crosses the socket.  An
incremental overlay is opened with ``"backing": null``: the overlay's own
clusters are exactly the dirty ones, and the live disk it is backed by stays
untouched.

The client speaks the fixed-newstyle handshake (``NBD_OPT_GO`` on the default
export) and simple replies to ``NBD_CMD_READ``: all this needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..store.errors import LocalSyncError

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = b"IHAVEOPT"
_REPLY_MAGIC = 0x3E889045565A9
_REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
_SIMPLE_REPLY_MAGIC = 0x67446698
_OPT_GO = 7
_REP_ACK, _REP_INFO = 1, 3
_CMD_READ, _CMD_DISC = 0, 2
_FLAG_FIXED_NEWSTYLE, _FLAG_NO_ZEROES = 1, 2
MAX_READ = 32 << 20  # qemu-nbd's limit per request


class NBDError(LocalSyncError):
    """NBD: {}"""


def image_json(path: Path, *, secret: str | None, no_backing: bool = False) -> str:
    """A ``json:`` filename for QEMU: qcow2 ``path``, decrypted with ``secret``."""
    spec: dict[str, object] = {"driver": "qcow2", "file": {"driver": "file",
                                                           "filename": str(path)}}
    if secret:
        spec["encrypt"] = {"key-secret": secret}
    if no_backing:
        spec["backing"] = None
    return "json:" + json.dumps(spec, separators=(",", ":"))


def secret_pipe(passphrase: bytes) -> int:
    """The read end of a pipe holding ``passphrase`` (QEMU reads it as a file)."""
    r, w = os.pipe()
    try:
        os.write(w, passphrase)  # short: fits the pipe buffer
    finally:
        os.close(w)
    return r


def map_image(path: Path, passphrase: bytes | None, *, no_backing: bool = False) -> str:
    """``qemu-img map --output=json`` of a (possibly encrypted) qcow2."""
    fd = secret_pipe(passphrase) if passphrase else -1
    args = ["qemu-img", "map", "-U", "--output=json"]
    if passphrase:
        args += ["--object", f"secret,id=vmcsec0,file=/dev/fd/{fd}"]
    args.append(image_json(path, secret="vmcsec0" if passphrase else None,
                           no_backing=no_backing))
    try:
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             pass_fds=(fd,) if fd >= 0 else ())
    except FileNotFoundError as exc:
        raise LocalSyncError("qemu-img is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise LocalSyncError(f"qemu-img map {path}: {exc.stderr.strip()}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    return out.stdout


class Client:
    """One NBD connection (blocking; used from a worker thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.size = 0
        self._handle = 0
        self._handshake()

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise NBDError("the server closed the connection")
            got += k
        return bytes(buf)

    def _handshake(self) -> None:
        head = self._recv(18)
        if head[:8] != _NBDMAGIC or head[8:16] != _IHAVEOPT:
            raise NBDError("not a newstyle NBD server")
        (flags,) = struct.unpack(">H", head[16:])
        if not flags & _FLAG_FIXED_NEWSTYLE:
            raise NBDError("the server does not speak fixed newstyle")
        self.sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        data = struct.pack(">I", 0) + struct.pack(">H", 0)  # export "", no info requests
        self.sock.sendall(_IHAVEOPT + struct.pack(">II", _OPT_GO, len(data)) + data)
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            body = self._recv(length)
            if magic != _REPLY_MAGIC:
                raise NBDError("bad option reply")
            if rtype & 0x80000000:
                raise NBDError(f"export refused (reply {rtype:#x}: "
                               f"{body.decode(errors='replace')})")
            if rtype == _REP_INFO and len(body) >= 12 and body[:2] == b"\0\0":
                (self.size,) = struct.unpack(">Q", body[2:10])
            elif rtype == _REP_ACK:
                return

    def pread(self, length: int, offset: int) -> bytes:
        """``length`` bytes at guest offset ``offset`` (split into ``MAX_READ`` requests)."""
        parts = []
        while length > 0:
            n = min(length, MAX_READ)
            self._handle += 1
            self.sock.sendall(_REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset, n))
            magic, error, handle = _SIMPLE_REPLY.unpack(self._recv(_SIMPLE_REPLY.size))
            if magic != _SIMPLE_REPLY_MAGIC or handle != self._handle:
                raise NBDError("unexpected reply")
            if error:
                raise NBDError(f"read of {n} bytes at {offset} failed (error {error})")
            parts.append(self._recv(n))
            offset += n
            length -= n
        return b"".join(parts)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(_REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
        self.sock.close()


@contextlib.contextmanager
def export(path: Path, passphrase: bytes | None, *, no_backing: bool = False,
           limit: float = 30.0) -> Iterator[Client]:
    """``qemu-nbd`` serving ``path`` read-only, and a client connected to it."""
    exe = shutil.which("qemu-nbd")
    if exe is None:
        raise LocalSyncError("qemu-nbd is not installed")
    sockdir = Path(tempfile.mkdtemp(prefix="vmclient-nbd-"))  # 0700
    sock_path = sockdir / "s"
    fd = secret_pipe(passphrase) if passphrase else -1
    args = [exe, "--read-only", "--shared=1", f"--socket={sock_path}"]
    if passphrase:
        args += ["--object", f"secret,id=vmcsec0,file=/dev/fd/{fd}"]
    args.append(image_json(path, secret="vmcsec0" if passphrase else None,
                           no_backing=no_backing))
    proc = subprocess.Popen(args, pass_fds=(fd,) if fd >= 0 else (), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if fd >= 0:
        os.close(fd)
    client = None
    try:
        deadline = time.monotonic() + limit
        while client is None:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise LocalSyncError(f"qemu-nbd could not open {path}: {err}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(sock_path))
                client = Client(s)
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise LocalSyncError(f"qemu-nbd did not serve {path} in time") from None
                time.sleep(0.02)
                continue
            except BaseException:  # a failed handshake: the socket is ours to close
                s.close()
                raise
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(sockdir, ignore_errors=True)

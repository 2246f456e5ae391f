"""Reading a capture through QEMU over NBD: libvirt's pull-mode export, ``qemu-nbd``, a client.

Two servers, one client:

* a running VM: the pull-mode backup job (:func:`..virt.libvirt.backup_pull`)
  makes QEMU serve each disk's point in time on a Unix socket, export name =
  the disk's target.  ``qemu-img map`` over that export (:func:`map_export`)
  gives the allocation (``base:allocation``) or, with ``x-dirty-bitmap``, the
  clusters dirty since the checkpoint.
* a stopped VM: ``qemu-nbd`` opens its disk read-only, a LUKS qcow2 with the
  disk's passphrase (a QEMU ``secret`` object read from a pipe, never a file or
  an argument), and serves the *guest-visible* plaintext on a Unix socket in a
  0700 directory (:func:`export`).

Either way the plaintext only crosses the socket; nothing is copied to disk.

The client speaks the fixed-newstyle handshake (``NBD_OPT_GO`` on a named
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
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..sockets import recv_exactly
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


def image_json(path: Path, *, fmt: str = "qcow2", secret: str | None = None) -> str:
    """A ``json:`` filename for QEMU: image ``path`` of format ``fmt``, decrypted with
    ``secret`` (a LUKS qcow2)."""
    spec: dict[str, object] = {"driver": fmt, "file": {"driver": "file", "filename": str(path)}}
    if secret:
        spec["encrypt"] = {"key-secret": secret}
    return "json:" + json.dumps(spec, separators=(",", ":"))


def secret_pipe(passphrase: bytes) -> int:
    """The read end of a pipe holding ``passphrase`` (QEMU reads it as a file)."""
    r, w = os.pipe()
    try:
        os.write(w, passphrase)  # short: fits the pipe buffer
    finally:
        os.close(w)
    return r


def map_image(path: Path, passphrase: bytes | None, *, fmt: str = "qcow2") -> str:
    """``qemu-img map --output=json`` of an image at rest (a LUKS qcow2 with ``passphrase``)."""
    fd = secret_pipe(passphrase) if passphrase else -1
    args = ["qemu-img", "map", "-U", "--output=json"]
    if passphrase:
        args += ["--object", f"secret,id=vmcsec0,file=/dev/fd/{fd}"]
    args.append(image_json(path, fmt=fmt, secret="vmcsec0" if passphrase else None))
    try:
        return _qemu_img_map(args, str(path), pass_fds=(fd,) if fd >= 0 else ())
    finally:
        if fd >= 0:
            os.close(fd)


def map_export(socket_path: Path, export: str, *, dirty_bitmap: str | None = None) -> str:
    """``qemu-img map --output=json`` of NBD export ``export`` on ``socket_path``.

    With ``dirty_bitmap`` (``qemu:dirty-bitmap:backup-<disk>``) QEMU's NBD client
    reports that context in place of the allocation, inverted: a dirty extent
    shows as ``"data": false`` (:func:`.disks.parse_dirty`).
    """
    def opt(value: str) -> str:
        return value.replace(",", ",,")
    spec = f"driver=nbd,server.type=unix,server.path={opt(str(socket_path))},export={opt(export)}"
    if dirty_bitmap:
        spec += f",x-dirty-bitmap={opt(dirty_bitmap)}"
    return _qemu_img_map(["qemu-img", "map", "--output=json", "--image-opts", spec],
                         f"{socket_path} export {export}")


def _qemu_img_map(args: list[str], what: str, pass_fds: tuple[int, ...] = ()) -> str:
    try:
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             pass_fds=pass_fds)
    except FileNotFoundError as exc:
        raise LocalSyncError("qemu-img is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise LocalSyncError(f"qemu-img map {what}: {exc.stderr.strip()}") from exc
    return out.stdout


class Client:
    """One NBD connection (blocking; used from a worker thread)."""

    def __init__(self, sock: socket.socket, export: str = "") -> None:
        self.sock = sock
        self.export = export
        self.size = 0
        self._handle = 0
        self._handshake()

    def _recv(self, n: int) -> bytes:
        try:
            return recv_exactly(self.sock, n)
        except OSError as exc:
            raise NBDError(f"export {self.export!r}: the connection broke: {exc}") from exc
        except EOFError:
            raise NBDError(f"export {self.export!r}: the server closed the connection") from None

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NBDError(f"export {self.export!r}: the connection broke: {exc}") from exc

    def _handshake(self) -> None:
        head = self._recv(18)
        if head[:8] != _NBDMAGIC or head[8:16] != _IHAVEOPT:
            raise NBDError("not a newstyle NBD server")
        (flags,) = struct.unpack(">H", head[16:])
        if not flags & _FLAG_FIXED_NEWSTYLE:
            raise NBDError("the server does not speak fixed newstyle")
        self._send(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        name = self.export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)  # no info requests
        self._send(_IHAVEOPT + struct.pack(">II", _OPT_GO, len(data)) + data)
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            body = self._recv(length)
            if magic != _REPLY_MAGIC:
                raise NBDError("bad option reply")
            if rtype & 0x80000000:
                raise NBDError(f"export {self.export!r} refused (reply {rtype:#x}: "
                               f"{body.decode(errors='replace')})")
            if rtype == _REP_INFO and len(body) >= 12 and body[:2] == b"\0\0":
                (self.size,) = struct.unpack(">Q", body[2:10])
            elif rtype == _REP_ACK:
                return

    def read_run(self, lengths: Sequence[int], offset: int) -> list[bytes]:
        """The bytes from guest offset ``offset`` on, as one object per length in
        ``lengths`` (one per chunk).  Each is received with one ``recv`` into a new
        object, the chunk's own (no buffer to zero first, no copy); one request
        covers as many as fit in ``MAX_READ`` bytes."""
        out: list[bytes] = []
        i = 0
        while i < len(lengths):
            j, n = i + 1, lengths[i]
            while j < len(lengths) and n + lengths[j] <= MAX_READ:
                n += lengths[j]
                j += 1
            self._handle += 1
            self._send(_REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset, n))
            magic, error, handle = _SIMPLE_REPLY.unpack(self._recv(_SIMPLE_REPLY.size))
            if magic != _SIMPLE_REPLY_MAGIC or handle != self._handle:
                raise NBDError("unexpected reply")
            if error:
                raise NBDError(f"read of {n} bytes at {offset} of export "
                               f"{self.export!r} failed (error {error})")
            out.extend(self._recv(k) for k in lengths[i:j])
            offset += n
            i = j
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(_REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
        self.sock.close()


def connect(socket_path: Path, export: str) -> Client:
    """A client of export ``export`` on the Unix socket ``socket_path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(socket_path))
        return Client(s, export)
    except OSError as exc:
        s.close()
        raise NBDError(f"cannot reach export {export!r} on {socket_path}: {exc}") from exc
    except BaseException:
        s.close()
        raise


@contextlib.contextmanager
def export(path: Path, passphrase: bytes | None, *, fmt: str = "qcow2",
           limit: float = 30.0) -> Iterator[Client]:
    """``qemu-nbd`` serving image ``path`` read-only, and a client connected to it."""
    exe = shutil.which("qemu-nbd")
    if exe is None:
        raise LocalSyncError("qemu-nbd is not installed")
    sockdir = Path(tempfile.mkdtemp(prefix="vmclient-nbd-"))  # 0700
    sock_path = sockdir / "s"
    fd = secret_pipe(passphrase) if passphrase else -1
    args = [exe, "--read-only", "--shared=1", f"--socket={sock_path}"]
    if passphrase:
        args += ["--object", f"secret,id=vmcsec0,file=/dev/fd/{fd}"]
    args.append(image_json(path, fmt=fmt, secret="vmcsec0" if passphrase else None))
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

"""SFTP version 3 packets as bytes and values, without I/O (the pure core of the SFTP client).

The protocol is draft-ietf-secsh-filexfer-02 (version 3, what OpenSSH's
``sftp-server`` speaks) with OpenSSH's extensions from its ``PROTOCOL`` file:
``posix-rename@openssh.com``, ``fsync@openssh.com`` and ``limits@openssh.com``.
Every packet is ``uint32 length, byte type, uint32 request id, ...``.

Requests are built by :func:`request` and the field helpers; answers are
parsed from untrusted bytes by :func:`parse_answer`, which checks every length
and count against the bytes present: a malformed answer is a
:class:`MalformedAnswer`, never an ``IndexError``, a ``struct.error``, a
decoding error or a huge allocation.  :class:`Framer` cuts a byte stream into
packets (used by the fuzz tests and the adapter's small answers); the adapter
reads the payload of a ``DATA`` answer straight into its destination buffer
(:func:`data_header`), so bulk data is never parsed here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeVar

from ..errors import DBUS_ERROR_PREFIX, EXIT_UNAVAILABLE, VMClientError

VERSION = 3
# packet types
INIT, VERSION_ANSWER, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
OPENDIR, READDIR, REMOVE, MKDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 16, 17, 18
EXTENDED, EXTENDED_REPLY = 200, 201
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
ANSWERS = frozenset({STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED_REPLY})
# open flags
READ_FLAG, WRITE_FLAG, CREAT, TRUNC, EXCL = 0x01, 0x02, 0x08, 0x10, 0x20
# status codes
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, OP_UNSUPPORTED = 0, 1, 2, 3, 4, 8
# attribute flags
A_SIZE, A_UIDGID, A_PERMISSIONS, A_ACMODTIME, A_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000

POSIX_RENAME = "posix-rename@openssh.com"
FSYNC = "fsync@openssh.com"
LIMITS = "limits@openssh.com"

MAX_PACKET = 1 << 24  # an answer longer than this is garbage (no server sends one)
REQUEST_SIZE = 255 << 10  # bytes per READ/WRITE (OpenSSH's sftp-server takes 256 KiB packets)
MIN_REQUEST = 32 << 10  # what every SFTP server must take
HEADER = struct.Struct(">IB")  # length (of type + body), type
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DATA_HEAD = struct.Struct(">II")  # request id, data length
_WRITE_TAIL = struct.Struct(">QI")  # offset, data length
T = TypeVar("T")


class MalformedAnswer(VMClientError):
    """The SFTP server sent a malformed answer: {}"""

    exit_code = EXIT_UNAVAILABLE
    dbus_name = DBUS_ERROR_PREFIX + "MalformedAnswer"


# --- requests -------------------------------------------------------------------------------

def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def string(s: bytes | str) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _U32.pack(len(b)) + b


def packet(kind: int, body: bytes) -> bytes:
    return HEADER.pack(len(body) + 1, kind) + body


def init() -> bytes:
    return packet(INIT, u32(VERSION))


def request(kind: int, rid: int, *fields: bytes) -> bytes:
    """A request: its type, id and already encoded fields."""
    return packet(kind, u32(rid) + b"".join(fields))


def extended(rid: int, name: str, *fields: bytes) -> bytes:
    return request(EXTENDED, rid, string(name), *fields)


def no_attrs() -> bytes:
    return u32(0)


def mode_attrs(mode: int) -> bytes:
    return u32(A_PERMISSIONS) + u32(mode)


def write_header(rid: int, handle: bytes, offset: int, length: int) -> bytes:
    """Everything of a WRITE request before its ``length`` bytes of data."""
    body_len = 4 + 4 + len(handle) + _WRITE_TAIL.size + length
    return (HEADER.pack(body_len + 1, WRITE) + u32(rid) + string(handle)
            + _WRITE_TAIL.pack(offset, length))


def read(rid: int, handle: bytes, offset: int, length: int) -> bytes:
    return request(READ, rid, string(handle), u64(offset), u32(length))


# --- answers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attrs:
    size: int | None = None
    mode: int | None = None
    mtime: int | None = None


@dataclass(frozen=True)
class Status:
    code: int
    message: str


@dataclass(frozen=True)
class Name:
    filename: str
    attrs: Attrs


@dataclass(frozen=True)
class Version:
    version: int
    extensions: dict[str, str]


@dataclass(frozen=True)
class Limits:
    max_packet: int
    max_read: int
    max_write: int
    max_handles: int


def request_sizes(extensions: dict[str, str], limits: Limits | None) -> tuple[int, int]:
    """The sizes of one READ and one WRITE request to a server: from its answer to
    ``limits@openssh.com`` if it has one, else OpenSSH's 256 KiB packets, else the
    least every server must take."""
    if limits is not None:
        overhead = 1024
        return (_within(limits.max_read, limits.max_packet - overhead),
                _within(limits.max_write, limits.max_packet - overhead))
    if "openssh" in " ".join(extensions):  # before limits@: 256 KiB packets
        return REQUEST_SIZE, REQUEST_SIZE
    return MIN_REQUEST, MIN_REQUEST


def _within(limit: int, packet: int) -> int:
    """A request size from the server's limits (0 = no limit), kept sane."""
    size = REQUEST_SIZE if limit == 0 else min(limit, REQUEST_SIZE)
    if packet > 0:
        size = min(size, packet)
    return max(MIN_REQUEST, size) if size >= MIN_REQUEST else max(1024, size)


Answer = Status | bytes | list[Name] | Attrs | Limits | None
"""STATUS → Status, HANDLE → bytes, NAME → list, ATTRS → Attrs, EXTENDED_REPLY (limits) →
Limits, EXTENDED_REPLY of any other request → None (its body is not used)."""


class _Reader:
    """Bounds-checked reading of one untrusted packet body."""

    def __init__(self, kind: int, untrusted: bytes) -> None:
        self.kind, self.data, self.pos = kind, untrusted, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedAnswer(f"truncated answer (type {self.kind})")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def raw(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedAnswer(f"answer (type {self.kind}) has text that is not UTF-8"
                                  ) from None

    def attrs(self) -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & A_SIZE else None
        if flags & A_UIDGID:
            self.take(8)
        mode = self.u32() if flags & A_PERMISSIONS else None
        mtime = None
        if flags & A_ACMODTIME:
            self.take(4)
            mtime = self.u32()
        if flags & A_EXTENDED:
            for _ in range(self.u32()):  # each pair takes 8 bytes at least: bounded
                self.raw()
                self.raw()
        return Attrs(size, mode, mtime)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedAnswer(f"{len(self.data) - self.pos} bytes too many in an answer "
                                  f"(type {self.kind})")


def parse_version(untrusted: bytes) -> Version:
    """The body of the server's VERSION packet (type byte excluded)."""
    r = _Reader(VERSION_ANSWER, untrusted)
    version = r.u32()
    extensions: dict[str, str] = {}
    while r.pos < len(r.data):
        name = r.text()
        extensions[name] = r.text()
    return Version(version, extensions)


def parse_answer(kind: int, untrusted: bytes, *, limits: bool = False) -> tuple[int, Answer]:
    """(request id, value) of one answer's body (type byte excluded); ``limits``: an
    EXTENDED_REPLY is the answer to ``limits@openssh.com``."""
    if kind not in ANSWERS or kind == DATA:
        raise MalformedAnswer(f"unexpected packet type {kind}")
    r = _Reader(kind, untrusted)
    rid = r.u32()
    value: Answer
    if kind == STATUS:
        code = r.u32()
        message = r.text() if r.pos < len(r.data) else ""
        if r.pos < len(r.data):
            r.text()  # language tag
        value = Status(code, message)
    elif kind == HANDLE:
        value = r.raw()
        if len(value) > 256:
            raise MalformedAnswer(f"a handle of {len(value)} bytes (at most 256)")
    elif kind == NAME:
        names = []
        for _ in range(r.u32()):  # each entry takes 12 bytes at least: bounded
            filename = r.text()
            r.raw()  # long name
            names.append(Name(filename, r.attrs()))
        value = names
    elif kind == ATTRS:
        value = r.attrs()
    elif limits:
        value = Limits(r.u64(), r.u64(), r.u64(), r.u64())
    else:
        r.pos = len(r.data)
        value = None
    r.end()
    return rid, value


def expect(value: object, kind: type[T], what: str) -> T:
    """A parsed answer of the type the request expects, or the answer is garbage."""
    if not isinstance(value, kind):
        raise MalformedAnswer(f"unexpected answer to {what}: {type(value).__name__}")
    return value


def frame_header(untrusted: bytes) -> tuple[int, int]:
    """(type, body length) from the 5 bytes that start a packet."""
    length, kind = HEADER.unpack(untrusted)
    if not 1 <= length <= MAX_PACKET:
        raise MalformedAnswer(f"a packet of length {length}")
    return kind, length - 1


def data_header(untrusted: bytes, body_length: int) -> tuple[int, int]:
    """(request id, data length) from the 8 bytes that start a DATA body of
    ``body_length`` bytes; the data must fill the rest of the body exactly."""
    rid, n = _DATA_HEAD.unpack(untrusted)
    if n != body_length - _DATA_HEAD.size:
        raise MalformedAnswer(f"DATA of {n} bytes in a body of {body_length}")
    return rid, n


DATA_HEAD_SIZE = _DATA_HEAD.size


class Framer:
    """Bytes in, ``(type, body)`` packets out (the adapter reads bulk data itself)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            kind, n = frame_header(bytes(self.buf[:HEADER.size]))
            if len(self.buf) < HEADER.size + n:
                break
            out.append((kind, bytes(self.buf[HEADER.size:HEADER.size + n])))
            del self.buf[:HEADER.size + n]
        return out


def status_error(status: Status, op: str, path: str) -> OSError:
    """The ``OSError`` an error status means (errno set for the ones that have one)."""
    import errno
    message = status.message or f"status {status.code}"
    if status.code == NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, message, path)
    if status.code == PERMISSION_DENIED:
        return PermissionError(errno.EACCES, message, path)
    if status.code == OP_UNSUPPORTED:
        return OSError(errno.EOPNOTSUPP, f"{op} is not supported: {message}", path)
    return ServerFailure(errno.EIO, message, path)


class ServerFailure(OSError):
    """The server answered FAILURE (or another error status): the request failed there."""

"""A leaner receive path under paramiko's SFTP client: fewer copies per byte.

paramiko 4.0 keeps a channel's incoming data in an ``array`` and removes what
is read from its front (``del buffer[:n]``), which moves everything still
buffered: with a download's window of data waiting, each read of an SFTP
answer moves megabytes.  ``SFTPClient._read_all`` then grows its result with
``+=``, copying it again for every piece.  Here the channel's buffer keeps
the pieces as they arrived (a read that takes a whole piece takes it without a
copy, a partial read slices once), an SFTP packet is joined once and the data
of a read answer stays a view into its packet.  Only
the hooks ``BufferedPipe`` has for its storage (``_buffer_frombytes``,
``_buffer_tobytes``, ``len`` and ``del`` on ``_buffer``) are used; the locking,
waiting and closing stay paramiko's.
"""

from __future__ import annotations

import struct
from collections import deque

import paramiko
from paramiko.buffered_pipe import BufferedPipe

_PACKET = struct.Struct(">IB")  # SFTP packet: length, type
_U32 = struct.Struct(">I")
MAX_PACKET = 1 << 24  # as paramiko: a longer packet is garbage
_VERSION, _STATUS, _NAME, _ATTRS = 2, 101, 104, 105
_ATTR_FIELDS = ((0x1, 8), (0x2, 8), (0x4, 4), (0x8, 8))  # size, uid+gid, mode, atime+mtime
_ATTR_EXTENDED = 0x80000000


class _Answer:
    """Bounds-checked reading of one untrusted SFTP answer, before paramiko parses it.

    paramiko reads past the end of an answer as zeros and trusts its counts: a
    name list claiming 2**32 entries in a few bytes keeps it looping (and
    allocating) for hours, text that is not UTF-8 raises ``UnicodeDecodeError``
    and a short version answer ``struct.error``.  Each is an
    ``SFTPError`` here, which the store reports naming server, operation and path.
    """

    def __init__(self, kind: int, untrusted: bytes) -> None:
        self.kind, self.data, self.pos = kind, untrusted, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise paramiko.SFTPError(f"truncated SFTP answer (type {self.kind})")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def text(self) -> None:
        try:
            self.take(self.u32()).decode("utf-8")
        except UnicodeDecodeError:
            raise paramiko.SFTPError(f"SFTP answer (type {self.kind}) has text that is not "
                                     "UTF-8") from None

    def attrs(self) -> None:
        flags = self.u32()
        for bit, size in _ATTR_FIELDS:
            if flags & bit:
                self.take(size)
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):  # each pair takes 8 bytes at least: bounded
                self.take(self.u32())
                self.take(self.u32())

    def check(self) -> None:
        if self.kind == _VERSION:
            self.take(4)
            return
        self.take(4)  # request id
        if self.kind == _STATUS:
            self.take(4)
            self.text()
        elif self.kind == _NAME:
            for _ in range(self.u32()):  # each entry takes 12 bytes at least: bounded
                self.text()
                self.text()
                self.attrs()
        elif self.kind == _ATTRS:
            self.attrs()


class _Pieces:
    """The buffered bytes as the pieces they arrived in (what ``BufferedPipe`` needs)."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.head = 0  # bytes of pieces[0] already read
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def frombytes(self, data: bytes) -> None:
        if data:
            self.pieces.append(bytes(data))
            self.size += len(data)

    def peek(self, limit: int | None) -> bytes:
        n = self.size if limit is None else min(limit, self.size)
        first = self.pieces[0] if self.pieces else b""
        if self.head == 0 and n == len(first):
            return first
        if len(first) - self.head >= n:
            return first[self.head:self.head + n]
        out, head = [], self.head
        for piece in self.pieces:
            take = min(len(piece) - head, n)
            out.append(piece[head:head + take] if head or take < len(piece) else piece)
            n -= take
            head = 0
            if not n:
                break
        return b"".join(out)

    def __delitem__(self, index: slice) -> None:
        n = self.size if index.stop is None else min(index.stop, self.size)
        self.size -= n
        while n:
            left = len(self.pieces[0]) - self.head
            if left > n:
                self.head += n
                return
            self.pieces.popleft()
            self.head = 0
            n -= left


class Pipe(BufferedPipe):  # type: ignore[misc]
    """``BufferedPipe`` over :class:`_Pieces`."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = _Pieces()

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer.frombytes(data)

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return self._buffer.peek(limit)


class SFTPClient(paramiko.SFTPClient):  # type: ignore[misc]
    """paramiko's client, reading each packet with one join."""

    writer: object = None  # the connection's sftp_write.Writer (set by sftp._Connection)

    @classmethod
    def over(cls, transport: paramiko.Transport) -> SFTPClient:
        """The SFTP subsystem on a new channel whose buffer is a :class:`Pipe`."""
        channel = transport.open_session()
        channel.in_buffer = Pipe()  # before the subsystem starts: nothing is buffered yet
        channel.invoke_subsystem("sftp")
        return cls(channel)

    def _read_packet(self) -> tuple[int, bytes]:
        """(type, body) of the next packet; the type byte read apart, so no slice copies."""
        size, kind = _PACKET.unpack(self._read_all(_PACKET.size))
        if size > MAX_PACKET or not size:
            raise paramiko.SFTPError(f"Garbage packet received (length {size})")
        body = self._read_all(size - 1)
        if kind in (_VERSION, _STATUS, _NAME, _ATTRS):  # not data: the hot path is unchecked
            _Answer(kind, body).check()
        return kind, body

    def _read_all(self, n: int) -> bytes:
        parts = []
        while n > 0:
            data = self.sock.recv(n)
            if not data:
                raise EOFError()
            parts.append(data)
            n -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Received:
    """The answers of a read so far, joined once at the end (one copy, no regrowing).

    The answers may be views into the SFTP packets they came in (no copy until
    the join).
    """

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def begin(self, length: int) -> None:
        """Told the length of the read (at every attempt) before its bytes arrive."""

    def extend(self, data: bytes | memoryview) -> None:
        self.parts.append(data)
        self.size += len(data)

    def join(self) -> bytes:
        if len(self.parts) != 1 or not isinstance(self.parts[0], bytes):
            self.parts[:] = [b"".join(self.parts)]
        data = self.parts[0]
        assert isinstance(data, bytes)
        return data

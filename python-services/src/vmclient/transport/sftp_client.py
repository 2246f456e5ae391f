"""A small blocking SFTP v3 client over one ``ssh`` process (:mod:`.ssh`), pipelined.

One :class:`Connection` per thread; the store runs several (several ssh
processes) for parallelism.  Reads and writes keep up to :data:`IN_FLIGHT`
requests outstanding, so a transfer is not paced by the round trip.  The
request and answer formats are :mod:`.sftp_codec` (pure), the bytes move
through :mod:`.sftp_stream`: small answers are framed and parsed in the codec,
the payload of a DATA answer goes to the caller in the pieces it is received
in, and a WRITE's data is sent from the caller's buffer (``sendmsg`` of header
and view: no copy in Python).

Failures come in three kinds, which the store treats differently:

* :class:`ConnectionLost` — the socket ended or timed out (ssh exited, the
  server dropped the session): the store reconnects and resumes;
* :class:`Refused` — ssh could not open the session and another attempt would
  not change that (host key, authentication), or the server lacks an
  extension needed;
* ``OSError`` from :func:`.sftp_codec.status_error` — the server answered a
  request with an error status (no such file, permission denied, failure);
  :class:`.sftp_codec.MalformedAnswer` — it answered garbage.

Deadlock-free with blocking sockets: with at most :data:`IN_FLIGHT` requests
outstanding, the answers to writes (28-byte statuses) and the requests of
reads (~40 bytes) never fill a socket buffer.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from . import sftp_codec as c
from .sftp_stream import ConnectionLost, Stream
from .ssh import Endpoint, Failure, Process

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # outstanding read or write requests per connection
SEND_BATCH = 4  # write requests per sendmsg
__all__ = ["Channel", "Connection", "ConnectionLost", "Into", "Refused", "Reopen"]


class Reopen(Exception):
    """A read ended short after its handle was closed: open again at :attr:`offset`."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class Into:
    """Where a read puts its data: ``view`` holds the file's bytes from offset ``start``
    on; :attr:`received` counts those put there so far (in order, without a gap).  It
    outlives a dropped connection: the next read goes on at ``start + received``."""

    def __init__(self, view: memoryview, start: int) -> None:
        self.view, self.start, self.received = view, start, 0


class Refused(Exception):
    """ssh could not open the session and retrying would not help."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


class Channel(Protocol):
    """What carries the session: a :class:`.ssh.Process` (a fake server in the fuzz tests)."""

    sock: socket.socket

    @property
    def pid(self) -> int: ...
    def failure(self, wait: float) -> tuple[Failure, str]: ...
    def close(self) -> None: ...
    def alive(self) -> bool: ...


class Connection:
    """An SFTP session: ``ssh -s <host> sftp`` (or ``channel``) and the version exchange
    done."""

    def __init__(self, endpoint: Endpoint, channel: Channel | None = None) -> None:
        self.endpoint = endpoint
        self.process: Channel = Process(endpoint) if channel is None else channel
        self.sock = self.process.sock
        self.stream = Stream(self.sock, endpoint.timeout)
        self._rid = 0
        try:
            self._send(c.init())
            kind, body = self._packet()
            if kind != c.VERSION_ANSWER:
                raise c.MalformedAnswer(f"the first answer has type {kind}, not VERSION")
            version = c.parse_version(body)
        except ConnectionLost:
            failure, message = self.process.failure(endpoint.timeout)
            self.close()
            if failure.final:
                raise Refused(failure, message) from None
            raise ConnectionLost(message) from None
        except BaseException:
            self.close()
            raise
        if version.version != c.VERSION:
            self.close()
            raise c.MalformedAnswer(f"SFTP version {version.version} (this client speaks 3)")
        self.extensions = version.extensions
        self.can_fsync = self.extensions.get(c.FSYNC) == "1"
        self.can_posix_rename = self.extensions.get(c.POSIX_RENAME) == "1"
        limits: c.Limits | None = None
        if self.extensions.get(c.LIMITS) == "1":
            answer = self.call(c.EXTENDED, c.string(c.LIMITS), limits=True)
            assert isinstance(answer, c.Limits)
            limits = answer
        self.read_size, self.write_size = c.request_sizes(self.extensions, limits)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive() and self.sock.fileno() >= 0

    def close(self) -> None:
        self.process.close()

    # --- framing ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self.stream.send(data)

    def _read(self, n: int) -> bytes:
        return self.stream.read(n)

    def _header(self) -> tuple[int, int]:
        return c.frame_header(self._read(c.HEADER.size))

    def _packet(self) -> tuple[int, bytes]:
        kind, n = self._header()
        return kind, self._read(n)

    def _next_rid(self) -> int:
        self._rid = (self._rid + 1) & 0xFFFFFFFF
        return self._rid

    # --- one request, one answer -------------------------------------------------------------

    def call(self, kind: int, *fields: bytes, limits: bool = False) -> c.Answer:
        """Send one request and return its answer (nothing else may be in flight)."""
        rid = self._next_rid()
        self._send(c.request(kind, rid, *fields))
        akind, body = self._packet()
        if akind == c.DATA:
            raise c.MalformedAnswer("DATA answered to a request that reads nothing")
        got, value = c.parse_answer(akind, body, limits=limits)
        if got != rid:
            raise c.MalformedAnswer(f"answer to request {got}, expected {rid}")
        return value

    def checked(self, op: str, path: str, kind: int, *fields: bytes) -> c.Answer:
        """:meth:`call`, an error status raised as ``OSError``, an OK status as None."""
        value = self.call(kind, *fields)
        if isinstance(value, c.Status):
            if value.code != c.OK:
                raise c.status_error(value, op, path)
            return None
        return value

    def stat(self, path: str) -> c.Attrs | None:
        """The attributes of ``path``; None if it does not exist."""
        try:
            value = self.checked("stat", path, c.STAT, c.string(path))
        except FileNotFoundError:
            return None
        return c.expect(value, c.Attrs, "STAT")

    def open(self, path: str, flags: int) -> bytes:
        return c.expect(self.checked("open", path, c.OPEN, c.string(path), c.u32(flags),
                                     c.no_attrs()), bytes, "OPEN")

    def fstat(self, handle: bytes, path: str) -> c.Attrs:
        return c.expect(self.checked("fstat", path, c.FSTAT, c.string(handle)), c.Attrs,
                        "FSTAT")

    def close_handle(self, handle: bytes, path: str) -> None:
        self.checked("close", path, c.CLOSE, c.string(handle))

    def fsync(self, handle: bytes, path: str) -> None:
        self.checked("fsync", path, c.EXTENDED, c.string(c.FSYNC), c.string(handle))

    def rename(self, src: str, dst: str) -> None:
        """The plain SFTP rename: fails if ``dst`` exists (OpenSSH: link + unlink)."""
        self.checked("rename", src, c.RENAME, c.string(src), c.string(dst))

    def posix_rename(self, src: str, dst: str) -> None:
        """``rename(2)`` on the server: replaces ``dst`` atomically."""
        self.checked("rename", src, c.EXTENDED, c.string(c.POSIX_RENAME), c.string(src),
                     c.string(dst))

    def remove(self, path: str) -> None:
        self.checked("remove", path, c.REMOVE, c.string(path))

    def mkdir(self, path: str) -> None:
        self.checked("mkdir", path, c.MKDIR, c.string(path), c.no_attrs())

    def realpath(self, path: str) -> str:
        names = c.expect(self.checked("realpath", path, c.REALPATH, c.string(path)), list,
                         "REALPATH")
        if len(names) != 1:
            raise c.MalformedAnswer(f"{len(names)} names answered to REALPATH")
        return str(names[0].filename)

    def pipelined(self, kind: int, requests: Sequence[bytes]) -> list[c.Answer]:
        """Requests of one ``kind`` (their encoded fields) sent together, nothing else in
        flight; their answers, in the requests' order (whatever order they come in)."""
        if not requests:
            return []
        rids = [self._next_rid() for _ in requests]
        pending = set(rids)
        self._send(b"".join(c.request(kind, rid, fields) for rid, fields in zip(
            rids, requests, strict=True)))
        answers: dict[int, c.Answer] = {}
        while len(answers) < len(rids):
            akind, body = self._packet()
            if akind == c.DATA:
                raise c.MalformedAnswer("DATA answered to a request that reads nothing")
            got, value = c.parse_answer(akind, body)
            if got in answers or got not in pending:
                raise c.MalformedAnswer(f"answer to request {got}, which is not outstanding")
            answers[got] = value
        return [answers[rid] for rid in rids]

    # --- pipelined transfers ------------------------------------------------------------------

    def read(self, handle: bytes, start: int, end: int,
             sink: Callable[[bytes], None] | Into, path: str, *,
             close: bool = False) -> None:
        """Bytes ``[start, end)`` of an open file to ``sink``, in order, ``IN_FLIGHT``
        requests deep: a callable gets them in the pieces they are received in, an
        :class:`Into` has each answer's payload received straight into its place.  End
        of file (the file shrank) ends the read there; a short answer (allowed by the
        protocol) is continued with new requests.

        ``close``: the handle is closed too, the CLOSE sent right behind the last READ
        (no round trip of its own), whatever happens; a short answer after that raises
        :class:`Reopen` with the offset reached."""
        if isinstance(sink, Into) and not sink.start <= start <= end <= sink.start + len(
                sink.view):
            raise ValueError(f"bytes [{start}, {end}) do not fit the view given")
        window: deque[tuple[int, int, int]] = deque()  # (request id, offset, length)
        stale: set[int] = set()  # answers to read and drop: abandoned requests, the CLOSE
        pos, size = start, self.read_size
        closing = False
        try:
            while pos < end or window:
                if pos < end and len(window) <= IN_FLIGHT // 2:  # refill in one send
                    batch = []
                    while pos < end and len(window) < IN_FLIGHT:
                        n = min(size, end - pos)
                        rid = self._next_rid()
                        batch.append(c.read(rid, handle, pos, n))
                        window.append((rid, pos, n))
                        pos += n
                    if close and pos >= end:
                        closing = True
                        stale.add(self._next_rid())
                        batch.append(c.request(c.CLOSE, self._rid, c.string(handle)))
                    self._send(b"".join(batch))
                rid, off, n = window.popleft()
                got = self._read_answer(rid, off, n, stale, path, sink)
                if got is None:  # end of file
                    break
                if got < n:
                    stale.update(r for r, _o, _n in window)
                    window.clear()
                    pos = off + got
                    if closing:
                        self._drain(stale)
                        raise Reopen(pos)
        except OSError:  # an error status: the other answers are read, the handle closed
            stale.update(r for r, _o, _n in window)
            if close and not closing:
                stale.add(self._next_rid())
                self._send(c.request(c.CLOSE, self._rid, c.string(handle)))
            self._drain(stale)
            raise
        stale.update(r for r, _o, _n in window)
        if close and not closing:
            stale.add(self._next_rid())
            self._send(c.request(c.CLOSE, self._rid, c.string(handle)))
        self._drain(stale)

    def _read_answer(self, rid: int, off: int, n: int, stale: set[int], path: str,
                     sink: Callable[[bytes], None] | Into) -> int | None:
        """The answer to read request ``rid`` (``n`` bytes at ``off`` asked): its data to
        ``sink``, and how many bytes it had; None at end of file.  Answers to ``stale``
        requests before it are dropped."""
        while True:
            # the header and a DATA answer's id and length in one receive (every answer to
            # a read has these 13 bytes at least); into a view: nothing past them, so the
            # payload is received in its place
            head = self.stream.read(c.HEADER.size + c.DATA_HEAD_SIZE,
                                    ahead=not isinstance(sink, Into))
            kind, length = c.frame_header(head[:c.HEADER.size])
            if length < c.DATA_HEAD_SIZE:
                raise c.MalformedAnswer(f"an answer of {length} bytes to a read")
            if kind == c.DATA:
                got, size = c.data_header(head[c.HEADER.size:], length)
                if got == rid:
                    if size > n:
                        raise c.MalformedAnswer(f"{size} bytes answered to a read of {n}")
                    if isinstance(sink, Into):
                        at = off - sink.start
                        self.stream.read_into(sink.view[at:at + size])
                        sink.received = at + size
                    else:
                        for piece in self.stream.pieces(size):
                            sink(piece)
                    return size
                if got not in stale:
                    raise c.MalformedAnswer(f"DATA for request {got}, expected {rid}")
                self.stream.skip(size)
                stale.discard(got)
                continue
            body = head[c.HEADER.size:] + self._read(length - c.DATA_HEAD_SIZE)
            got, value = c.parse_answer(kind, body)
            if got in stale:
                stale.discard(got)
                continue
            if got != rid or not isinstance(value, c.Status):
                raise c.MalformedAnswer(f"answer type {kind} to read request {got}")
            if value.code == c.EOF:
                return None
            raise c.status_error(value, "get", path)

    def _drain(self, stale: set[int]) -> None:
        """Read (and drop) the answers to abandoned requests: the session stays in step."""
        while stale:
            _kind, length = self._header()
            head = self._read(min(4, length))
            self.stream.skip(length - len(head))
            got = int.from_bytes(head, "big") if len(head) == 4 else -1
            if got not in stale:
                raise c.MalformedAnswer(f"answer to request {got}, which is not outstanding")
            stale.discard(got)

    def write(self, handle: bytes, start: int, data: memoryview, path: str) -> None:
        """Write ``data`` at ``start``, ``IN_FLIGHT`` requests deep; every answer is
        checked, and after a refused write the others are collected before raising."""
        outstanding: deque[int] = deque()
        error: OSError | None = None
        pos, size, total = 0, self.write_size, len(data)
        while pos < total or outstanding:
            batch: list[bytes | memoryview] = []
            while (pos < total and len(outstanding) < IN_FLIGHT and error is None
                   and len(batch) < 2 * SEND_BATCH):
                n = min(size, total - pos)
                rid = self._next_rid()
                batch += [c.write_header(rid, handle, start + pos, n), data[pos:pos + n]]
                outstanding.append(rid)
                pos += n
            if batch:
                self.stream.sendv(batch)
            if not outstanding:
                break
            if len(outstanding) < IN_FLIGHT and pos < total and error is None:
                continue  # the window is not full yet: send more before waiting
            kind, length = self._header()
            got, value = c.parse_answer(kind, self._read(length))
            if got != outstanding[0] or not isinstance(value, c.Status):
                raise c.MalformedAnswer(f"answer type {kind} to write request {got}")
            outstanding.popleft()
            if value.code != c.OK and error is None:
                error = c.status_error(value, "put", path)
        if error is not None:
            raise error

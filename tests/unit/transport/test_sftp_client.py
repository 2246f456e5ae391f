"""The SFTP client's byte path against a small in-process SFTP server on a socket pair.

What is checked is what the transfers cost in memory: each receive used to take a
fresh, zero-filled megabyte (kept alive by the views handed on), so a 28-byte
status answer cost a megabyte of memset and a download held megabytes per piece
received.  tracemalloc counts what the client allocates while it reads (the
server thread allocates too, a few packets at a time: the bounds leave room).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmclient.transport import sftp_codec as c
from vmclient.transport.sftp_client import Connection, Into, Reopen
from vmclient.transport.sftp_listing import listdir, listdirs
from vmclient.transport.sftp_stream import RECEIVE_BUFFER, ConnectionLost, Stream
from vmclient.transport.ssh import Endpoint, Failure

KiB = 1 << 10
HANDLE = b"h0"


class Server(threading.Thread):
    """Answers INIT, OPEN, READ (``data`` from ``file``, in ``piece``-byte sends), WRITE and
    CLOSE; ``short`` answers every READ with at most that many bytes."""

    def __init__(self, sock: socket.socket, file: bytes, short: int = 0,
                 dirs: dict[str, list[str]] | None = None) -> None:
        super().__init__(daemon=True)
        self.sock, self.file, self.short = sock, file, short
        self.dirs = dirs or {}  # directory -> the names of the files in it
        self.opened: list[bytes] = []  # directory handles
        self.listed: set[bytes] = set()  # directory handles whose names went already
        self.written = 0
        self.rounds: list[int] = []  # the requests each receive brought: what the client
        # sent before waiting for an answer

    def run(self) -> None:
        framer = c.Framer()
        with contextlib.suppress(OSError):
            while data := self.sock.recv(16 * KiB):  # (small: its allocations are traced too)
                packets = framer.feed(data)
                self.rounds.append(len(packets))
                for kind, body in packets:
                    self.answer(kind, body)
        self.sock.close()

    def answer(self, kind: int, body: bytes) -> None:
        if kind == c.INIT:
            self.sock.sendall(c.packet(c.VERSION_ANSWER, c.u32(3)))
            return
        rid = c.u32(int.from_bytes(body[:4], "big"))
        if kind == c.OPENDIR:
            path = body[8:].decode()
            if path not in self.dirs:
                self.sock.sendall(c.packet(c.STATUS, rid + c.u32(c.NO_SUCH_FILE)
                                           + c.string("no such directory") + c.string("")))
                return
            handle = f"d{len(self.opened)} {path}".encode()
            self.opened.append(handle)
            self.sock.sendall(c.packet(c.HANDLE, rid + c.string(handle)))
        elif kind == c.READDIR:
            handle = body[8:]
            if handle in self.listed:
                self.sock.sendall(c.packet(c.STATUS, rid + c.u32(c.EOF) + c.string("")
                                           + c.string("")))
                return
            self.listed.add(handle)
            names = [".", "..", *self.dirs[handle.decode().split(" ", 1)[1]]]
            self.sock.sendall(c.packet(c.NAME, rid + c.u32(len(names)) + b"".join(
                c.string(n) + c.string(n) + c.u32(c.A_SIZE) + c.u64(len(n)) for n in names)))
        elif kind == c.OPEN:
            self.sock.sendall(c.packet(c.HANDLE, rid + c.string(HANDLE)))
        elif kind == c.READ:
            off, n = struct.unpack(">QI", body[4 + 4 + len(HANDLE):])
            data = self.file[off:off + min(n, self.short or n)]
            if not data:
                self.sock.sendall(c.packet(c.STATUS, rid + c.u32(c.EOF) + c.string("")
                                           + c.string("")))
                return
            pkt = c.packet(c.DATA, rid + c.string(data))
            for at in range(0, len(pkt), 16 * KiB):  # as ssh writes: in pieces
                self.sock.sendall(pkt[at:at + 16 * KiB])
        else:  # WRITE, CLOSE
            if kind == c.WRITE:
                self.written += len(body)
            self.sock.sendall(c.packet(c.STATUS, rid + c.u32(c.OK) + c.string("")
                                       + c.string("")))


class Channel:
    pid = 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def failure(self, wait: float) -> tuple[Failure, str]:
        return Failure.UNREACHABLE, "the test server hung up"

    def close(self) -> None:
        self.sock.close()

    def alive(self) -> bool:
        return self.sock.fileno() >= 0


@contextlib.contextmanager
def connection(file: bytes = b"", short: int = 0, dirs: dict[str, list[str]] | None = None
               ) -> Iterator[tuple[Connection, Server]]:
    ours, theirs = socket.socketpair()
    server = Server(theirs, file, short, dirs)
    server.start()
    conn = Connection(Endpoint("test", 22, "u", Path("/k"), Path("/kh"), timeout=5),
                      Channel(ours))
    try:
        yield conn, server
    finally:
        conn.close()
        server.join(5)


def peak_while(fn: Callable[[], object]) -> int:
    """The most memory traced (above what was before) while ``fn`` runs."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_a_read_arrives_whole_and_in_order_holding_about_what_it_received() -> None:
    file = bytes(range(256)) * (8 * KiB)  # 2 MiB: 64 reads of 32 KiB
    with connection(file) as (conn, _server):
        handle = conn.open("f", c.READ_FLAG)
        parts: list[bytes] = []
        peak = peak_while(lambda: conn.read(handle, 0, len(file), parts.append, "f",
                                            close=True))
        assert b"".join(parts) == file
        # the pieces kept, plus a few packets in flight on either side; each receive
        # taking (and keeping) a megabyte of its own held ~64 MiB here
        assert peak < len(file) + 512 * KiB, peak


def test_status_answers_to_writes_are_received_without_a_buffer_each() -> None:
    data = memoryview(bytes(2 << 20))
    with connection() as (conn, server):
        handle = conn.open("f", c.WRITE_FLAG | c.CREAT)
        peak = peak_while(lambda: conn.write(handle, 0, data, "f"))
        conn.close_handle(handle, "f")
        assert server.written > len(data)  # every byte went (with the requests' headers)
        # 64 status answers of 28 bytes: a fresh megabyte per receive made this >= 1 MiB
        assert peak < 512 * KiB, peak


def test_short_answers_are_continued_and_after_the_close_the_read_reopens() -> None:
    file = bytes(range(256)) * 400  # 100 KiB
    with connection(file, short=10 * KiB) as (conn, _server):
        handle = conn.open("f", c.READ_FLAG)
        parts: list[bytes] = []
        with pytest.raises(Reopen) as reopen:
            conn.read(handle, 0, len(file), parts.append, "f", close=True)
        assert reopen.value.offset == 10 * KiB == len(b"".join(parts))
        handle = conn.open("f", c.READ_FLAG)
        conn.read(handle, 10 * KiB, len(file), parts.append, "f")  # (no close: continued)
        assert b"".join(parts) == file
        conn.close_handle(handle, "f")  # the session is still in step: the next answer is its


def test_a_read_into_a_view_puts_each_answer_in_its_place_short_answers_too() -> None:
    file = bytes(range(256)) * 400  # 100 KiB
    with connection(file, short=10 * KiB) as (conn, _server):
        buf = bytearray(len(file) - 1000)
        into = Into(memoryview(buf), 1000)  # file offset 1000 at buf[0]
        handle = conn.open("f", c.READ_FLAG)
        with pytest.raises(Reopen) as reopen:
            conn.read(handle, 1000, len(file), into, "f", close=True)
        assert into.received == 10 * KiB and reopen.value.offset == 1000 + 10 * KiB
        handle = conn.open("f", c.READ_FLAG)
        conn.read(handle, 1000 + into.received, len(file), into, "f")  # goes on there
        assert into.received == len(buf) and buf == file[1000:]
        with pytest.raises(ValueError, match="do not fit"):  # never past the view's end
            conn.read(handle, 1000, len(file) + 1, into, "f")
        conn.close_handle(handle, "f")  # the session is still in step


def test_directories_are_listed_together_a_few_round_trips_for_all() -> None:
    dirs = {f"packs/{i:02x}": [f"{i:02x}{j}" for j in range(3)] for i in range(40)}
    paths = [*dirs, "packs/gone"]
    with connection(dirs=dirs) as (conn, server):
        before = len(server.rounds)
        listings = listdirs(conn, paths)
        assert listings[:-1] == [[c.Name(n, c.Attrs(size=len(n))) for n in dirs[p]]
                                 for p in dirs]
        assert isinstance(listings[-1], FileNotFoundError)
        with pytest.raises(FileNotFoundError):
            listdir(conn, "packs/gone")
        assert [n.filename for n in listdir(conn, "packs/00")] == dirs["packs/00"]
        rounds = server.rounds[before:]
    # 41 directories in two batches, each: every OPENDIR, READDIR (names), READDIR (end),
    # every CLOSE; then the two listdirs (one of a missing directory). One directory at a
    # time took four round trips each (164)
    assert len(rounds) <= 2 * 4 + 1 + 4, rounds
    assert max(rounds) == 32, rounds


# --- the stream alone ----------------------------------------------------------------------

def test_the_stream_reads_exact_sizes_pieces_and_skips_across_its_buffer() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stream = Stream(ours, 5)
        payload = bytes(range(256)) * (RECEIVE_BUFFER // 256) + b"z" * 12345  # > the buffer
        long = b"y" * (RECEIVE_BUFFER + 5)
        sender = threading.Thread(target=theirs.sendall, args=(
            b"abc" + payload + payload + b"tail" + b"x" * 3 * KiB + long,))
        sender.start()
        assert stream.read(3) == b"abc"
        assert b"".join(stream.pieces(len(payload))) == payload
        stream.skip(len(payload))
        assert stream.read(4) == b"tail"
        assert stream.read(3 * KiB) == b"x" * 3 * KiB
        assert stream.read(len(long)) == long  # longer than the buffer, in one read
        sender.join()
        theirs.close()
        with pytest.raises(ConnectionLost, match="ended"):
            stream.read(1)

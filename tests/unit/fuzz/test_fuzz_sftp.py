"""Fuzzing the SFTP client: the packet parsers, and the store against a lying server.

The repository server is not trusted.  ``parse_*``/``Framer`` take random and
mutated bytes; :class:`FakeServer` is an SFTP v3 server on the other end of a
socketpair: it keeps a small file tree and answers every request correctly,
except that a fault drawn by hypothesis is applied to each answer in turn (a
wrong type or id, text that is not UTF-8, counts and lengths that lie,
truncation, garbage).  The store under test is the real :class:`SFTPStore` with
its real retry and error translation; only its channel is this server (no ssh).
Every operation must return a sane result or raise the project's own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.errors import VMClientError
from vmclient.transport import sftp, sftp_codec
from vmclient.transport.sftp_client import Connection
from vmclient.transport.ssh import Failure

from .mutate import outcome

c = sftp_codec
DIR_MODE, FILE_MODE = 0o40755, 0o100644
FILES = {"r/images/a": bytes(range(256)) * 4, "r/images/b": b"B" * 600_000,
         "r/images/sub/c": b"c" * 10}

FAULTS = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("type"), st.sampled_from([2, 101, 102, 103, 104, 105, 201, 0, 255])),
    st.tuples(st.just("id"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("truncate"), st.integers(0, 64)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(0, 7)),
    st.tuples(st.just("u32"), st.integers(0, 40),
              st.sampled_from([0, 1, 2, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])),
    st.tuples(st.just("name"), st.binary(max_size=12)),
    st.tuples(st.just("more"), st.integers(1, 300_000)),
)


def attrs(size: int, mode: int) -> bytes:
    return c.u32(c.A_SIZE | c.A_PERMISSIONS | c.A_ACMODTIME) + c.u64(size) + c.u32(mode) \
        + c.u32(0) + c.u32(0)


class FakeServer(threading.Thread):
    """Serves one session on ``sock`` with ``faults`` applied to its answers in turn."""

    def __init__(self, sock: socket.socket, faults: list[tuple[Any, ...]],
                 files: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.sock, self.faults, self.files = sock, faults, files
        self.handles: dict[bytes, str] = {}

    def run(self) -> None:
        framer = c.Framer()
        with contextlib.suppress(OSError, c.MalformedAnswer, struct.error, IndexError):
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                for kind, body in framer.feed(data):
                    if not self.answer(kind, body):
                        return
        self.sock.close()

    def send(self, kind: int, body: bytes) -> bool:
        fault = self.faults.pop(0) if self.faults else ("none",)
        pkt = bytearray(c.packet(kind, body))
        match fault:
            case ("type", t):
                pkt[4] = t
            case ("id", rid) if len(pkt) >= 9:
                pkt[5:9] = c.u32(rid)
            case ("truncate", n):
                self.sock.sendall(bytes(pkt[:n]))
                self.sock.close()
                return False
            case ("append", extra):
                pkt += extra
                pkt[:4] = c.u32(len(pkt) - 4)
            case ("flip", pos, bit) if pos < len(pkt):
                pkt[pos] ^= 1 << bit
            case ("u32", pos, value) if pos + 4 <= len(pkt):
                pkt[pos:pos + 4] = c.u32(value)
            case ("name", raw) if kind == c.NAME:
                pkt = bytearray(c.packet(kind, body[:8] + c.string(raw) + body[8:]))
            case ("more", n) if kind == c.DATA:
                pkt = bytearray(c.packet(kind, body[:4] + c.string(b"x" * n)))
        self.sock.sendall(bytes(pkt))
        return True

    def status(self, rid: int, code: int) -> bool:
        return self.send(c.STATUS, c.u32(rid) + c.u32(code) + c.string("") + c.string(""))

    def answer(self, kind: int, body: bytes) -> bool:
        if kind == c.INIT:
            ext = c.string(c.FSYNC) + c.string("1") + c.string(c.POSIX_RENAME) + c.string("1")
            return self.send(c.VERSION_ANSWER, c.u32(3) + ext)
        rid = int.from_bytes(body[:4], "big")
        rest = body[4:]

        def text(at: int) -> tuple[str, int]:
            n = int.from_bytes(rest[at:at + 4], "big")
            return rest[at + 4:at + 4 + n].decode(), at + 4 + n

        if kind in (c.STAT, c.LSTAT, c.OPENDIR, c.OPEN, c.REMOVE, c.MKDIR, c.REALPATH):
            path, _ = text(0)
            is_dir = any(f.startswith(path.rstrip("/") + "/") for f in self.files)
            if kind == c.REALPATH:
                return self.send(c.NAME, c.u32(rid) + c.u32(1) + c.string(path) + c.string("")
                                 + attrs(0, DIR_MODE))
            if kind in (c.MKDIR, c.REMOVE):
                self.files.pop(path, None)
                return self.status(rid, c.OK)
            if kind == c.OPEN:
                flags = int.from_bytes(rest[len(path) + 4:len(path) + 8], "big")
                if flags & c.CREAT:
                    self.files[path] = b""
                elif path not in self.files:
                    return self.status(rid, c.NO_SUCH_FILE)
            elif path not in self.files and not is_dir:
                return self.status(rid, c.NO_SUCH_FILE)
            if kind in (c.OPEN, c.OPENDIR):
                handle = b"h%d" % len(self.handles)
                self.handles[handle] = path
                return self.send(c.HANDLE, c.u32(rid) + c.string(handle))
            size = len(self.files.get(path, b""))
            return self.send(c.ATTRS, c.u32(rid) + attrs(size, DIR_MODE if is_dir else FILE_MODE))
        if kind in (c.READ, c.WRITE, c.FSTAT, c.CLOSE, c.READDIR):
            n = int.from_bytes(rest[:4], "big")
            handle, at = rest[4:4 + n], 4 + n
            path = self.handles.get(handle, "")
            if kind == c.FSTAT:
                return self.send(c.ATTRS, c.u32(rid) + attrs(len(self.files.get(path, b"")),
                                                              FILE_MODE))
            if kind == c.READ:
                off, length = struct.unpack(">QI", rest[at:at + 12])
                data = self.files.get(path, b"")[off:off + length]
                if not data:
                    return self.status(rid, c.EOF)
                return self.send(c.DATA, c.u32(rid) + c.string(data))
            if kind == c.WRITE:
                off, length = struct.unpack(">QI", rest[at:at + 12])
                old = self.files.get(path, b"")
                self.files[path] = old[:off].ljust(off, b"\0") + rest[at + 12:at + 12 + length]
                return self.status(rid, c.OK)
            if kind == c.READDIR:
                if self.handles.pop(handle, None) is None:
                    return self.status(rid, c.EOF)
                self.handles[handle + b"."] = path  # (the next READDIR of it answers EOF)
                names = sorted({f[len(path) + 1:].split("/")[0] for f in self.files
                                if f.startswith(path + "/")})
                body = c.u32(rid) + c.u32(len(names))
                for name in names:
                    full = f"{path}/{name}"
                    body += c.string(name) + c.string("") + (
                        attrs(len(self.files[full]), FILE_MODE) if full in self.files
                        else attrs(0, DIR_MODE))
                return self.send(c.NAME, body)
            return self.status(rid, c.OK)
        if kind in (c.RENAME, c.EXTENDED):
            return self.status(rid, c.OK)
        return self.status(rid, c.OP_UNSUPPORTED)


class FakeChannel:
    pid = 0

    def __init__(self, faults: list[tuple[Any, ...]], files: dict[str, bytes]) -> None:
        self.sock, theirs = socket.socketpair()
        FakeServer(theirs, faults, files).start()

    def failure(self, wait: float) -> tuple[Failure, str]:
        return Failure.UNREACHABLE, "the fake server hung up"

    def close(self) -> None:
        self.sock.close()

    def alive(self) -> bool:
        return self.sock.fileno() >= 0


class Store(sftp.SFTPStore):
    def __init__(self, faults: list[tuple[Any, ...]]) -> None:
        super().__init__(sftp.SFTPTarget("repo.example", "dev", Path("/nonexistent/key"),
                                         Path("/nonexistent/kh"), root="r", connections=1,
                                         attempts=2, backoff=0, timeout=2))
        self.faults, self.files = faults, dict(FILES)

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.alive():
            return conn
        conn = Connection(self.target.endpoint, FakeChannel(self.faults, self.files))
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn


async def operations(store: Store) -> list[object]:
    out: list[object] = []
    for op in (store.list("images"), store.get("images/b"), store.get("images/a", 7, 300),
               store.put_atomic("images/new", b"n" * 70_000), store.delete("images/a")):
        try:
            out.append(await op)
        except VMClientError as exc:
            out.append(exc)
    await store.close()
    return out


@given(st.lists(FAULTS, max_size=6))
@example([])
@example([("none",), ("none",), ("more", 300_000)])
def test_a_lying_server_gets_sane_results_or_the_projects_errors(faults: list[Any]) -> None:
    results = asyncio.run(operations(Store(list(faults))))
    if not faults:
        assert results[1] == FILES["r/images/b"] and results[2] == FILES["r/images/a"][7:307]
    for r in results:
        assert r is None or isinstance(r, (list, bytes, VMClientError)), r
    if isinstance(results[1], bytes):
        assert len(results[1]) <= len(FILES["r/images/b"])


@given(st.integers(0, 255), st.binary(max_size=200), st.booleans())
@example(c.NAME, c.u32(1) + c.u32(0xFFFFFFFF), False)
@example(c.STATUS, c.u32(1) + c.u32(0) + c.string(b"\xff"), False)
@example(c.EXTENDED_REPLY, c.u32(1) + b"\0" * 31, True)
def test_answers_parse_or_raise_malformed(kind: int, untrusted: bytes, limits: bool) -> None:
    outcome(lambda: c.parse_answer(kind, untrusted, limits=limits))


@given(st.binary(max_size=200))
@example(c.u32(3) + c.string(b"\xfe"))
def test_version_answers_parse_or_raise_malformed(untrusted: bytes) -> None:
    outcome(lambda: c.parse_version(untrusted))


@given(st.lists(st.binary(max_size=40), max_size=8))
@example([c.u32(0xFFFFFFFF) + b"\x65"])
def test_the_framer_cuts_any_stream_or_raises_malformed(pieces: list[bytes]) -> None:
    framer = c.Framer()

    def feed() -> list[tuple[int, bytes]]:
        return [p for piece in pieces for p in framer.feed(piece)]

    outcome(feed)

"""Fuzzing the SFTP store's readers: what an SFTP server answers to a listing, a read, a
check, a delete and a put.

The repository server is not trusted.  :class:`FakeServer` is an SFTP server
over a socket-like object (paramiko's client takes any object with ``send`` and
``recv``): it keeps a small file tree and answers every request correctly,
except that a fault drawn by hypothesis is applied to each answer in turn (a
wrong type or id, text that is not UTF-8, counts and lengths that lie, flags
with extensions, truncation, garbage).  The store under test is the real
:class:`SFTPStore` with its real retry and error translation; only its
connection is this server (``_connection`` is overridden: no SSH).  Every
operation must return a sane result or raise the project's own error.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.errors import VMClientError
from vmclient.store import sftp
from vmclient.store.sftp_wire import SFTPClient

from .mutate import outcome

INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
OPENDIR, READDIR, REMOVE, MKDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 16, 17, 18
EXTENDED = 200
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
OK, EOF, NO_SUCH_FILE = 0, 1, 2
DIR_MODE, FILE_MODE = 0o40755, 0o100644

FILES = {"r/images/a": bytes(range(256)) * 4, "r/images/b": b"B" * 300_000,
         "r/images/sub/c": b"c" * 10}

FAULTS = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("type"), st.sampled_from([VERSION, STATUS, HANDLE, DATA, NAME, ATTRS,
                                                EXTENDED + 1, 0, 255])),
    st.tuples(st.just("id"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("truncate"), st.integers(0, 64)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(0, 7)),
    st.tuples(st.just("u32"), st.integers(0, 40),
              st.sampled_from([0, 1, 2, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])),
    st.tuples(st.just("length"), st.sampled_from([0, 1, 2, 5, 0xFFFFFFFF, 1 << 24]),
              st.booleans()),
    st.tuples(st.just("name"), st.binary(max_size=12)),
    st.tuples(st.just("attrs"), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("status"), st.integers(0, 2**32 - 1), st.binary(max_size=12)),
    st.tuples(st.just("more"), st.integers(1, 300_000)),
)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def string(b: bytes) -> bytes:
    return u32(len(b)) + b


def attrs(size: int, mode: int) -> bytes:
    return u32(0x1 | 0x4) + struct.pack(">Q", size) + u32(mode)


class FakeServer:
    """An SFTP v3 server on a socket-like object, answering with ``faults`` applied."""

    def __init__(self, faults: list[tuple[Any, ...]]) -> None:
        self.faults = list(faults)
        self.files = dict(FILES)
        self.handles: dict[bytes, list[Any]] = {}
        self.inbox = b""
        self.outbox = bytearray()
        self.closed = False
        self.sizes: list[int] = []  # every file size an ATTRS answer claimed (after faults)

    # the socket side paramiko uses
    def send(self, data: bytes) -> int:
        if self.closed:
            raise OSError("closed")
        self.inbox += bytes(data)
        while len(self.inbox) >= 4 and len(self.inbox) >= 4 + struct.unpack(">I",
                                                                            self.inbox[:4])[0]:
            n = struct.unpack(">I", self.inbox[:4])[0]
            packet, self.inbox = self.inbox[4:4 + n], self.inbox[4 + n:]
            self.outbox += self.answer(packet[0], packet[1:])
        return len(data)

    def recv(self, n: int) -> bytes:
        out = bytes(self.outbox[:n])
        del self.outbox[:n]
        return out  # b"" when nothing is left: the server closed

    def close(self) -> None:
        self.closed = True

    def get_name(self) -> str:  # (paramiko's log lines name the channel)
        return "fake"

    # the server
    def answer(self, kind: int, body: bytes) -> bytes:
        if kind == INIT:
            return self.fault(VERSION, u32(3), versioned=False)
        msg = paramiko.Message(body)
        rid = msg.get_int()
        kind_out, payload = self.reply(kind, msg)
        return self.fault(kind_out, u32(rid) + payload)

    def reply(self, kind: int, msg: paramiko.Message) -> tuple[int, bytes]:
        def status(code: int, text: bytes = b"") -> tuple[int, bytes]:
            return STATUS, u32(code) + string(text) + string(b"en")
        if kind in (OPEN, OPENDIR):
            path = msg.get_text()
            if kind == OPENDIR:
                entries = sorted({p[len(path) + 1:].split("/")[0] for p in self.files
                                  if p.startswith(path + "/")})
                if not entries:
                    return status(NO_SUCH_FILE, b"no such directory")
                handle = f"d{len(self.handles)}".encode()
                self.handles[handle] = [path, entries]
            else:
                flags = msg.get_int()
                if path not in self.files and not flags & 0x8:
                    return status(NO_SUCH_FILE, b"no such file")
                self.files.setdefault(path, b"")
                if flags & 0x10:
                    self.files[path] = b""
                handle = f"f{len(self.handles)}".encode()
                self.handles[handle] = [path, None]
            return HANDLE, string(handle)
        if kind == READDIR:
            handle = msg.get_binary()
            path, entries = self.handles.get(handle, ["", []])
            if not entries:
                return status(EOF, b"end")
            out = b""
            for e in entries:
                full = f"{path}/{e}"
                size, mode = (len(self.files[full]), FILE_MODE) if full in self.files \
                    else (0, DIR_MODE)
                out += string(e.encode()) + string(b"-rw-r--r-- " + e.encode()) + \
                    attrs(size, mode)
            self.handles[handle] = [path, []]  # the next READDIR: end of the listing
            return NAME, u32(len(entries)) + out
        if kind == READ:
            path = self.handles.get(msg.get_binary(), [""])[0]
            offset, n = msg.get_int64(), msg.get_int()
            data = self.files.get(path, b"")[offset:offset + n]
            return (DATA, string(data)) if data else status(EOF, b"eof")
        if kind == WRITE:
            path = self.handles.get(msg.get_binary(), [""])[0]
            offset, data = msg.get_int64(), msg.get_binary()
            old = self.files.get(path, b"")
            self.files[path] = old[:offset].ljust(offset, b"\0") + data + \
                old[offset + len(data):]
            return status(OK)
        if kind in (FSTAT, STAT, LSTAT):
            key = msg.get_binary()
            path = self.handles[key][0] if kind == FSTAT and key in self.handles \
                else key.decode(errors="replace")
            if path in self.files:
                return ATTRS, attrs(len(self.files[path]), FILE_MODE)
            if any(p.startswith(path + "/") for p in self.files):
                return ATTRS, attrs(0, DIR_MODE)
            return status(NO_SUCH_FILE, b"no such file")
        if kind == REALPATH:
            return NAME, u32(1) + string(b"/r") + string(b"") + attrs(0, DIR_MODE)
        if kind == REMOVE:
            return status(OK if self.files.pop(msg.get_text(), None) is not None
                          else NO_SUCH_FILE)
        if kind in (RENAME, EXTENDED):
            if kind == EXTENDED:
                msg.get_text()  # posix-rename@openssh.com
            old, new = msg.get_text(), msg.get_text()
            if old not in self.files or (kind == RENAME and new in self.files):
                return status(4, b"failure")
            self.files[new] = self.files.pop(old)
            return status(OK)
        return status(OK)  # CLOSE, MKDIR

    def fault(self, kind: int, body: bytes, *, versioned: bool = True) -> bytes:
        f = self.faults.pop(0) if self.faults else ("none",)
        op = f[0]
        if op == "type":
            kind = f[1]
        elif op == "id" and versioned:
            body = u32(f[1]) + body[4:]
        elif op == "truncate":
            body = body[:f[1]]
        elif op == "append":
            body += f[1]
        elif op == "flip" and body:
            i = f[1] % len(body)
            body = body[:i] + bytes([body[i] ^ (1 << f[2])]) + body[i + 1:]
        elif op == "u32" and len(body) >= 4:
            i = f[1] % (len(body) - 3)
            body = body[:i] + u32(f[2]) + body[i + 4:]
        elif op == "name" and kind == NAME:  # the first entry's name replaced (not UTF-8?)
            n = struct.unpack(">I", body[8:12])[0]
            body = body[:8] + string(f[1]) + body[12 + n:]
        elif op == "attrs" and kind in (NAME, ATTRS):  # flags with extensions and a count
            at = body.find(u32(0x1 | 0x4))
            if at >= 0:
                body = body[:at] + u32(f[1]) + u32(f[2]) + body[at + 4:]
        elif op == "more" and kind == DATA:  # more data than asked for
            n = struct.unpack(">I", body[4:8])[0]
            body = body[:4] + string(body[8:8 + n] + b"m" * f[1])
        elif op == "status" and kind == STATUS:
            body = body[:4] + u32(f[1]) + string(f[2])
        packet = bytes([kind]) + body
        if kind == ATTRS and len(body) >= 16 and struct.unpack(">I", body[4:8])[0] & 0x1:
            self.sizes.append(struct.unpack(">Q", body[8:16])[0])
        if op == "length":
            return (u32(f[1]) if f[2] else u32(len(packet))) + packet[:f[1] or None]
        return u32(len(packet)) + packet


class _Conn:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.sftp = SFTPClient(server)

    @property
    def alive(self) -> bool:
        return not self.server.closed

    def close(self) -> None:
        self.server.close()


class Store(sftp.SFTPStore):
    """The real store, its connection the fake server."""

    def __init__(self, faults: list[tuple[Any, ...]]) -> None:
        super().__init__(sftp.SFTPTarget("repo.example", "dev", Path("/nonexistent/key"),
                                         Path("/nonexistent/known_hosts"), root="r",
                                         connections=1, attempts=1, backoff=0,
                                         read_processes=False))
        self.server = FakeServer(faults)

    def _connection(self, op: str, path: str) -> Any:
        return _Conn(self.server)


def operate(store: Store, op: Callable[[Store], Any]) -> Any:
    async def go() -> Any:
        async with store:
            return await op(store)
    return asyncio.run(go())


OPS: dict[str, Callable[[Store], Any]] = {
    "list": lambda s: s.list("images"),
    "get": lambda s: s.get("images/b"),
    "get-range": lambda s: s.get("images/a", 100, 100),
    "check": lambda s: s.check(),
    "delete": lambda s: s.delete("images/a"),
    "put": lambda s: s.put_atomic("images/new", b"n" * 5000, exclusive=True),
}


def sane(name: str, result: object, server: FakeServer) -> None:
    """What a successful operation may return, whatever the server said: a read is never
    longer than the size the server gave for the file (nor than asked for)."""
    if isinstance(result, VMClientError):
        return
    if name == "list":
        assert isinstance(result, list)
        for e in result:
            assert isinstance(e, sftp.Entry) and isinstance(e.path, str) and e.size >= 0
    elif name == "get":
        assert isinstance(result, bytes) and len(result) <= max(server.sizes, default=0)
    elif name == "get-range":
        assert isinstance(result, bytes) and len(result) <= 100
    else:
        assert result is None


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_operation_works_against_the_fake_server(name: str) -> None:
    store = Store([])
    result = operate(store, OPS[name])
    expected = {"list": [sftp.Entry("images/a", 1024), sftp.Entry("images/b", 300_000),
                         sftp.Entry("images/sub/c", 10)],
                "get": FILES["r/images/b"], "get-range": FILES["r/images/a"][100:200]}
    assert result == expected.get(name)
    if name == "put":
        assert store.server.files["r/images/new"] == b"n" * 5000


@given(st.sampled_from(sorted(OPS)), st.lists(FAULTS, max_size=12))
@example("check", [("truncate", 0)])  # a VERSION answer without a version: struct.error
@example("list", [("none",), ("none",), ("name", b"\xff")])  # UnicodeDecodeError
@example("list", [("none",)] * 3 + [("status", 4, b"\xff")])  # ditto, in a status
@example("list", [("none",), ("none",), ("type", ATTRS)])  # SFTPError escaped the store
@example("get", [("none",)] * 3 + [("more", 1)])  # a read answered with 1 byte too many
@example("get-range", [("none",)] * 3 + [("type", 201)])  # data parsed as a status text:
# UnicodeDecodeError
@example("get", [("none",), ("none",), ("flip", 48, 0), ("none",), ("more", 1)])  # a size
# of 2**56 + 300000, then 1 byte more than the file at its end: a short answer, allowed
def test_answers_with_faults(name: str, faults: list[tuple[Any, ...]]) -> None:
    store = Store(faults)
    sane(name, outcome(operate, store, OPS[name]), store.server)


@pytest.mark.parametrize("fault", [("u32", 4, 1000), ("attrs", 0x80000005, 1000)],
                         ids=["entries", "extensions"])
def test_a_listing_that_claims_more_than_it_holds_is_refused(fault: tuple[Any, ...]) -> None:
    """paramiko trusts the counts: 1000 entries (or attribute extensions) claimed in a
    packet holding 3 were read as zeros; 2**32 of them kept it looping for hours."""
    err = outcome(operate, Store([("none",), ("none",), fault]), OPS["list"])
    assert isinstance(err, sftp.RemoteUnavailable)
    assert "malformed SFTP answer" in str(err) and "list of 'images'" in str(err)

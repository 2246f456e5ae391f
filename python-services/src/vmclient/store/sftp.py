"""A :class:`~vmclient.store.remote.RemoteStore` over SFTP (paramiko).

One SSH key per device and a pinned host key (a ``known_hosts`` file named in
the configuration; an unknown or changed host key is refused, never added).
paramiko is blocking, so every call runs in a small thread pool of its own:
one worker thread per SSH connection, each worker keeping its connection, so
``connections`` requests are in flight at once (the callers issue them
concurrently, e.g. :meth:`ChunkStore.fetch` with ``concurrency``).  Reads
(``get``, ``list``, ``check``) and writes (``put_atomic``, ``delete``) go through the
worker's *reader process* (:mod:`.sftp_reader`, unless ``read_processes`` is
off), which holds a connection of its own: paramiko's transport work then runs
outside this process's GIL, beside the opening or sealing of chunks.  Under paramiko sits a
leaner receive path (:mod:`.sftp_wire`) and a leaner send path for writes
(:mod:`.sftp_write`: AES-GCM ``CHANNEL_DATA`` packets built with one copy of
the data; paramiko's own send path for other ciphers or with ``lean_writes``
off).  Either way every write's acknowledgement is checked: a write the
server fails (a full disk) raises :class:`RemoteRefused` naming the path, and
the temporary file is not renamed into place.

Tuning (FIELD-NOTES, "SFTP over loopback"): cipher ``aes256-gcm@openssh.com``
first, read/write requests of 255 KiB (``SFTPFile.MAX_REQUEST_SIZE``, a class
attribute: set process-wide when the first connection opens), writes
pipelined 64 requests deep (:mod:`.sftp_write`), the default maximum packet
size.

Atomic put: the object is written to a hidden temporary name (``.tmp-*``) in
the target directory, then renamed: ``posix-rename@openssh.com`` to replace,
the plain SFTP ``rename`` (which fails if the target exists) for exclusive
creation.  Nothing is fsync'ed on the server: paramiko has no public call for
``fsync@openssh.com`` (repository-format.md §8.1, "What durable means").
Transfers resume: a dropped connection is re-opened (bounded attempts with
back-off) and a read continues at the offset it reached, a write continues at
the size the temporary file has on the server.  After the last
attempt the error names the host, the path and the operation.  What the server
*answers* (no such file, permission denied) is not retried.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import json
import logging
import os
import posixpath
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

from ..errors import DBUS_ERROR_PREFIX, EXIT_NOPERM, EXIT_UNAVAILABLE
from . import sftp_write
from .errors import LocalSyncError, ObjectNotFound, StoreError
from .remote import TMP_PREFIX, Entry, LockingMixin, check_path, temporary_name
from .sftp_reader import Reader, ReaderGone
from .sftp_wire import Received, SFTPClient

log = logging.getLogger(__name__)

CIPHER = "aes256-gcm@openssh.com"
REQUEST_SIZE = 255 << 10  # per SFTP read/write request (FIELD-NOTES)
WRITE_BLOCK = 1 << 20  # pipelined writes of this size
READ_IN_FLIGHT = 64  # pipelined read requests per connection (64 x 255 KiB)

T = TypeVar("T")


class RemoteUnavailable(StoreError):
    """SFTP {} of {!r} on {} failed after {} attempt(s): {}"""

    exit_code = EXIT_UNAVAILABLE
    dbus_name = DBUS_ERROR_PREFIX + "RemoteUnavailable"

    def __init__(self, op: str, path: str, server: str, attempts: int, problem: object) -> None:
        super().__init__(op, path, server, attempts, problem)
        self.op, self.path, self.server = op, path, server


class RemoteRefused(StoreError):
    """SFTP server {} refused {} of {!r}: {}"""

    exit_code = EXIT_NOPERM
    dbus_name = DBUS_ERROR_PREFIX + "RemoteRefused"

    def __init__(self, server: str, op: str, path: str, problem: object) -> None:
        super().__init__(server, op, path, problem)
        self.op, self.path, self.server = op, path, server


# One connection per core, at most 4: each needs about a core while it transfers (paramiko
# is Python), so more connections than cores only contend (with reader processes, 1, 2
# and 3 connections all gave 0.66-0.68 of OpenSSH's download rate on a 2-core machine).
DEFAULT_CONNECTIONS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class SFTPTarget:
    """Where a repository is and how to log in (the device's key, the pinned host key)."""

    host: str
    user: str
    key_file: Path
    known_hosts: Path
    port: int = 22
    root: str = ""  # directory holding the repository on the server ("" = login directory)
    connections: int = DEFAULT_CONNECTIONS
    attempts: int = 4
    timeout: float = 30.0
    backoff: float = 0.5  # seconds before the 2nd attempt, doubled for each further one
    read_processes: bool = True  # reads and writes in reader processes (sftp_reader)
    lean_writes: bool = True  # writes sent by sftp_write where it applies (else by paramiko)

    @property
    def server(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class _Connection:
    def __init__(self, target: SFTPTarget, pkey: paramiko.PKey, host_keys: paramiko.HostKeys
                 ) -> None:
        paramiko.SFTPFile.MAX_REQUEST_SIZE = REQUEST_SIZE
        self.transport: paramiko.Transport | None = None
        sock = socket.create_connection((target.host, target.port), timeout=target.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # default window and packet size: larger windows measured slower (FIELD-NOTES)
            self.transport = paramiko.Transport(sock)
            opts = self.transport.get_security_options()
            opts.ciphers = (CIPHER, *(c for c in opts.ciphers if c != CIPHER))
            pinned = host_keys.lookup(target.known_hosts_name)
            if pinned is None:
                raise RemoteRefused(target.server, "connect", target.root or ".",
                                    f"its host key is not in {target.known_hosts}")
            opts.key_types = tuple(t for t in opts.key_types if t in pinned) or tuple(pinned)
            self.transport.start_client(timeout=target.timeout)
            key = self.transport.get_remote_server_key()
            if not host_keys.check(target.known_hosts_name, key):
                raise RemoteRefused(target.server, "connect", target.root or ".",
                                    f"its {key.get_name()} host key does not match the one "
                                    f"pinned in {target.known_hosts}")
            self.transport.auth_publickey(target.user, pkey)
            self.sftp = SFTPClient.over(self.transport)
            channel = self.sftp.get_channel()
            if channel is not None:
                channel.settimeout(target.timeout)
            self.sftp.writer = sftp_write.writer(self.sftp, REQUEST_SIZE,
                                                 lean=target.lean_writes)
        except BaseException:
            self.close()
            sock.close()
            raise

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SFTPStore(LockingMixin):
    """The repository at ``target`` (see :class:`SFTPTarget`)."""

    def __init__(self, target: SFTPTarget,
                 clock: Callable[[], int] = lambda: int(time.time())) -> None:
        self.target = target
        self.clock = clock
        self._pkey: paramiko.PKey | None = None
        self._host_keys: paramiko.HostKeys | None = None
        self._local = threading.local()
        self._conns: builtins.list[_Connection] = []
        self._readers: builtins.list[Reader] = []
        self._lock = threading.Lock()
        self._dirs: set[str] = set()
        self._executor = ThreadPoolExecutor(max_workers=max(1, target.connections),
                                            thread_name_prefix="vmclient-sftp")
        self.reconnects = 0  # how often a dropped connection was re-opened
        self.resumed_bytes = 0  # bytes of interrupted reads not read again
        self.resumed_upload_bytes = 0  # bytes of interrupted writes not written again

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SFTPStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        self.shutdown()

    def shutdown(self) -> None:
        """Close every connection and reader (no request may be running)."""
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    async def check(self) -> None:
        """Connect now (and fail now) rather than at the first request."""
        await self._read("check")

    # --- the RemoteStore operations ----------------------------------------------------------

    async def list(self, prefix: str) -> builtins.list[Entry]:
        """Listed by the reader (its connection is up already when a download lists)."""
        listing = json.loads(await self._read("list", check_path(prefix)))
        return [Entry(path, size) for path, size in listing]

    def _list_here(self, base: str) -> bytes:
        """The listing as JSON ``[[path, size], ...]`` (what a reader sends back)."""

        def walk(sftp: paramiko.SFTPClient) -> builtins.list[Entry]:
            out: builtins.list[Entry] = []
            todo = [base]
            while todo:
                rel = todo.pop()
                try:
                    attrs = sftp.listdir_attr(self._remote(rel))
                except FileNotFoundError:
                    continue
                for a in attrs:
                    if a.filename.startswith("."):
                        continue
                    child = f"{rel}/{a.filename}"
                    if stat.S_ISDIR(a.st_mode or 0):
                        todo.append(child)
                    else:
                        out.append(Entry(child, a.st_size or 0))
            return sorted(out, key=lambda e: e.path)

        return json.dumps([[e.path, e.size] for e in self._call("list", base, walk)]).encode()

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self._read("get", check_path(path), offset, length)

    async def _read(self, op: str, *args: object, payload: bytes | None = None) -> bytes:
        """``serve_read(op, *args[, payload])`` in this thread's reader process (or in the
        thread).  A ``payload`` (a put's bytes) travels to the reader as it is, not pickled."""
        loop = asyncio.get_running_loop()
        if not self.target.read_processes:
            if payload is not None:
                args = (*args, payload)
            return await loop.run_in_executor(self._executor, self.serve_read, op, *args)
        return await loop.run_in_executor(self._executor, self._read_in_reader, op, args,
                                          payload)

    def _read_in_reader(self, op: str, args: tuple[object, ...], payload: bytes | None = None
                        ) -> bytes:
        """The read in this thread's reader; one that died is replaced and asked again."""
        for attempt in range(2):
            reader: Reader | None = getattr(self._local, "reader", None)
            if reader is None or not reader.alive:
                reader = self._local.reader = Reader(self.target)
                with self._lock:
                    self._readers.append(reader)
            try:
                data, reconnects, resumed, resumed_up = reader.call(op, *args, payload=payload)
            except ReaderGone:
                self._drop_reader(reader)
                if attempt:
                    raise
                log.warning("SFTP %s: the read process for %s ended; starting another",
                            self.target.server, args[0] if args else op)
                continue
            self.reconnects += reconnects
            self.resumed_bytes += resumed
            self.resumed_upload_bytes += resumed_up
            return data
        raise AssertionError("unreachable")

    def _drop_reader(self, reader: Reader) -> None:
        reader.close()
        self._local.reader = None
        with self._lock:
            if reader in self._readers:
                self._readers.remove(reader)

    def serve_read(self, op: str, *args: object, into: Received | None = None) -> bytes:
        """A request in this process: ``("get", path, offset, length)``, ``("list",
        prefix)`` (JSON, see :meth:`_list_here`), ``("check",)`` (connect), ``("delete",
        path)`` or ``("put", path, exclusive, data)`` (:meth:`put_atomic`; answers
        nothing; ``data`` may be a view of a buffer the caller reuses: nothing keeps it
        after the call).

        ``into`` receives a get's bytes as they arrive (a reader streams them on).
        """
        if op == "put":
            path, exclusive, data = args
            assert isinstance(path, str) and isinstance(data, bytes | memoryview)
            self._put_here(path, data, exclusive=bool(exclusive))
            return b""
        if op == "check":
            self._call("connect", self.target.root or ".", lambda sftp: sftp.normalize("."))
            return b""
        if op == "list":
            assert isinstance(args[0], str)
            return self._list_here(args[0])
        if op == "delete":
            assert isinstance(args[0], str)
            self._delete_here(args[0])
            return b""
        if op == "rename":
            src, dst = args
            assert isinstance(src, str) and isinstance(dst, str)
            self._rename_here(src, dst)
            return b""
        if op == "sweep":
            prefix, older_than, recursive, names = args
            assert isinstance(prefix, str) and (older_than is None or isinstance(older_than, int))
            assert isinstance(names, str)
            return str(self._sweep_here(prefix, older_than, bool(recursive), names)).encode()
        path, offset, length = args
        assert isinstance(path, str) and isinstance(offset, int)
        assert length is None or isinstance(length, int)
        buf = Received() if into is None else into  # survives a reconnect: the next
        remote = self._remote(path)  # attempt continues after what it holds

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(remote, "rb") as f:
                size = f.stat().st_size or 0
                end = size if length is None else min(size, offset + length)
                buf.begin(end - offset)
                self.resumed_bytes += buf.size
                _pipelined_read(sftp, f.handle, offset + buf.size, end, buf)
            return buf.join()

        return self._call("get", path, read)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Written by the reader process like a read (paramiko's transport work off this
        process's GIL, beside the sealing of the next packs), else in the thread."""
        await self._read("put", check_path(path), exclusive, payload=bytes(data))

    def _put_here(self, path: str, data: bytes | memoryview, *, exclusive: bool) -> None:
        final = self._remote(path)
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, temporary_name(path))
        state = {"written": False}

        def put(sftp: paramiko.SFTPClient) -> None:
            if not state["written"]:
                self._upload(sftp, tmp, parent, data)
                state["written"] = True
            elif not _exists(sftp, tmp) and _size(sftp, final) == len(data):
                return  # the rename went through just before the connection dropped
            try:
                if exclusive:
                    sftp.rename(tmp, final)
                else:
                    sftp.posix_rename(tmp, final)
            except OSError:
                if exclusive and _exists(sftp, final):
                    _remove(sftp, tmp)
                    raise LocalSyncError(f"repository object exists: {path}") from None
                raise

        self._call("put", path, put)

    def _upload(self, sftp: paramiko.SFTPClient, tmp: str, parent: str,
                data: bytes | memoryview) -> None:
        """Write ``data`` to ``tmp``, continuing a partial file left by a dropped connection."""
        start = _size(sftp, tmp)
        if start is None or start > len(data):
            try:
                f = sftp.open(tmp, "wb")
            except FileNotFoundError:
                self._makedirs(sftp, parent)
                f = sftp.open(tmp, "wb")
            start = 0
        else:
            f = sftp.open(tmp, "r+b")
            f.seek(start)
            self.resumed_upload_bytes += start
        with f:
            view = memoryview(data)
            writer = getattr(sftp, "writer", None)
            if isinstance(writer, sftp_write.Writer):
                writer.write(f.handle, start, view[start:])
                return
            f.set_pipelined(True)  # (paramiko without sftp_write's hooks: it drops the
            for off in range(start, len(data), WRITE_BLOCK):  # answers, so check the size)
                f.write(bytes(view[off:off + WRITE_BLOCK]))
        stored = _size(sftp, tmp)
        if stored != len(data):
            raise OSError(f"the server stored {stored} of {len(data)} bytes")

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        missing = []
        while directory not in ("", "/", ".") and directory not in self._dirs:
            if _exists(sftp, directory):
                break
            missing.append(directory)
            directory = posixpath.dirname(directory)
        for d in reversed(missing):
            try:
                sftp.mkdir(d)
            except OSError:
                if not _exists(sftp, d):
                    raise
            self._dirs.add(d)

    async def delete(self, path: str) -> None:
        """Removed by the reader, whose connection is up (a connection of this thread's own
        would cost an SSH handshake for one request: a sync ends with one delete)."""
        await self._read("delete", check_path(path))

    def _delete_here(self, path: str) -> None:
        remote = self._remote(path)

        def remove(sftp: paramiko.SFTPClient) -> None:
            _remove(sftp, remote)

        self._call("delete", path, remove)

    async def rename(self, path: str, new: str) -> None:
        """The plain SFTP ``rename`` (OpenSSH: ``link`` + ``unlink``): fails if ``new``
        exists, :class:`ObjectNotFound` if ``path`` does not; ``new``'s directory is made
        if need be."""
        await self._read("rename", check_path(path), check_path(new))

    def _rename_here(self, path: str, new: str) -> None:
        src, dst = self._remote(path), self._remote(new)

        def rename(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.rename(src, dst)
            except FileNotFoundError:
                if _exists(sftp, src):  # no directory for dst yet (a lock's set-aside one)
                    self._makedirs(sftp, posixpath.dirname(dst))
                    sftp.rename(src, dst)
                    return
                raise
            except OSError:
                if _exists(sftp, dst):
                    raise LocalSyncError(f"repository object exists: {new}") from None
                if not _exists(sftp, src):
                    raise FileNotFoundError(errno.ENOENT, "no such file", src) from None
                raise

        self._call("rename", path, rename)

    async def sweep_temporaries(self, prefix: str, older_than: int | None = 3600, *,
                                recursive: bool = True, names: str = TMP_PREFIX) -> int:
        """Remove temporary files a crash left below ``prefix`` (all of them if
        ``older_than`` is None: the caller holds that directory's lock; only those
        directly in it if not ``recursive``; only those whose name begins with
        ``names``, e.g. a lock's); how many.  Ones this account may not remove
        (another writer's) are left."""
        if not names.startswith(TMP_PREFIX):
            raise LocalSyncError(f"not a prefix of temporary file names: {names!r}")
        return int(await self._read("sweep", check_path(prefix), older_than, recursive, names))

    def _sweep_here(self, base: str, older_than: int | None, recursive: bool,
                    names: str = TMP_PREFIX) -> int:
        def sweep(sftp: paramiko.SFTPClient) -> int:
            found: builtins.list[tuple[str, int]] = []
            todo = [self._remote(base)]
            while todo:
                d = todo.pop()
                try:
                    attrs = sftp.listdir_attr(d)
                except FileNotFoundError:
                    continue
                for a in attrs:
                    full = posixpath.join(d, a.filename)
                    if stat.S_ISDIR(a.st_mode or 0):
                        if recursive:
                            todo.append(full)
                    elif a.filename.startswith(names):
                        found.append((full, a.st_mtime or 0))
            if older_than is not None:  # (by this host's clock against the server's mtimes)
                cutoff = time.time() - older_than
                found = [(f, m) for f, m in found if m < cutoff]
            removed = 0
            for full, _m in found:
                try:
                    _remove(sftp, full)
                    removed += 1
                except PermissionError:
                    pass
            return removed

        return self._call("sweep", base, sweep)

    # --- connections, retries and error translation -------------------------------------------

    def _remote(self, path: str) -> str:
        return posixpath.join(self.target.root, path) if self.target.root else path

    async def _run(self, op: str, path: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, op, path, fn)

    def _call(self, op: str, path: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        t = self.target
        problem: BaseException | None = None
        for attempt in range(t.attempts):
            if attempt:
                time.sleep(t.backoff * 2 ** (attempt - 1))
            try:
                conn = self._connection(op, path)
            except paramiko.SFTPError as exc:  # its answer to the SFTP version exchange
                raise RemoteUnavailable(op, path, t.server, attempt + 1,
                                        f"malformed SFTP answer: {exc}") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.info("SFTP %s: connecting failed (attempt %d/%d): %s", t.server,
                         attempt + 1, t.attempts, exc)
                problem = exc
                continue
            try:
                return fn(conn.sftp)
            except paramiko.SFTPError as exc:  # an answer paramiko or sftp_wire cannot parse:
                self._drop(conn)  # the server is broken (or hostile), not the connection
                raise RemoteUnavailable(op, path, t.server, attempt + 1,
                                        f"malformed SFTP answer: {exc}") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if _answered(conn, exc):
                    self._translate(op, path, exc)  # the server answered: not retried
                log.info("SFTP %s: connection lost during %s of %s (attempt %d/%d): %s",
                         t.server, op, path, attempt + 1, t.attempts, exc)
                self._drop(conn)
                self.reconnects += 1
                problem = exc
        assert problem is not None
        raise RemoteUnavailable(op, path, t.server, t.attempts,
                                f"{type(problem).__name__}: {problem}") from problem

    def _translate(self, op: str, path: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(path) from exc
        if isinstance(exc, PermissionError):
            raise RemoteRefused(self.target.server, op, path, "permission denied") from exc
        raise RemoteRefused(self.target.server, op, path,
                            f"{type(exc).__name__}: {exc}") from exc

    def _connection(self, op: str, path: str) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.alive:
            return conn
        if conn is not None:
            self._drop(conn)
            self.reconnects += 1
        t = self.target
        try:
            if self._pkey is None:
                self._pkey = paramiko.PKey.from_path(t.key_file)
            if self._host_keys is None:
                self._host_keys = paramiko.HostKeys(str(t.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise LocalSyncError(f"cannot load the SSH key {t.key_file} or known hosts "
                                 f"{t.known_hosts}: {exc}") from exc
        try:
            conn = _Connection(t, self._pkey, self._host_keys)
        except paramiko.AuthenticationException as exc:
            if "transport shut down" in str(exc):  # the connection dropped during the
                raise EOFError(f"connection lost while authenticating: {exc}") from exc
            raise RemoteRefused(t.server, op, path,  # the server said no: do not retry
                                f"authentication with {t.key_file} failed: {exc}") from exc
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)


class _Responses:
    """Collects the answers to pipelined reads (paramiko calls ``_async_response``)."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.data: dict[int, bytes | memoryview] = {}
        self.eof: set[int] = set()
        self.error: BaseException | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        if t == CMD_DATA:  # the data as a view into the packet: no copy
            n = msg.get_int()
            start = msg.packet.tell()
            self.data[num] = memoryview(msg.asbytes())[start:start + n]
            return
        if t != CMD_STATUS:  # (not to be parsed as a status: its text may not decode)
            self.error = paramiko.SFTPError(f"unexpected SFTP answer {t} to a read")
            return
        try:
            self.sftp._convert_status(msg)  # raises for an error status
            self.error = OSError(f"unexpected SFTP answer {t} to a read")
        except EOFError:
            self.eof.add(num)
        except OSError as exc:
            self.error = exc


def _pipelined_read(sftp: paramiko.SFTPClient, handle: bytes, start: int, end: int,
                    buf: Received) -> None:
    """Append bytes ``[start, end)`` of an open file to ``buf``, READ_IN_FLIGHT requests deep.

    Done here, not with ``SFTPFile.readv``: readv sends its requests from a
    thread of its own, which dies with a traceback on stderr when the
    connection drops under it.  This uses paramiko's request/response plumbing
    (``_async_request``/``_read_response``, the calls readv makes in the pinned
    paramiko 4.0) from the calling thread.  ``buf`` grows in order, so a caller
    that retries after a drop continues at ``start + buf.size``.  End of file
    (the object shrank since ``stat``) ends the read there; a short answer
    (allowed by the protocol) is continued with new requests.
    """
    answers = _Responses(sftp)
    window: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
    pos = start
    while pos < end or window:
        while pos < end and len(window) < READ_IN_FLIGHT:
            n = min(REQUEST_SIZE, end - pos)
            num = sftp._async_request(answers, CMD_READ, handle, int64(pos), n)
            window.append((num, pos, n))
            pos += n
        num, off, n = window.popleft()
        while num not in answers.data and num not in answers.eof and answers.error is None:
            sftp._read_response()
        if answers.error is not None:
            raise answers.error
        data = answers.data.pop(num, b"")
        if len(data) > n:  # the rest would land at the wrong offsets
            raise paramiko.SFTPError(f"{len(data)} bytes answered to a read of {n}")
        buf.extend(data)
        if not data:  # end of file
            return
        if len(data) < n:  # a short answer: ask again from where it stopped
            pos = off + len(data)
            window.clear()  # (their answers arrive later and are ignored)
            answers.data.clear()


def _answered(conn: _Connection, exc: BaseException) -> bool:
    """Did the server answer with an error status (rather than the connection dying)?

    paramiko maps SFTP statuses to ``OSError`` with an errno (no such file,
    permission denied) or without one (a generic failure); a closed channel
    also raises a bare ``OSError``, a moment before the transport notices, so
    for those the transport gets that moment.
    """
    if isinstance(exc, EOFError | TimeoutError | ConnectionError | paramiko.SSHException):
        return False
    if isinstance(exc, OSError) and exc.errno is None:
        time.sleep(0.05)
    return conn.alive


def _size(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        return sftp.stat(path).st_size or 0
    except FileNotFoundError:
        return None


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    return _size(sftp, path) is not None


def _remove(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT and not isinstance(exc, FileNotFoundError):
            raise

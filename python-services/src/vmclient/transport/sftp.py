"""A :class:`~vmclient.store.remote.RemoteStore` over SFTP through OpenSSH's ``ssh``.

SSH itself is OpenSSH's (:mod:`.ssh`: one ``ssh -s <host> sftp`` process per
connection, host key pinned, the device's key file); SFTP is a small pipelined
client (:mod:`.sftp_client` over the pure :mod:`.sftp_codec`).  Requests run
in :mod:`.sftp_pool`'s worker threads, one connection (one ssh process) each.

Atomic put (repository-format.md §8.1, "What durable means per transport"): the
object is written to a hidden temporary name (``.tmp-*``) in its directory,
``fsync@openssh.com`` makes the bytes durable on the server, the handle is
closed, and only then is it renamed into place — ``posix-rename@openssh.com``
to replace, the plain SFTP ``rename`` (fails if the target exists) for
exclusive creation.  A server without ``fsync@openssh.com`` gets the renames
without the fsync, and a warning in the log once per store.

Transfers resume: a dropped connection is re-opened (bounded attempts with
back-off, :mod:`.sftp_pool`) and a read continues at the offset it reached, a
write at the size the temporary file has on the server.  After the last attempt
the error names the host, the path and the operation.  What the server *answers*
(no such file, permission denied) and what ssh refuses (host key, authentication)
is not retried.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import posixpath
import stat
import time
from collections.abc import Callable

from ..store.errors import LocalSyncError, ObjectNotFound
from ..store.remote import TMP_PREFIX, Entry, LockingMixin, check_path, temporary_name
from . import sftp_codec as c
from .sftp_client import Connection, Into, Reopen
from .sftp_listing import listdir, listdirs
from .sftp_pool import ConnectionPool
from .ssh import CIPHER
from .target import DEFAULT_CONNECTIONS, RemoteRefused, RemoteUnavailable, SFTPTarget

log = logging.getLogger(__name__)

NO_STAT_READ = 16 << 20  # a ranged read up to this long skips the fstat round trip
__all__ = ["CIPHER", "DEFAULT_CONNECTIONS", "RemoteRefused", "RemoteUnavailable", "SFTPStore",
           "SFTPTarget"]


class SFTPStore(ConnectionPool, LockingMixin):
    """The repository at ``target`` (see :class:`SFTPTarget`)."""

    def __init__(self, target: SFTPTarget,
                 clock: Callable[[], int] = lambda: int(time.time())) -> None:
        super().__init__(target)
        self.clock = clock
        self._dirs: set[str] = set()
        self._warned_fsync = False
        self.resumed_bytes = 0  # bytes of interrupted reads not read again
        self.resumed_upload_bytes = 0  # bytes of interrupted writes not written again

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SFTPStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def check(self) -> None:
        """Connect now (and fail now) rather than at the first request."""
        await self._run("connect", self.target.root or ".",
                        lambda conn: conn.realpath(self.target.root or "."))

    # --- the RemoteStore operations ----------------------------------------------------------

    async def list(self, prefix: str) -> builtins.list[Entry]:
        base = check_path(prefix)

        def walk(conn: Connection) -> builtins.list[Entry]:
            """Level by level, each level's directories listed at once (a pack store
            has a directory per leading byte of the packs' names)."""
            out: builtins.list[Entry] = []
            level = [base]
            while level:
                below = []
                listings = listdirs(conn, [self._remote(rel) for rel in level])
                for rel, names in zip(level, listings, strict=True):
                    if isinstance(names, FileNotFoundError):
                        continue
                    if isinstance(names, OSError):
                        raise names
                    for n in names:
                        if n.filename.startswith("."):
                            continue
                        child = f"{rel}/{n.filename}"
                        if stat.S_ISDIR(n.attrs.mode or 0):
                            below.append(child)
                        else:
                            out.append(Entry(child, n.attrs.size or 0))
                level = below
            return sorted(out, key=lambda e: e.path)

        return await self._run("list", base, walk)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        remote = self._remote(check_path(path))
        # survives a reconnect: the next attempt goes on; the pieces as they were received,
        # joined once at the end
        parts: builtins.list[bytes] = []
        got = [0]

        def sink(data: bytes) -> None:
            parts.append(data)
            got[0] += len(data)

        def read(conn: Connection) -> bytes:
            handle = conn.open(remote, c.READ_FLAG)
            if length is not None and length <= NO_STAT_READ:
                end = offset + length  # (a shorter file ends the read at its end)
            else:  # the size first: no read requests far past the end
                try:
                    size = conn.fstat(handle, path).size or 0
                except OSError:
                    conn.close_handle(handle, path)
                    raise
                end = size if length is None else min(size, offset + length)
            self.resumed_bytes += got[0]
            _read(conn, remote, handle, offset + got[0], end, sink, path)
            return b"".join(parts)

        return await self._run("get", path, read)

    async def get_range(self, path: str, offset: int, length: int,
                        into: bytearray | None = None) -> bytearray | memoryview:
        """Bytes ``[offset, offset + length)`` (fewer if the object ends first), each
        answer's payload received into its place in the buffer returned: no copy in
        Python (:class:`~vmclient.store.remote.RangeReader`: a pack's ranged reads).
        ``into`` (at least ``length`` bytes): received there instead of a new buffer (a
        view of it is returned), so a buffer is not zero-filled again for each range."""
        remote = self._remote(check_path(path))
        if into is not None and len(into) < length:
            raise ValueError(f"a buffer of {len(into)} bytes for a read of {length}")
        held: builtins.list[tuple[bytearray, Into]] = []  # survives a reconnect: goes on there

        def read(conn: Connection) -> None:
            if not held:  # (allocated and zeroed in this worker, not on the event loop)
                buf = bytearray(length) if into is None else into
                held.append((buf, Into(memoryview(buf)[:length], offset)))
            target = held[0][1]
            handle = conn.open(remote, c.READ_FLAG)
            self.resumed_bytes += target.received
            _read(conn, remote, handle, offset + target.received, offset + length, target,
                  path)

        await self._run("get", path, read)
        buf, target = held[0]
        if into is not None:
            return target.view[:target.received]
        # ended first: a copy, not a resize (which a view in an old traceback would refuse)
        return buf if target.received == length else buf[:target.received]

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        final = self._remote(check_path(path))
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, temporary_name(path))
        view = memoryview(data)
        state = {"started": False, "written": False}

        def put(conn: Connection) -> None:
            if not state["written"]:
                resume, state["started"] = state["started"], True
                self._upload(conn, tmp, parent, view, path, resume=resume)
                state["written"] = True
            elif conn.stat(tmp) is None and _size(conn, final) == len(view):
                return  # the rename went through just before the connection dropped
            try:
                if exclusive:
                    conn.rename(tmp, final)
                elif conn.can_posix_rename:
                    conn.posix_rename(tmp, final)
                else:
                    raise RemoteRefused(self.target.server, "put", path,
                                        f"the server lacks {c.POSIX_RENAME}")
            except OSError:
                if exclusive and conn.stat(final) is not None:
                    _remove(conn, tmp)
                    raise LocalSyncError(f"repository object exists: {path}") from None
                raise

        await self._run("put", path, put)

    def _upload(self, conn: Connection, tmp: str, parent: str, data: memoryview,
                path: str, *, resume: bool) -> None:
        """Write ``data`` to ``tmp`` (on a ``resume``, continuing the partial file a dropped
        connection left), fsync it on the server, close it."""
        start = _size(conn, tmp) if resume else None
        if start is None or start > len(data):
            flags = c.WRITE_FLAG | c.CREAT | c.TRUNC
            try:
                handle = conn.open(tmp, flags)
            except FileNotFoundError:
                self._makedirs(conn, parent)
                handle = conn.open(tmp, flags)
            start = 0
        else:
            handle = conn.open(tmp, c.WRITE_FLAG)
            self.resumed_upload_bytes += start
        try:
            conn.write(handle, start, data[start:], path)
            if conn.can_fsync:
                conn.fsync(handle, path)
            elif not self._warned_fsync:
                self._warned_fsync = True
                log.warning("SFTP %s does not offer %s: objects are renamed into place "
                            "without being synced to its disk first (a server crash may "
                            "lose or truncate the latest objects)", self.target.server,
                            c.FSYNC)
        finally:
            conn.close_handle(handle, path)

    def _makedirs(self, conn: Connection, directory: str) -> None:
        missing = []
        while directory not in ("", "/", ".") and directory not in self._dirs:
            if conn.stat(directory) is not None:
                break
            missing.append(directory)
            directory = posixpath.dirname(directory)
        for d in reversed(missing):
            try:
                conn.mkdir(d)
            except OSError:
                if conn.stat(d) is None:
                    raise
            self._dirs.add(d)

    async def delete(self, path: str) -> None:
        remote = self._remote(check_path(path))
        await self._run("delete", path, lambda conn: _remove(conn, remote))

    async def rename(self, path: str, new: str) -> None:
        """The plain SFTP ``rename`` (OpenSSH: ``link`` + ``unlink``): fails if ``new``
        exists, :class:`ObjectNotFound` if ``path`` does not; ``new``'s directory is made
        if need be."""
        src, dst = self._remote(check_path(path)), self._remote(check_path(new))

        def rename(conn: Connection) -> None:
            try:
                conn.rename(src, dst)
            except FileNotFoundError:
                if conn.stat(src) is not None:  # no directory for dst yet (a lock's set-aside one)
                    self._makedirs(conn, posixpath.dirname(dst))
                    conn.rename(src, dst)
                    return
                raise
            except OSError:
                if conn.stat(dst) is not None:
                    raise LocalSyncError(f"repository object exists: {new}") from None
                if conn.stat(src) is None:
                    raise ObjectNotFound(path) from None
                raise

        await self._run("rename", path, rename)

    async def sweep_temporaries(self, prefix: str, older_than: int | None = 3600, *,
                                recursive: bool = True, names: str = TMP_PREFIX) -> int:
        """Remove temporary files a crash left below ``prefix`` (all of them if
        ``older_than`` is None: the caller holds that directory's lock; only those
        directly in it if not ``recursive``; only those whose name begins with
        ``names``, e.g. a lock's); how many.  Ones this account may not remove
        (another writer's) are left."""
        if not names.startswith(TMP_PREFIX):
            raise LocalSyncError(f"not a prefix of temporary file names: {names!r}")
        base = check_path(prefix)

        def sweep(conn: Connection) -> int:
            found: builtins.list[tuple[str, int]] = []
            todo = [self._remote(base)]
            while todo:
                d = todo.pop()
                try:
                    entries = listdir(conn, d)
                except FileNotFoundError:
                    continue
                for n in entries:
                    full = posixpath.join(d, n.filename)
                    if stat.S_ISDIR(n.attrs.mode or 0):
                        if recursive:
                            todo.append(full)
                    elif n.filename.startswith(names):
                        found.append((full, n.attrs.mtime or 0))
            if older_than is not None:  # (by this host's clock against the server's mtimes)
                cutoff = time.time() - older_than
                found = [(f, m) for f, m in found if m < cutoff]
            removed = 0
            for full, _m in found:
                try:
                    _remove(conn, full)
                    removed += 1
                except PermissionError:
                    pass
            return removed

        return await self._run("sweep", base, sweep)

    def _remote(self, path: str) -> str:
        return posixpath.join(self.target.root, path) if self.target.root else path


def _read(conn: Connection, remote: str, handle: bytes, start: int, end: int,
          sink: Callable[[bytes], None] | Into, path: str) -> None:
    """Bytes ``[start, end)`` of the open ``remote`` to ``sink``, the CLOSE right behind
    the last READ; a short answer after it goes on with a new handle."""
    while True:
        try:
            conn.read(handle, start, end, sink, path, close=True)
            return
        except Reopen as short:
            handle, start = conn.open(remote, c.READ_FLAG), short.offset


def _size(conn: Connection, path: str) -> int | None:
    attrs = conn.stat(path)
    return None if attrs is None else attrs.size or 0


def _remove(conn: Connection, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        conn.remove(path)

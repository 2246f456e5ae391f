"""A :class:`~vmclient.store.remote.RemoteStore` on a local directory.

The embedded default for a single machine and the transport of unit and
integration tests.  Writes go to a hidden temporary file in the target
directory, are fsync'ed, renamed into place (or hard-linked for exclusive
creation, which fails if the name exists) and the directory is fsync'ed
(:func:`vmclient.host.files.write_atomic`), so a crash leaves either the old
object or the new one, never a torn one.
Temporary files (``.tmp-<name>-<16 hex>``, :func:`~vmclient.store.remote.temporary_name`)
are invisible to :meth:`list` and removed by :meth:`sweep_temporaries`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..host.files import fsync_dir, write_atomic
from ..store.errors import LocalSyncError, ObjectNotFound
from ..store.remote import TMP_PREFIX, Entry, LockingMixin, check_path, temporary_name


class LocalDirStore(LockingMixin):
    """``file_mode`` 0o644 serves a repository to SFTP accounts (the admin tool's choice)."""

    def __init__(self, root: str | Path,
                 clock: Callable[[], int] = lambda: int(time.time()), *,
                 file_mode: int = 0o600) -> None:
        self.root = Path(root)
        self.clock = clock
        self.file_mode = file_mode

    def _path(self, path: str) -> Path:
        return self.root / check_path(path)

    async def list(self, prefix: str) -> builtins.list[Entry]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[Entry]:
        base = self._path(prefix)
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                out.append(Entry(full.relative_to(self.root).as_posix(), full.stat().st_size))
        return sorted(out, key=lambda e: e.path)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        return await asyncio.to_thread(self._get, path, offset, length)

    def _get(self, path: str, offset: int, length: int | None) -> bytes:
        try:
            with open(self._path(path), "rb") as f:
                f.seek(offset)
                if length is None:
                    return f.read()
                # no buffer of ``length`` bytes for a small object (read(n) allocates n)
                return f.read(max(0, min(length, os.fstat(f.fileno()).st_size - offset)))
        except FileNotFoundError:
            raise ObjectNotFound(path) from None

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        await asyncio.to_thread(self._put, path, data, exclusive)

    def _put(self, path: str, data: bytes, exclusive: bool) -> None:
        final = self._path(path)
        try:
            write_atomic(final, data, mode=self.file_mode, exclusive=exclusive, dir_mode=None,
                         temporary=temporary_name(path))
        except FileExistsError:
            raise LocalSyncError(f"repository object exists: {path}") from None
        except FileNotFoundError:  # swept by a lock's holder (clear_lock_leftovers)
            raise ObjectNotFound(f"{path} (its temporary file was removed meanwhile)") from None

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._delete, path)

    def _delete(self, path: str) -> None:
        target = self._path(path)
        target.unlink(missing_ok=True)
        fsync_dir(target.parent)

    async def rename(self, path: str, new: str) -> None:
        """``link`` + ``unlink`` (as OpenSSH's sftp-server renames): fails if ``new``
        exists, :class:`ObjectNotFound` if ``path`` does not; ``new``'s directory is
        made if need be."""
        await asyncio.to_thread(self._rename, path, new)

    def _rename(self, path: str, new: str) -> None:
        src, dst = self._path(path), self._path(new)
        if not src.exists():
            raise ObjectNotFound(path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except FileNotFoundError:
            raise ObjectNotFound(path) from None
        except FileExistsError:
            raise LocalSyncError(f"repository object exists: {new}") from None
        src.unlink(missing_ok=True)
        fsync_dir(dst.parent)

    async def sweep_temporaries(self, prefix: str, older_than: int | None = 3600, *,
                                recursive: bool = True, names: str = TMP_PREFIX) -> int:
        """Remove temporary files a crash left below ``prefix`` (all of them if
        ``older_than`` is None: the caller holds the lock of that directory; only
        those directly in it if not ``recursive``; only those whose name begins with
        ``names``, e.g. a lock's, :func:`~vmclient.store.remote.temporaries_of`); ones
        this user may not remove (another writer's) are left."""
        if not names.startswith(TMP_PREFIX):
            raise LocalSyncError(f"not a prefix of temporary file names: {names!r}")
        return await asyncio.to_thread(self._sweep, check_path(prefix), older_than, recursive,
                                       names)

    def _sweep(self, prefix: str, older_than: int | None, recursive: bool, names: str) -> int:
        cutoff = None if older_than is None else time.time() - older_than
        removed = 0
        base = self._path(prefix)
        found = base.rglob(f"{TMP_PREFIX}*") if recursive else base.glob(f"{TMP_PREFIX}*")
        for tmp in (t for t in found if t.name.startswith(names)):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if cutoff is None or tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

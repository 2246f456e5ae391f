"""The transport interface to a repository, and an in-memory implementation.

A :class:`RemoteStore` holds opaque byte objects under slash-separated paths
relative to the repository root.  Six operations, all async (an SFTP adapter
runs paramiko inside ``asyncio.to_thread``); everything above this interface is
transport-independent, so the same code runs against SFTP, a local directory
(:mod:`vmclient.store.localfs`) or, later, S3-compatible object storage.

Contract (repository-format.md, "Write ordering"):
* ``put_atomic`` makes the object appear whole or not at all (temp + rename);
  with ``exclusive=True`` it fails with :class:`FileExistsError` semantics
  (:class:`LocalSyncError`) instead of replacing an existing object.
* ``get`` may read a byte range (packs are read blob by blob).
* ``lock`` is advisory and exclusive; the lock is an object at the given path
  (``devices/<id>/lock`` for a device's sync, ``images/<name>/lock`` and
  ``lock`` for the admin tool), so a device confined to its own directory can
  take its own lock; one older than ``stale_after`` seconds may be broken.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import LocalSyncError, LockHeld, ObjectNotFound

DEFAULT_STALE_AFTER = 30 * 60  # seconds; long runs refresh their lock every 10 minutes
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def check_path(path: str) -> str:
    """Refuse absolute paths, ``..``, empty and hidden segments (temp files)."""
    parts = path.split("/")
    if not path or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise LocalSyncError(f"invalid repository path {path!r}")
    return path


@dataclass(frozen=True)
class Entry:
    path: str
    size: int


@dataclass(frozen=True)
class LockToken:
    path: str
    holder: str
    nonce: str


@runtime_checkable
class RemoteStore(Protocol):
    async def list(self, prefix: str) -> list[Entry]:
        """Every object whose path starts with ``prefix/`` (recursively), sorted."""

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes (or a range); :class:`ObjectNotFound` if absent."""

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` whole or not at all."""

    async def delete(self, path: str) -> None:
        """Remove an object; removing an absent one is not an error."""

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        """Take the exclusive lock object at ``path`` or raise :class:`LockHeld`."""

    async def unlock(self, token: LockToken) -> None:
        """Release a lock taken with :meth:`lock` (only if still ours)."""


def lock_document(holder: str, now: int, nonce: str) -> bytes:
    return json.dumps({"holder": holder, "created": now, "nonce": nonce}).encode()


def lock_is_stale(untrusted: bytes, now: int, stale_after: int) -> tuple[bool, str, int]:
    """(stale?, holder, created) of a lock file; unreadable locks count as stale."""
    try:
        doc = json.loads(untrusted)
        holder, created = str(doc["holder"]), int(doc["created"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return True, "?", 0
    return now - created >= stale_after, holder, created


class LockingMixin:
    """``lock``/``unlock`` on top of ``get``/``put_atomic(exclusive)``/``delete``."""

    clock: Callable[[], int]

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        raise NotImplementedError

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        raise NotImplementedError

    async def delete(self, path: str) -> None:
        raise NotImplementedError

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        check_path(path)
        nonce = secrets.token_hex(8)
        for _attempt in range(2):
            try:
                await self.put_atomic(path, lock_document(holder, self.clock(), nonce),
                                      exclusive=True)
                return LockToken(path, holder, nonce)
            except LocalSyncError:
                try:
                    current = await self.get(path)
                except ObjectNotFound:
                    continue
                stale, other, created = lock_is_stale(current, self.clock(), stale_after)
                if not stale:
                    raise LockHeld(path, other, created, stale_after) from None
                await self.delete(path)
        raise LockHeld(path, "a competing client", self.clock(), stale_after)

    async def unlock(self, token: LockToken) -> None:
        try:
            current = json.loads(await self.get(token.path))
        except (ObjectNotFound, ValueError, RecursionError):
            return
        if isinstance(current, dict) and current.get("nonce") == token.nonce:
            await self.delete(token.path)


class MemoryStore(LockingMixin):
    """A dict-backed :class:`RemoteStore` for tests; ``objects`` may be tampered with."""

    def __init__(self, clock: Callable[[], int] = lambda: 0) -> None:
        self.objects: dict[str, bytes] = {}
        self.clock = clock

    async def list(self, prefix: str) -> list[Entry]:
        start = check_path(prefix) + "/"
        return [Entry(p, len(d)) for p, d in sorted(self.objects.items()) if p.startswith(start)]

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[check_path(path)]
        except KeyError:
            raise ObjectNotFound(path) from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if exclusive and check_path(path) in self.objects:
            raise LocalSyncError(f"repository object exists: {path}")
        self.objects[check_path(path)] = bytes(data)

    async def delete(self, path: str) -> None:
        self.objects.pop(check_path(path), None)

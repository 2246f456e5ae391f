"""The transport interface to a repository, and an in-memory implementation.

A :class:`RemoteStore` holds opaque byte objects under slash-separated paths
relative to the repository root.  Six operations, all async (an SFTP adapter
runs its blocking SFTP client in threads); everything above this interface is
transport-independent, so the same code runs against SFTP, a local directory
(:mod:`vmclient.transport.localfs`) or, later, S3-compatible object storage.

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

import builtins
import logging
import posixpath
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import LocalSyncError, LockHeld, ObjectNotFound, RemoteIntegrityError, StoreError
from .locks import HELD, Whoami, lock_document, pid_alive, read_lock, stale_reason

log = logging.getLogger(__name__)

_KIB, _MIB = 1 << 10, 1 << 20
DOCUMENT_CAP = (256 << 20) + 64 * _KIB  # a manifest or index (format.MAX_DOCUMENT) as stored
# the most bytes a whole-object read takes from the server, per object type
# (repository-format.md §9, "Sizes"); a bigger object is refused before it is read
MAX_OBJECT: dict[str, int] = {
    "config": 64 * _KIB, "device": 64 * _KIB, "enrolment": 64 * _KIB,
    "enrolment-refusal": 64 * _KIB,
    "revocation": 64 * _KIB, "status": 64 * _KIB, "report": 64 * _KIB,
    "pointer": 64 * _KIB, "wrapped-key": 64 * _KIB, "lock": 64 * _KIB,
    "recovery-key": 64 * _KIB,
    "order": 4 * _MIB,  # an assign order carries its recipe
    "catalog": 64 * _MIB,
    "snapshot": DOCUMENT_CAP, "manifest": DOCUMENT_CAP, "index": DOCUMENT_CAP,
    "pack-header": DOCUMENT_CAP,
    "object": DOCUMENT_CAP,  # any object copied whole (rekey's copy: packs, indexes…)
}

DEFAULT_STALE_AFTER = 30 * 60  # seconds; long runs refresh their lock every 10 minutes
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


TMP_PREFIX = ".tmp-"  # a temporary file's name begins so (hidden: check_path refuses it)


def temporary_name(path: str) -> str:
    """The temporary name an atomic put of ``path`` writes first, in the same directory:
    ``.tmp-<final name>-<16 hex>`` (repository-format.md §8.1).  Whose temporary it is
    shows in its name: a lock's (``.tmp-lock-…``) can be swept apart from the admin's
    ``device`` record or an order written beside it."""
    return f"{TMP_PREFIX}{posixpath.basename(path)}-{secrets.token_hex(8)}"


def temporaries_of(path: str) -> str:
    """The name prefix of the temporaries of ``path`` (:func:`temporary_name`)."""
    return f"{TMP_PREFIX}{posixpath.basename(path)}-"


def set_aside(lock: str) -> str:
    """The directory a compare-and-delete moves the lock at ``lock`` into before it deletes
    it (``<lock>.gone/<16 hex>``, repository-format.md §10): what a killed client left
    there is found by listing it, not the whole directory of the lock."""
    return f"{lock}.gone"


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


@runtime_checkable
class RangeReader(Protocol):
    """A store that can read a range into a buffer of its own without copying it (SFTP):
    what :class:`~.chunkstore.ChunkStore` reads packs with when the store offers it
    (else ``get``)."""

    async def get_range(self, path: str, offset: int, length: int,
                        into: bytearray | None = None) -> bytearray | memoryview:
        """Bytes ``[offset, offset + length)`` (fewer if the object ends before);
        :class:`ObjectNotFound` if absent.  ``into`` (at least ``length`` bytes): received
        there (a view of it returned) rather than into a new buffer."""


class PassOn:
    """A :class:`RemoteStore` that passes every request on to ``inner``: the base of a
    wrapper that changes one or two (a throttle, a fault a test injects).  The lock
    helpers find the store underneath through ``inner`` (``store.holding``)."""

    def __init__(self, inner: RemoteStore) -> None:
        self.inner = inner

    async def list(self, prefix: str) -> list[Entry]:
        return await self.inner.list(prefix)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self.inner.get(path, offset, length)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        await self.inner.put_atomic(path, data, exclusive=exclusive)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        return await self.inner.lock(path, holder, stale_after=stale_after)

    async def unlock(self, token: LockToken) -> None:
        await self.inner.unlock(token)


async def get_object(remote: RemoteStore, path: str, obj_type: str, obj_id: str) -> bytes:
    """The whole object at ``path``, refused (RemoteIntegrityError) if it is larger than
    :data:`MAX_OBJECT` allows for ``obj_type``.

    The read asks for one byte more than the cap, so the store never takes (nor
    allocates) more than that, whatever size the server claims.
    """
    cap = MAX_OBJECT[obj_type]
    untrusted = await remote.get(path, 0, cap + 1)
    if len(untrusted) > cap:
        raise RemoteIntegrityError(obj_type, obj_id, path,
                                   f"larger than the {cap} bytes a {obj_type} may have")
    return untrusted


class LockingMixin:
    """``lock``/``unlock``/``refresh`` on top of ``get``/``put_atomic``/``delete``/``rename``.

    Breaking a stale lock and unlocking are compare-and-delete (§10 of the
    format): the lock is first renamed to a unique name, then the renamed
    object is compared with the one judged stale (or with the holder's nonce);
    only if it is that one it is deleted, else it is renamed back.  A rename is
    ``link`` + ``unlink`` (locally, and in OpenSSH's sftp-server), so two
    clients may both move away the *same* stale lock; both then find it is the
    stale one, and the exclusive creation that follows admits only one of them.
    What cannot happen is the old race: a client deleting, as the stale lock it
    read, the fresh lock another client took meanwhile.

    A refresh replaces the lock after checking its nonce (not atomically: a
    client that broke the lock in between — possible only once it had gone
    stale, 30 minutes without a refresh — would lose it to the refresh).
    """

    clock: Callable[[], int]

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        raise NotImplementedError

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        raise NotImplementedError

    async def delete(self, path: str) -> None:
        raise NotImplementedError

    async def rename(self, path: str, new: str) -> None:
        """Move ``path`` to the absent name ``new`` (its directory made if need be);
        :class:`ObjectNotFound` if ``path`` is absent (another client moved it first)."""
        raise NotImplementedError

    async def list(self, prefix: str) -> builtins.list[Entry]:
        raise NotImplementedError

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        check_path(path)
        nonce = secrets.token_hex(8)
        me = Whoami.current()
        for _attempt in range(3):
            try:
                await self.put_atomic(path, lock_document(holder, self.clock(), nonce, me=me),
                                      exclusive=True)
                HELD.add(nonce)
                await self.clear_lock_leftovers(path, nonce)
                return LockToken(path, holder, nonce)
            except ObjectNotFound:
                continue  # its temporary was swept by the holder of the moment: try again
            except LocalSyncError:
                try:
                    current = await self.get(path)
                except ObjectNotFound:
                    continue
                info = read_lock(current)
                reason = stale_reason(info, self.clock(), stale_after, me, HELD, pid_alive)
                if reason is None:
                    assert info is not None
                    raise LockHeld(path, info.holder, info.created, stale_after) from None
                log.warning("breaking the lock %s: %s", path, reason)
                await self.compare_and_delete(path, current.__eq__)
        raise LockHeld(path, "a competing client", self.clock(), stale_after)

    async def clear_lock_leftovers(self, path: str, nonce: str) -> int:
        """Under the lock at ``path``, just taken with ``nonce``: remove what runs killed
        in the middle of a lock operation left (repository-format.md §10), and nothing
        else in that directory (the admin's ``device`` record, orders and their
        temporaries are written there too):

        * the lock's temporaries (``.tmp-lock-…`` beside it: killed while writing or
          refreshing it).  One may belong to a live client trying to take the lock right
          now; that attempt would fail anyway (the lock is held): a put whose temporary
          vanished fails with :class:`ObjectNotFound`, which :meth:`lock` retries, then
          finding the lock held.
        * locks set aside by a compare-and-delete that was never finished
          (``<lock>.gone/<16 hex>``: killed while unlocking or breaking), except this
          very lock (set aside by a client racing this one, which puts it back).  A
          client whose set-aside lock is removed under it finds it gone and retries.

        How many were removed; a failure is logged (they wait for the next holder)."""
        removed = 0
        try:
            sweep = getattr(self, "sweep_temporaries", None)
            parent = posixpath.dirname(path)
            if sweep is not None and parent:  # (the repository lock: no directory of its own)
                removed += int(await sweep(parent, older_than=None, recursive=False,
                                           names=temporaries_of(path)))
            for entry in await self.list(set_aside(path)):
                try:
                    info = read_lock(await get_object(self, entry.path, "lock", entry.path))
                except ObjectNotFound:
                    continue  # its client deleted it or put it back meanwhile
                if info is None or info.nonce != nonce:
                    await self.delete(entry.path)
                    removed += 1
        except (StoreError, OSError) as exc:
            log.warning("removing what interrupted runs left beside the lock %s failed: %s",
                        path, exc)
        if removed:
            log.info("removed %d file(s) interrupted runs left beside the lock %s", removed,
                     path)
        return removed

    async def compare_and_delete(self, path: str, same: Callable[[bytes], bool]) -> bool:
        """Delete ``path`` only if ``same(its bytes)``; True if deleted by this call."""
        aside = f"{set_aside(path)}/{secrets.token_hex(8)}"
        try:
            await self.rename(path, aside)
        except ObjectNotFound:
            return False  # someone else moved it first
        try:
            moved = await self.get(aside)
        except ObjectNotFound:
            return False  # removed by the lock's next holder (clear_lock_leftovers)
        if same(moved):
            await self.delete(aside)
            return True
        try:  # a newer lock taken meanwhile: put it back (unless yet another one is there)
            await self.rename(aside, path)
        except ObjectNotFound:
            pass  # removed meanwhile as a leftover: its holder's next refresh reports it
        except LocalSyncError:
            await self.delete(aside)
        return False

    async def unlock(self, token: LockToken) -> None:
        HELD.discard(token.nonce)

        def ours(untrusted: bytes) -> bool:
            info = read_lock(untrusted)
            return info is not None and info.nonce == token.nonce

        try:
            if not ours(await self.get(token.path)):
                return
        except ObjectNotFound:
            return
        await self.compare_and_delete(token.path, ours)

    async def refresh(self, token: LockToken) -> bool:
        """Rewrite the lock with the time now if it is still ours; False if it is not."""
        try:
            info = read_lock(await self.get(token.path))
        except ObjectNotFound:
            return False
        if info is None or info.nonce != token.nonce:
            return False
        await self.put_atomic(token.path, lock_document(token.holder, self.clock(),
                                                        token.nonce, created=info.created))
        return True


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

    async def rename(self, path: str, new: str) -> None:
        if check_path(new) in self.objects:
            raise LocalSyncError(f"repository object exists: {new}")
        try:
            self.objects[new] = self.objects.pop(check_path(path))
        except KeyError:
            raise ObjectNotFound(path) from None

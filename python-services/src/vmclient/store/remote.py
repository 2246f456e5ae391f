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

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from ..errors import VMClientError
from .errors import LocalSyncError, LockHeld, ObjectNotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

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


BOOT_ID = "/proc/sys/kernel/random/boot_id"
MACHINE_ID = "/etc/machine-id"
REFRESH_EVERY = 10 * 60  # seconds between refreshes of a held lock (format doc §10)


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Whoami:
    """What identifies a lock's holder process: host (name and machine id), boot, pid."""

    host: str
    machine: str
    boot: str
    pid: int

    @classmethod
    def current(cls) -> Whoami:
        return cls(socket.gethostname(), _read_first_line(MACHINE_ID),
                   _read_first_line(BOOT_ID), os.getpid())


@dataclass(frozen=True)
class LockInfo:
    """A lock document as read (untrusted: advisory, anyone could have written it)."""

    holder: str
    created: int
    refreshed: int
    nonce: str
    host: str = ""
    machine: str = ""
    boot: str = ""
    pid: int = 0


def lock_document(holder: str, now: int, nonce: str, *, created: int | None = None,
                  me: Whoami | None = None) -> bytes:
    """The lock's JSON; ``created`` is kept by a refresh (``now`` is then its time)."""
    me = me or Whoami.current()
    return json.dumps({"holder": holder, "created": now if created is None else created,
                       "refreshed": now, "nonce": nonce, "host": me.host,
                       "machine": me.machine, "boot": me.boot, "pid": me.pid}).encode()


def read_lock(untrusted: bytes) -> LockInfo | None:
    """The lock document, or None if it is not one (counts as stale)."""
    try:
        doc = json.loads(untrusted)
        created = int(doc["created"])
        return LockInfo(str(doc["holder"]), created, int(doc.get("refreshed", created)),
                        str(doc.get("nonce", "")), str(doc.get("host", "")),
                        str(doc.get("machine", "")), str(doc.get("boot", "")),
                        int(doc.get("pid", 0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def lock_is_stale(untrusted: bytes, now: int, stale_after: int) -> tuple[bool, str, int]:
    """(stale by age?, holder, created) of a lock file; unreadable locks count as stale."""
    info = read_lock(untrusted)
    if info is None:
        return True, "?", 0
    return now - max(info.created, info.refreshed) >= stale_after, info.holder, info.created


def stale_reason(info: LockInfo | None, now: int, stale_after: int, me: Whoami,
                 held: Collection[str], alive: Callable[[int], bool]) -> str | None:
    """Why the lock may be broken, or None if it is held.

    Besides age (``stale_after`` since its last refresh): a lock this host
    wrote in an earlier boot (its process is gone whatever its pid is now), or
    in this boot by a process that is gone, or by this very process without
    holding it now (an unlock lost with the connection).  "This host" is the
    host name *and* the machine id, so two machines of one name never judge
    each other's locks by their own boot and pids.
    """
    if info is None:
        return "not a lock document"
    age = now - max(info.created, info.refreshed)
    if age >= stale_after:
        return f"not refreshed for {age} s (stale after {stale_after} s)"
    if not (info.host == me.host and info.machine == me.machine and info.machine
            and info.boot and me.boot):
        return None
    if info.boot != me.boot:
        return f"left by {info.holder} before this host rebooted"
    if info.pid == me.pid:
        return None if info.nonce in held else "left by this process, which no longer holds it"
    if info.pid > 0 and not alive(info.pid):
        return f"its process {info.pid} is gone"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_held: set[str] = set()  # nonces of the locks this process holds right now


class LockingMixin:
    """``lock``/``unlock``/``refresh`` on top of ``get``/``put_atomic``/``delete``/``rename``.

    Breaking a stale lock and unlocking are compare-and-delete (§10 of the
    format): the lock is first renamed to a unique name (one rename of it
    wins), then the renamed object is compared with the one judged stale (or
    with the holder's nonce); only if it is that one it is deleted, else it is
    renamed back.
    """

    clock: Callable[[], int]

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        raise NotImplementedError

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        raise NotImplementedError

    async def delete(self, path: str) -> None:
        raise NotImplementedError

    async def rename(self, path: str, new: str) -> None:
        """Move ``path`` to the absent name ``new``; :class:`ObjectNotFound` if ``path``
        is absent (another client moved it first)."""
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
                _held.add(nonce)
                return LockToken(path, holder, nonce)
            except LocalSyncError:
                try:
                    current = await self.get(path)
                except ObjectNotFound:
                    continue
                info = read_lock(current)
                reason = stale_reason(info, self.clock(), stale_after, me, _held, pid_alive)
                if reason is None:
                    assert info is not None
                    raise LockHeld(path, info.holder, info.created, stale_after) from None
                log.warning("breaking the lock %s: %s", path, reason)
                await self.compare_and_delete(path, current.__eq__)
        raise LockHeld(path, "a competing client", self.clock(), stale_after)

    async def compare_and_delete(self, path: str, same: Callable[[bytes], bool]) -> bool:
        """Delete ``path`` only if ``same(its bytes)``; True if deleted by this call."""
        aside = f"{path}.gone-{secrets.token_hex(8)}"
        try:
            await self.rename(path, aside)
        except ObjectNotFound:
            return False  # someone else moved it first
        moved = await self.get(aside)
        if same(moved):
            await self.delete(aside)
            return True
        try:  # a newer lock taken meanwhile: put it back (unless yet another one is there)
            await self.rename(aside, path)
        except LocalSyncError:
            await self.delete(aside)
        return False

    async def unlock(self, token: LockToken) -> None:
        _held.discard(token.nonce)

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


def _unwrapped(remote: RemoteStore) -> object:
    """The store under wrappers that pass requests on to ``inner`` (a throttle, tests')."""
    target: object = remote
    while not isinstance(target, LockingMixin) and hasattr(target, "inner"):
        target = target.inner
    return target


async def refresh_lock(remote: RemoteStore, token: LockToken) -> bool:
    """:meth:`LockingMixin.refresh` through ``remote`` (or what it wraps)."""
    target = _unwrapped(remote)
    if not isinstance(target, LockingMixin):
        raise LocalSyncError(f"{type(remote).__name__} cannot refresh a lock")
    return await target.refresh(token)


async def break_lock(remote: RemoteStore, path: str) -> LockInfo | None:
    """Delete the lock at ``path`` whoever holds it (an admin's decision: the holder is
    gone), by compare-and-delete; the lock as it was, or None if there was none."""
    target = _unwrapped(remote)
    if not isinstance(target, LockingMixin):
        raise LocalSyncError(f"{type(remote).__name__} cannot break a lock")
    try:
        current = await target.get(check_path(path))
    except ObjectNotFound:
        return None
    if not await target.compare_and_delete(path, current.__eq__):
        raise LockHeld(path, "another client (it changed while being broken)", 0, 0)
    return read_lock(current) or LockInfo("(not a lock document)", 0, 0, "")


async def sweep_locked(remote: RemoteStore, *prefixes: str, shallow: Collection[str] = ()
                       ) -> int:
    """Remove every temporary file (``.tmp-*``: uploads a killed run left) below
    ``prefixes`` and directly in the ``shallow`` directories; the caller holds the lock
    under which only it writes there.  A store without temporaries: nothing to do."""
    sweep = getattr(_unwrapped(remote), "sweep_temporaries", None)
    if sweep is None:
        return 0
    removed = 0
    for prefix in prefixes:
        removed += await sweep(prefix, older_than=None)
    for prefix in shallow:
        removed += await sweep(prefix, older_than=None, recursive=False)
    if removed:
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed,
                 ", ".join((*prefixes, *shallow)))
    return int(removed)


async def finish(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile (Ctrl-C under
    asyncio.run cancels the main task, whose ``finally`` must still release its lock);
    the cancellation is raised once ``aw`` is done."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def unlock_anyway(remote: RemoteStore, token: LockToken) -> None:
    """``unlock``, finished even if the caller is cancelled meanwhile (:func:`finish`)."""
    await finish(remote.unlock(token))


async def keep_fresh(remote: RemoteStore, token: LockToken, every: float | None = None
                     ) -> None:
    """Refresh ``token`` every ``every`` seconds (:data:`REFRESH_EVERY`) until cancelled.

    A refresh under way when cancelled is finished first (it must not rewrite the
    lock after an unlock).  A refresh that finds the lock gone (broken as stale by
    another client) is logged as an error and ends the refreshing: the run goes on
    (its objects are immutable and written in order, §8) and its unlock leaves the
    other lock alone.
    """
    while True:
        await asyncio.sleep(REFRESH_EVERY if every is None else every)
        try:
            if not await finish(refresh_lock(remote, token)):
                log.error("the lock %s was broken by another client", token.path)
                return
        except VMClientError as exc:
            log.warning("refreshing the lock %s failed: %s", token.path, exc)


async def stop_refreshing(task: asyncio.Task[None]) -> None:
    """Cancel a :func:`keep_fresh` task and wait until it ended (even if cancelled)."""
    task.cancel()
    await finish(asyncio.gather(task, return_exceptions=True))


@contextlib.asynccontextmanager
async def holding(remote: RemoteStore, token: LockToken) -> AsyncIterator[LockToken]:
    """Keep ``token`` fresh while the body runs; unlock afterwards (even when cancelled)."""
    task = asyncio.create_task(keep_fresh(remote, token))
    try:
        yield token
    finally:
        try:
            await stop_refreshing(task)
        finally:
            await unlock_anyway(remote, token)


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

"""Repository locks: the lock document, who may break a lock, refreshing, releasing.

Pure parts (the document, :func:`stale_reason`) and the helpers a locked run
uses around :class:`~vmclient.store.remote.LockingMixin` (which takes, breaks
and releases locks by compare-and-delete): :func:`keep_fresh` / :func:`holding`
refresh a held lock every :data:`REFRESH_EVERY` seconds, :func:`unlock_anyway`
releases it even when the run is cancelled (Ctrl-C), :func:`break_lock` is the
admin's, :func:`sweep_locked` removes what killed runs left.  Format and rules:
repository-format.md §5 ("Lock") and §10.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import VMClientError
from .errors import LocalSyncError, LockHeld, ObjectNotFound

if TYPE_CHECKING:
    from .remote import LockToken, RemoteStore

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        return None  # (OverflowError: "created": 1e999; RecursionError: nesting)


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


HELD: set[str] = set()  # nonces of the locks this process holds right now


def _unwrapped(remote: RemoteStore) -> Any:
    """The store under wrappers that pass requests on to ``inner`` (a throttle, tests'):
    the one that can refresh and compare-and-delete (a ``LockingMixin``), or None."""
    target: Any = remote
    while not hasattr(target, "compare_and_delete") and hasattr(target, "inner"):
        target = target.inner
    return target if hasattr(target, "compare_and_delete") else None


async def refresh_lock(remote: RemoteStore, token: LockToken) -> bool:
    """:meth:`LockingMixin.refresh` through ``remote`` (or what it wraps)."""
    target = _unwrapped(remote)
    if target is None:
        raise LocalSyncError(f"{type(remote).__name__} cannot refresh a lock")
    return bool(await target.refresh(token))


async def break_lock(remote: RemoteStore, path: str) -> LockInfo | None:
    """Delete the lock at ``path`` whoever holds it (an admin's decision: the holder is
    gone), by compare-and-delete; the lock as it was, or None if there was none."""
    target = _unwrapped(remote)
    if target is None:
        raise LocalSyncError(f"{type(remote).__name__} cannot break a lock")
    try:
        current = await target.get(path)
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
    sweep = getattr(_unwrapped(remote) or remote, "sweep_temporaries", None)
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

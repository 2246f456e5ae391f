"""Holding a repository lock: refreshing it, releasing it, breaking it, sweeping under it.

The helpers a locked run uses around :class:`~vmclient.store.remote.LockingMixin`
(which takes, breaks and releases locks by compare-and-delete): :func:`keep_fresh`
/ :func:`holding` refresh a held lock every :data:`REFRESH_EVERY` seconds,
:func:`unlock_anyway` releases it even when the run is cancelled (Ctrl-C),
:func:`break_lock` is the admin's, :func:`sweep_locked` removes what killed runs
left.  Rules: repository-format.md §5 ("Lock") and §10.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Collection
from typing import Any, TypeVar

from ..errors import VMClientError
from .errors import LocalSyncError, LockHeld, ObjectNotFound
from .locks import LockInfo, read_lock
from .remote import LockToken, RemoteStore

log = logging.getLogger(__name__)
T = TypeVar("T")

REFRESH_EVERY = 10 * 60  # seconds between refreshes of a held lock (format doc §10)


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

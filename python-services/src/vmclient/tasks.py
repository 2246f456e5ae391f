"""Running independent steps at once, a step bounded in time, tasks told to end.

:func:`all_of` runs coroutines concurrently (a VM's LUKS disks are made at once:
each ``qemu-img create`` spends seconds of CPU calibrating its PBKDF, whatever
``encrypt.iter-time`` says) and, unlike :class:`asyncio.TaskGroup`, waits for
every one to end before it raises: a caller that cleans up after a failure finds
no step still writing, and gets the step's own exception, not an
:class:`ExceptionGroup`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def all_of(*steps: Awaitable[object]) -> None:
    """Run ``steps`` concurrently, wait for all, then raise the first failure (in the
    order given) if any failed."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def at_most(step: Awaitable[T], limit: float) -> T:
    """``await step``, :class:`TimeoutError` after ``limit`` seconds (``step`` is then
    cancelled).  Used instead of :func:`asyncio.wait_for`, which on Python 3.11 returns
    the step's result when a cancellation of the caller arrives as the step completes:
    the cancellation is lost, and a task told to end (a fill as its VM is removed) goes
    on as if never told (CPython gh-86296, fixed in 3.12).  :func:`asyncio.timeout`
    lets any cancellation but its own through."""
    async with asyncio.timeout(limit):
        return await step


async def ended(*tasks: asyncio.Task[Any], again: float = 1.0) -> None:
    """Cancel ``tasks`` and return once each has ended; one still running ``again`` s
    later is cancelled again (a cancellation lost on its way, as :func:`at_most` says:
    ``vm remove`` would otherwise wait forever for a fill that goes on).  Their results
    and errors are dropped, as :func:`asyncio.gather` with ``return_exceptions`` would."""
    running = {t for t in tasks if not t.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=again)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # (retrieved: not reported as never retrieved)


__all__ = ["all_of", "at_most", "ended"]

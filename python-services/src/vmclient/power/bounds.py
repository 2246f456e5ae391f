"""Bounds on the controller's libvirt calls: a timeout for each VM's operation, the
caller's deadline for a batch (a ``loop.time()``, :func:`now`).

libvirt does not take a call back: an operation that outlives its bound goes on in
the background, and the caller goes on without it (:class:`~vmclient.errors.VMOperationTimeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from ..errors import VMOperationTimeout


async def within(coro: Awaitable[None], limit: float, name: str, what: str) -> None:
    """Await ``coro`` for at most ``limit`` seconds; it goes on in the background."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, limit))
    if not done:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise VMOperationTimeout(name, what, limit)
    task.result()


def now() -> float:
    """The event loop's clock, which deadlines are given in."""
    return asyncio.get_running_loop().time()

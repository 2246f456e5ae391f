"""Running independent steps at once.

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


async def all_of(*steps: Awaitable[object]) -> None:
    """Run ``steps`` concurrently, wait for all, then raise the first failure (in the
    order given) if any failed."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


__all__ = ["all_of"]

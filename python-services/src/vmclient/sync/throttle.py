"""An upload bandwidth limit: a :class:`RemoteStore` that paces what it writes."""

from __future__ import annotations

import asyncio

from ..store.remote import DEFAULT_STALE_AFTER, Entry, LockToken, RemoteStore


class Throttled:
    """``inner``, with ``put_atomic`` paced to ``rate`` bytes/s in all (others unchanged)."""

    def __init__(self, inner: RemoteStore, rate: float) -> None:
        self.inner, self.rate = inner, rate
        self._pace = asyncio.Lock()  # uploads run in parallel; the limit holds for their sum

    async def list(self, prefix: str) -> list[Entry]:
        return await self.inner.list(prefix)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self.inner.get(path, offset, length)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        await self.inner.put_atomic(path, data, exclusive=exclusive)
        if self.rate > 0:
            async with self._pace:
                await asyncio.sleep(len(data) / self.rate)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        return await self.inner.lock(path, holder, stale_after=stale_after)

    async def unlock(self, token: LockToken) -> None:
        await self.inner.unlock(token)

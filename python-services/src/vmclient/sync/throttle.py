"""An upload bandwidth limit: a :class:`RemoteStore` that paces what it writes."""

from __future__ import annotations

import asyncio

from ..store.remote import PassOn, RemoteStore


class Throttled(PassOn):
    """``inner``, with ``put_atomic`` paced to ``rate`` bytes/s in all (others unchanged)."""

    def __init__(self, inner: RemoteStore, rate: float) -> None:
        super().__init__(inner)
        self.rate = rate
        self._pace = asyncio.Lock()  # uploads run in parallel; the limit holds for their sum

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        await self.inner.put_atomic(path, data, exclusive=exclusive)
        if self.rate > 0:
            async with self._pace:
                await asyncio.sleep(len(data) / self.rate)

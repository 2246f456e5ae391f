"""Chunks of a snapshot's disk on demand, for the nbdkit plugin's ``pread`` (any thread).

Every chunk comes through :meth:`ChunkStore.fetch_blobs` (:func:`.restore.fetch_blobs`):
read from its pack, decrypted, its length and HMAC checked, exactly as a full
restore does.  A read of chunks not yet here waits while the repository is
unreachable, retrying (:func:`~.streamcore.retry_delays`) for at most the spec's
``timeout``; then it fails, and QEMU (``rerror_policy='stop'``) pauses the VM
rather than give the guest an error.  A chunk that fails its check is never retried
and never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ..store import crypto
from ..store.chunkstore import ChunkStore
from ..store.errors import RemoteIntegrityError
from ..store.objects import BASE_ID, ZERO_ID, BlobRef
from ..store.plan import DownloadPlan, plan_reads
from ..store.remote import RemoteStore
from ..tasks import at_most
from .restore import fetch_blobs
from .streamcore import CACHE_CHUNKS, ChunkLRU, ReadAhead, chunk_length, pieces, retry_delays

log = logging.getLogger(__name__)
T = TypeVar("T")


class ChunkSource:
    """The guest-visible bytes of one disk of a snapshot, fetched as they are read."""

    def __init__(self, remote: RemoteStore, root: str, keys: crypto.KeySet, ids: bytes,
                 size: int, chunk_size: int, *, timeout: float,
                 cache_chunks: int = CACHE_CHUNKS) -> None:
        self.store = ChunkStore(remote, root, keys)
        self.ids = [ids[i:i + 32] for i in range(0, len(ids), 32)]
        if BASE_ID in self.ids:
            raise RemoteIntegrityError("snapshot", root, root, "a disk on a base image "
                                       "cannot be streamed (not restorable yet)")
        self.size, self.chunk_size, self.timeout = size, chunk_size, timeout
        self.cache = ChunkLRU(cache_chunks)
        self.ahead = ReadAhead(timeout)  # how far a sequential read (the pull) reads ahead
        self.index: dict[bytes, BlobRef] = {}
        self.fetched = 0  # chunks fetched (for tests and the log)
        self._inflight: dict[int, asyncio.Future[bytes]] = {}
        self._last_end = -1
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vmclient-stream",
                                        daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def open(self) -> None:
        """Load the store's index (retried like a read while the repository is away)."""
        self.index = self._run(self._retrying("the index", self.store.load_index))
        missing = {cid for cid in self.ids if cid != ZERO_ID} - set(self.index)
        if missing:
            raise RemoteIntegrityError("chunk", next(iter(missing)).hex(), self.store.root,
                                       "listed by the snapshot but in no index")

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def pread(self, offset: int, count: int) -> bytes:
        """``count`` guest-visible bytes at ``offset`` (blocks the calling thread)."""
        return self._run(self._pread(offset, count))

    async def _pread(self, offset: int, count: int) -> bytes:
        parts = pieces(offset, count, self.chunk_size, self.size)
        wanted = [i for i, _s, _n in parts]
        ahead: list[int] = []
        if offset == self._last_end and wanted:  # sequential (the fill): read ahead
            last = len(self.ids) - 1
            ahead = list(range(wanted[-1] + 1,
                               min(last, wanted[-1] + self.ahead.window()) + 1))
        self._last_end = offset + count
        chunks = await self._chunks(wanted, ahead)
        return b"".join(chunks[i][s:s + n] for i, s, n in parts)

    async def _chunks(self, wanted: Sequence[int], ahead: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        fetch_now: list[int] = []
        for i in wanted:
            data = self._local(i)
            if data is not None:
                out[i] = data
            elif i not in self._inflight:
                fetch_now.append(i)
        extra = [i for i in ahead if i not in self.cache and i not in self._inflight
                 and self.ids[i] != ZERO_ID]
        if fetch_now:
            self._start(fetch_now)
        batch = self.ahead.batch
        if extra and (fetch_now or len(extra) >= batch):
            for b in range(0, len(extra), batch):  # separate ranged reads, in parallel
                self._start(extra[b:b + batch])
        # every future now: a fetch that lands drops its futures from ``_inflight``
        waits = {i: self._inflight[i] for i in wanted if i not in out}
        for i, f in waits.items():
            out[i] = await asyncio.shield(f)
        return out

    def _local(self, i: int) -> bytes | None:
        if self.ids[i] == ZERO_ID:
            return bytes(chunk_length(i, self.chunk_size, self.size))
        return self.cache.get(i)

    def _start(self, indexes: list[int]) -> None:
        futures = {i: self._loop.create_future() for i in indexes}
        self._inflight.update(futures)
        task = self._loop.create_task(self._fetch(futures))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _fetch(self, futures: dict[int, asyncio.Future[bytes]]) -> None:
        by_id: dict[bytes, list[int]] = {}
        for i in futures:
            by_id.setdefault(self.ids[i], []).append(i)
        started = self._loop.time()
        try:
            try:
                got = await self._retrying(f"{len(by_id)} chunks", lambda: self._once(by_id))
            except Exception:
                self.ahead.landed(self._loop.time() - started, len(futures), ok=False)
                raise
            self.ahead.landed(self._loop.time() - started, len(futures))
            for cid, places in by_id.items():
                for i in places:
                    self.cache.put(i, got[cid])
                    futures[i].set_result(got[cid])
        except BaseException as exc:
            for f in futures.values():
                if not f.done():
                    f.set_exception(exc if isinstance(exc, Exception) else
                                    RuntimeError("the stream stopped"))
                    f.exception()  # retrieved: readahead nobody waits for
            raise
        finally:
            for i, f in futures.items():
                if self._inflight.get(i) is f:
                    del self._inflight[i]

    async def _once(self, by_id: dict[bytes, list[int]]) -> dict[bytes, bytes]:
        refs = {cid: self.index[cid] for cid in by_id}
        plan = DownloadPlan(plan_reads(refs), frozenset(), len(refs))
        got: dict[bytes, bytes] = {}
        async with contextlib.aclosing(fetch_blobs(self.store, plan)) as blobs:
            async for cid, _ref, _sealed, data in blobs:
                got[cid] = data
        self.fetched += len(got)
        return got

    async def _retrying(self, what: str, attempt: Any) -> Any:
        """``attempt()`` until it works or the timeout ran out (a hanging attempt is cut at
        the deadline too: the transport's own timeouts may be longer); an integrity error at
        once."""
        delays = retry_delays(self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                return await at_most(attempt(), max(0.1, deadline - loop.time()))
            except RemoteIntegrityError:
                raise  # the stored data is not what was written: never served, never retried
            except Exception as exc:
                delay = next(delays, None)
                if delay is None or loop.time() >= deadline:
                    log.error("%s: %s still unreachable after %.0f s (%r): the read fails "
                              "(the VM pauses)", self.store.root, what, self.timeout, exc)
                    raise
                log.warning("%s: fetching %s failed (%r); again in %.1f s", self.store.root,
                            what, exc, delay)
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))

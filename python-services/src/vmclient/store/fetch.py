"""The download half of a chunk store: the chunks a :class:`~.plan.DownloadPlan` reads,
from ranged reads of packs, checked.

Each ranged read is opened (decrypted, decompressed, checked against its id) or
only authenticated in worker threads as it arrives, several reads in flight at
once (a transport with several connections serves them in parallel).  A bad
blob hands on the good ones before it, then its error is raised.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from ..errors import VMClientError
from . import buffers, crypto, layout, pipeline
from .objects import BlobRef
from .plan import DownloadPlan, ReadRange
from .remote import RangeReader, RemoteStore


class ChunkFetcher:
    """Reads the chunks of the packs under ``root`` of ``remote``, sealed with ``keys``
    (:class:`~.chunkstore.ChunkStore` is one, with the upload and the index)."""

    remote: RemoteStore
    root: str
    keys: crypto.KeySet


    async def read_range(self, read: ReadRange, into: bytearray | None = None
                         ) -> bytes | bytearray | memoryview:
        """The bytes of one ranged pack read, unchecked: into a buffer of their own (or
        ``into``, at least ``read.length`` bytes) if the store can
        (:class:`~.remote.RangeReader`: no copy), else through ``get``."""
        path = layout.pack(self.root, read.pack)
        if isinstance(self.remote, RangeReader):
            if into is None:
                return await self.remote.get_range(path, read.offset, read.length)
            return await self.remote.get_range(path, read.offset, read.length, into)
        return await self.remote.get(path, read.offset, read.length)

    async def fetch_into(self, plan: DownloadPlan,
                         sink: Callable[[Sequence[tuple[bytes, bytes]]], None], *,
                         concurrency: int = 4) -> None:
        """Fetch every chunk the plan reads and hand the verified plaintexts to ``sink``.

        Unlike :meth:`fetch`, the chunks of each ranged read are opened and
        given to ``sink`` in worker threads, several ranges at once and in no
        particular order: ``sink`` must be thread-safe (``pwrite`` at distinct
        offsets is).  Up to ``concurrency`` reads are in flight.
        """
        with buffers.steady():
            await self._fetch_into(plan, sink, concurrency)

    async def _fetch_into(self, plan: DownloadPlan,
                          sink: Callable[[Sequence[tuple[bytes, bytes]]], None],
                          concurrency: int) -> None:
        n = pipeline.workers()
        pool = pipeline.executor(n, "vmclient-open")

        def get(read: ReadRange) -> asyncio.Future[bytes | bytearray | memoryview]:
            return asyncio.ensure_future(self.read_range(read))

        def handle(read: ReadRange, untrusted: bytes | bytearray | memoryview) -> None:
            opened, error = pipeline.open_range(self.keys, read, untrusted,
                                                layout.pack(self.root, read.pack))
            sink([(cid, data) for cid, _ref, _blob, data in opened])
            if error is not None:
                raise error

        try:
            await pipeline.opened_ranges(plan.reads, get, handle, pool,
                                         concurrency=concurrency, depth=2 * n)
        finally:
            pool.shutdown(wait=False)

    async def fetch(self, plan: DownloadPlan, *, concurrency: int = 4
                    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """(chunk id, verified plaintext) for every chunk the plan reads."""
        async for cid, _ref, _blob, data in self.fetch_blobs(plan, concurrency=concurrency):
            yield cid, data

    async def fetch_sealed(self, plan: DownloadPlan, *, concurrency: int = 4,
                           keep: Callable[[list[pipeline.Authenticated]], None] | None = None
                           ) -> AsyncGenerator[list[tuple[bytes, BlobRef, memoryview]], None]:
        """The blobs of each ranged read the plan makes, authenticated but not opened:
        (chunk id, index entry, sealed blob: a view into the range read) per blob.  The
        views are released when the next range is asked for (its buffer is filled again).

        For a reader that keeps the chunks sealed and opens each one when it uses
        it (the Receiver's cache): every blob passed
        :func:`~.pack.authenticate_blob` (AEAD with its id bound in), so nobody
        without the key made it, and what it holds is checked against its id
        when it is opened.  Up to ``concurrency`` reads are in flight; each range
        is checked in a worker thread as it arrives and handed on as soon as it
        is, in no particular order.  A range with a bad blob hands on the blobs
        before it, then its error is raised.  A read that fails (the transport's
        error) starts no more; the reads in flight are handed on as they end, then
        the error is raised, so a resumed download need not fetch them again.

        ``keep`` (thread-safe: a locked cache append) is given the authenticated
        blobs in the worker thread, batch by batch as they pass
        (:func:`~.pipeline.authenticate_range`), before they are handed on; no call
        of it runs any more once this generator has ended.
        """
        loop = asyncio.get_running_loop()
        pool = pipeline.executor(pipeline.workers(), "vmclient-auth")
        spare = buffers.Reused(max((read.length for read in plan.reads), default=0),
                               isinstance(self.remote, RangeReader))

        async def read_and_check(read: ReadRange) -> tuple[
                bytearray | None, list[tuple[bytes, BlobRef, memoryview]],
                VMClientError | None]:
            buf = await spare.take(pool)
            untrusted = await self.read_range(read, buf)
            blobs, error = await loop.run_in_executor(
                pool, pipeline.authenticate_range, self.keys, read, untrusted,
                layout.pack(self.root, read.pack), keep)
            return buf, blobs, error

        reads = iter(plan.reads)
        running: set[asyncio.Task[tuple[bytearray | None,
                                        list[tuple[bytes, BlobRef, memoryview]],
                                        VMClientError | None]]] = set()

        def start_next() -> None:
            read = next(reads, None)
            if read is not None:
                running.add(asyncio.ensure_future(read_and_check(read)))

        failed: Exception | None = None  # a read that failed: the others in flight end first
        with buffers.steady():
            try:
                for _ in range(max(1, concurrency)):
                    start_next()
                while running:
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    task = done.pop()  # (the others stay in running: the next wait is at once)
                    running.discard(task)
                    try:
                        buf, blobs, error = task.result()
                    except Exception as exc:  # raised below, once the reads in flight
                        failed = failed or exc  # brought what they could (a resume need
                        continue  # not fetch them again)
                    if failed is None:
                        start_next()
                    if blobs:
                        yield blobs
                    if error is not None:
                        raise error
                    spare.give_back(buf, blobs)
                if failed is not None:
                    raise failed
            finally:
                await _cancel(running)
                pool.shutdown(wait=keep is not None)  # (a check already running still keeps)

    async def fetch_blobs(self, plan: DownloadPlan, *, concurrency: int = 4
                          ) -> AsyncIterator[tuple[bytes, BlobRef, memoryview, bytes]]:
        """(chunk id, index entry, sealed blob, verified plaintext) per chunk the plan reads.

        The sealed blob (checked: it opened to the plaintext; a view into the range
        read) lets a reader keep a local chunk cache that stays encrypted.  Chunks
        come in plan order; up to ``concurrency`` ranged reads are in flight at once
        (a transport with several connections, such as SFTP, serves them in
        parallel), and each is opened (decrypted, decompressed, checked) in a worker
        thread as soon as it arrives.
        """
        loop = asyncio.get_running_loop()
        # one thread more than the sealing pool: while one waits for the GIL, the others
        # keep the cores busy with HMAC and zstd (which release it)
        pool = pipeline.executor(pipeline.workers() + 1, "vmclient-open")

        async def read_and_open(read: ReadRange) -> tuple[
                list[tuple[bytes, BlobRef, memoryview, bytes]], VMClientError | None]:
            untrusted = await self.read_range(read)
            return await loop.run_in_executor(pool, pipeline.open_range, self.keys, read,
                                              untrusted, layout.pack(self.root, read.pack))

        reads = iter(plan.reads)
        pending: deque[asyncio.Task[tuple[list[tuple[bytes, BlobRef, memoryview, bytes]],
                                          VMClientError | None]]] = deque()

        def start_next() -> None:
            read = next(reads, None)
            if read is not None:
                pending.append(asyncio.ensure_future(read_and_open(read)))

        with buffers.steady():
            try:
                for _ in range(max(1, concurrency)):
                    start_next()
                while pending:
                    opened, error = await pending.popleft()
                    start_next()
                    for item in opened:  # the good blobs before a bad one, too
                        yield item
                    if error is not None:
                        raise error
            finally:
                await _cancel(pending)
                pool.shutdown(wait=False)


async def _cancel(reads: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the reads still in flight and wait until each has ended."""
    tasks = list(reads)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

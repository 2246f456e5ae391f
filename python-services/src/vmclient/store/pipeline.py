"""The CPU-heavy steps of the data path, run in worker threads off the event loop.

Upload: the chunk source (read + HMAC) runs in one reader thread, batches of
new chunks are compressed and sealed (:func:`seal_batch`) in a small pool of
worker threads, and the caller assembles packs from the sealed batches *in
submission order* (so a pack's content does not depend on thread timing) and
uploads several packs at once.  Download: ranged pack reads are opened
(:func:`open_range`: AES-GCM, zstd, HMAC check) and handed to the caller's
sink in the same pool, so decryption, decompression and the writes of a
restore overlap with the transfers; a reader that keeps the chunks sealed (the
Receiver's cache) only authenticates them there (:func:`authenticate_range`:
AES-GCM) and opens each when it uses it.

zstd, HMAC-SHA-256 and ``pwrite`` release the GIL on 64 KiB buffers (AES-GCM,
~10 µs per chunk, does not), so on a machine with several cores the workers
run in parallel with each other and with the transport (whose SSH crypto
runs in OpenSSH's ``ssh`` processes: :mod:`vmclient.transport.ssh`).  Sizes are
bounded: at most ``depth`` batches are being sealed or opened at once.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
    Set,
)
from concurrent.futures import ThreadPoolExecutor

from ..errors import VMClientError
from . import crypto
from .chunker import Chunk
from .objects import BlobRef
from .pack import authenticate_blob, open_blob, seal_chunk
from .plan import ReadRange

SEAL_BATCH = 64  # chunks per worker task (4 MiB of 64 KiB chunks)
Sealed = tuple[bytes, bytes, int]  # chunk id, sealed blob, plaintext length


def workers() -> int:
    """Worker threads for sealing and opening: one per core, 2 to 4."""
    return max(2, min(4, os.cpu_count() or 2))


def seal_batch(keys: crypto.KeySet, level: int | None, chunks: Sequence[Chunk]) -> list[Sealed]:
    return [(c.id, seal_chunk(keys, c.id, c.data, level), len(c.data)) for c in chunks]


def open_range(keys: crypto.KeySet, read: ReadRange, untrusted: bytes | bytearray | memoryview,
               path: str
               ) -> tuple[list[tuple[bytes, BlobRef, memoryview, bytes]], VMClientError | None]:
    """(chunk id, index entry, sealed blob, verified plaintext) per blob of one ranged read,
    up to the first blob that does not open, and that blob's error (else None).

    The blobs before a bad one are good and returned, so a caller that keeps
    what arrived (a resume journal) keeps them too.
    """
    view = memoryview(untrusted)
    out = []
    for cid, ref in read.blobs:
        start = ref.offset - read.offset
        blob = view[start:start + ref.length]  # a view: no copy
        try:
            out.append((cid, ref, blob, open_blob(keys, cid, ref, blob, path)))
        except VMClientError as exc:
            return out, exc
    return out, None


Authenticated = tuple[bytes, BlobRef, memoryview]  # chunk id, index entry, sealed blob
KEEP_BYTES = 256 << 10  # blobs handed to ``keep`` at once (while still in the CPU's cache)


def authenticate_range(keys: crypto.KeySet, read: ReadRange,
                       untrusted: bytes | bytearray | memoryview,
                       path: str, keep: Callable[[list[Authenticated]], None] | None = None
                       ) -> tuple[list[Authenticated], VMClientError | None]:
    """(chunk id, index entry, sealed blob) per blob of one ranged read that
    :func:`~.pack.authenticate_blob` accepts, up to the first it refuses, and that
    blob's error (else None): :func:`open_range` for a reader that keeps the chunks
    sealed and opens them when it uses them.

    ``keep`` (a cache's append) is given the accepted blobs in batches of about
    :data:`KEEP_BYTES`, each right after it was authenticated: its bytes are copied
    on while the CPU's cache still holds them, not read from memory once more.
    """
    view = memoryview(untrusted)
    out: list[Authenticated] = []
    start_of_batch, size = 0, 0
    for cid, ref in read.blobs:
        start = ref.offset - read.offset
        blob = view[start:start + ref.length]  # a view: no copy
        try:
            authenticate_blob(keys, cid, ref, blob, path)
        except VMClientError as exc:
            if keep is not None and start_of_batch < len(out):
                keep(out[start_of_batch:])
            return out, exc
        out.append((cid, ref, blob))
        size += ref.length
        if keep is not None and size >= KEEP_BYTES:
            keep(out[start_of_batch:])
            start_of_batch, size = len(out), 0
    if keep is not None and start_of_batch < len(out):
        keep(out[start_of_batch:])
    return out, None


class NewChunks:
    """Batches of the chunks a store lacks, pulled from ``source`` in a thread of their own.

    Zero chunks, chunks in ``known`` and chunks already taken are skipped.  Only
    one thread pulls at a time (the source is a plain iterator); ``stop`` makes
    the next pull end the stream, so an upload that failed stops reading.
    """

    def __init__(self, source: Iterator[Chunk], known: Mapping[bytes, BlobRef] | Set[bytes],
                 batch: int = SEAL_BATCH) -> None:
        self.source, self.known, self.batch = source, known, batch
        self.seen: set[bytes] = set()
        self.stopped = False

    def take(self) -> tuple[list[Chunk], bool]:
        """(next batch, whether the source is exhausted)."""
        out: list[Chunk] = []
        for chunk in self.source:
            if self.stopped:
                return out, True
            if chunk.is_zero or chunk.id in self.known or chunk.id in self.seen:
                continue
            self.seen.add(chunk.id)
            out.append(chunk)
            if len(out) >= self.batch:
                return out, False
        return out, True


async def sealed_batches(source: NewChunks, keys: crypto.KeySet, level: int | None,
                         pool: ThreadPoolExecutor, reader: ThreadPoolExecutor,
                         *, depth: int) -> AsyncGenerator[list[Sealed], None]:
    """Sealed batches in source order; reading runs ahead while earlier batches seal."""
    loop = asyncio.get_running_loop()
    sealing: deque[asyncio.Future[list[Sealed]]] = deque()
    pending: asyncio.Future[tuple[list[Chunk], bool]] | None = loop.run_in_executor(
        reader, source.take)
    try:
        while pending is not None or sealing:
            if pending is not None and len(sealing) < depth:
                batch, done = await pending
                pending = None if done else loop.run_in_executor(reader, source.take)
                if batch:
                    sealing.append(loop.run_in_executor(pool, seal_batch, keys, level, batch))
                continue
            yield await sealing.popleft()
    finally:
        source.stopped = True
        await asyncio.gather(*sealing, *([pending] if pending is not None else []),
                             return_exceptions=True)


async def opened_ranges(reads: Sequence[ReadRange],
                        get: Callable[[ReadRange], asyncio.Future[bytes | bytearray | memoryview]],
                        handle: Callable[[ReadRange, bytes | bytearray | memoryview], None],
                        pool: ThreadPoolExecutor, *, concurrency: int, depth: int) -> None:
    """Fetch every read (``concurrency`` in flight) and run ``handle`` on it in ``pool``.

    ``handle`` runs in worker threads, several at once and in no particular
    order; the first error (transfer or handler) is raised after the work in
    flight has ended.
    """
    loop = asyncio.get_running_loop()
    todo = iter(reads)
    downloads: deque[tuple[ReadRange, asyncio.Future[bytes | bytearray | memoryview]]] = deque()
    handling: set[asyncio.Future[None]] = set()
    handlers: list[asyncio.Future[None]] = []  # all, so every failure is retrieved below

    def start_next() -> None:
        read = next(todo, None)
        if read is not None:
            downloads.append((read, get(read)))

    try:
        for _ in range(max(1, concurrency)):
            start_next()
        while downloads:
            read, task = downloads.popleft()
            untrusted = await task
            start_next()
            handlers.append(loop.run_in_executor(pool, handle, read, untrusted))
            handling.add(handlers[-1])
            while len(handling) >= depth:
                done, _ = await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
                handling -= done
                for f in done:
                    f.result()
        while handling:
            done, _ = await asyncio.wait(handling, return_when=asyncio.FIRST_COMPLETED)
            handling -= done
            for f in done:
                f.result()
    finally:
        for _read, task in downloads:
            task.cancel()
        await asyncio.gather(*(t for _r, t in downloads), *handlers, return_exceptions=True)


def executor(n: int, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix=name)


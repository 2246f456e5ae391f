"""Transfers without page faults: glibc keeps the buffers freed during a transfer.

A sync, a restore or a download allocates and frees buffers of 64 KiB to
16 MiB at hundreds of MiB/s: NBD reads, sealed chunks, packs, ranged reads.
With glibc's defaults a buffer above the ``mmap`` threshold (128 KiB, raised
dynamically as buffers are freed) gets pages of its own that are unmapped when
it is freed, and a heap whose free top exceeds the trim threshold is shrunk.
Either way the next buffer is faulted in again page by page, each page zeroed
by the kernel: one fault per 4 KiB moved.  Measured on the 2-core reference
machine, reading 1.5 GiB of a disk through NBD and hashing it: 369,000 faults
and 0.7-1.0 CPU-s of the 2.3-2.5 the read costs.

While a transfer runs (:func:`steady`, used by :class:`.chunkstore.ChunkStore`),
buffers up to 32 MiB (glibc's largest ``M_MMAP_THRESHOLD``) come from the heap
and up to 512 MiB of free heap is kept; when the last transfer of the process
ends, the thresholds are set back to glibc's initial values and
``malloc_trim(0)`` gives the free memory back to the system, so an idle daemon
stays small.  On a C library without these calls (musl) this does nothing.

Besides, a download's ranged reads are received into a few buffers that are filled
again (:class:`Reused`), not a new zero-filled one per range.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
DEFAULT_TRIM = DEFAULT_MMAP = 128 << 10  # glibc's defaults
TRANSFER_TRIM, TRANSFER_MMAP = 512 << 20, 32 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _libc()


def _set(trim: int, mmap: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(_M_TRIM_THRESHOLD, trim)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap)


class _Transfers:
    """How many transfers of this process run now (the thresholds are process-wide)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0

    def begin(self) -> None:
        with self.lock:
            if self.active == 0:
                _set(TRANSFER_TRIM, TRANSFER_MMAP)
            self.active += 1

    def end(self) -> None:
        with self.lock:
            self.active -= 1
            if self.active == 0:
                _set(DEFAULT_TRIM, DEFAULT_MMAP)
                if _LIBC is not None:
                    _LIBC.malloc_trim(0)


_TRANSFERS = _Transfers()


@contextlib.contextmanager
def steady() -> Iterator[None]:
    """Keep freed buffers for the next ones while the block runs (nestable, any thread)."""
    _TRANSFERS.begin()
    try:
        yield
    finally:
        _TRANSFERS.end()


class Reused:
    """The buffers of ``size`` bytes a download's ranged reads are received into, each
    filled again once the blobs in it were handed on: not zero-filled (nor faulted in)
    again for every range.  Only for a store that reads into a given buffer
    (``enabled``); else :meth:`take` gives None (the store's own buffer)."""

    def __init__(self, size: int, enabled: bool) -> None:
        self.size, self.enabled = size, enabled
        self.spare: list[bytearray] = []

    async def take(self, pool: Executor) -> bytearray | None:
        if not self.enabled:
            return None
        if self.spare:
            return self.spare.pop()
        # (a new one zero-filled in a worker, not on the event loop)
        return await asyncio.get_running_loop().run_in_executor(pool, bytearray, self.size)

    def give_back(self, buf: bytearray | None,
                  blobs: Sequence[tuple[object, object, memoryview]]) -> None:
        """``buf``'s blobs were handed on and used: their views are released (a use
        after this raises rather than reading the next range's bytes), then ``buf`` is
        filled again; if a view is still held elsewhere, ``buf`` is left to it."""
        if buf is None:
            return
        try:
            for _cid, _ref, view in blobs:
                view.release()
        except BufferError:
            return
        self.spare.append(buf)

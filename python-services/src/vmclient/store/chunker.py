"""Fixed-size chunking of a guest-visible disk (or a saved memory image).

Why fixed-size and not content-defined: a VM disk is a block device whose
changes QEMU reports as a dirty bitmap of fixed-size clusters; chunk ``i`` is
always bytes ``[i*C, (i+1)*C)`` of the guest-visible disk, so an incremental
sync reads and hashes only the dirty chunks, and a restore writes each chunk at
a known offset.  Content-defined chunking would need the whole disk re-read to
find boundaries (as restic and borg do).

Chunk size (``DEFAULT_CHUNK_SIZE``, 64 KiB): the qcow2 cluster size and QEMU's
default dirty-bitmap granularity.  Larger chunks amplify scattered writes (one
64 KiB guest write dirties a whole 1 MiB chunk: 16x the upload); smaller ones
multiply per-chunk costs.  Chunks are stored in packs, so object count does not
grow with it.  The repository fixes the size in its ``config``; allowed are
powers of two from 64 KiB to 1 MiB, and the bitmap granularity must divide it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .crypto import chunk_id
from .errors import LocalSyncError
from .objects import ZERO_ID

DEFAULT_CHUNK_SIZE = 64 << 10
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 1 << 20


def check_chunk_size(chunk_size: int, bitmap_granularity: int | None = None) -> int:
    if not (MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE) or chunk_size & (chunk_size - 1):
        raise LocalSyncError(
            f"chunk size {chunk_size} must be a power of two from {MIN_CHUNK_SIZE} to "
            f"{MAX_CHUNK_SIZE}")
    if bitmap_granularity is not None and (
            bitmap_granularity <= 0 or chunk_size % bitmap_granularity):
        raise LocalSyncError(f"dirty-bitmap granularity {bitmap_granularity} does not divide "
                             f"the chunk size {chunk_size}")
    return chunk_size


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


@dataclass(frozen=True)
class Chunk:
    index: int
    id: bytes  # ZERO_ID for an all-zero chunk
    data: bytes  # empty for a zero chunk

    @property
    def is_zero(self) -> bool:
        return self.id == ZERO_ID


class Chunker:
    """Cuts buffers at fixed offsets and names the pieces; zero chunks are not hashed."""

    def __init__(self, id_key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.id_key = id_key
        self.chunk_size = check_chunk_size(chunk_size)
        self._zeros = bytes(chunk_size)

    def chunk(self, index: int, data: bytes) -> Chunk:
        if len(data) > self.chunk_size or not data:
            raise LocalSyncError(f"chunk {index} has {len(data)} bytes")
        if data == self._zeros[:len(data)]:
            return self.zero(index)
        return Chunk(index, chunk_id(self.id_key, data), data)

    @staticmethod
    def zero(index: int) -> Chunk:
        """Chunk ``index`` known to read as zeros (a zero extent): nothing to read or hash."""
        return Chunk(index, ZERO_ID, b"")

    def split(self, data: bytes, first_index: int = 0) -> Iterator[Chunk]:
        """Chunks of a buffer that starts at chunk boundary ``first_index``."""
        size = self.chunk_size
        for n, off in enumerate(range(0, len(data), size)):
            yield self.chunk(first_index + n, data[off:off + size])


def dirty_chunks(extents: Iterable[tuple[int, int]], chunk_size: int, disk_size: int) -> list[int]:
    """Sorted indices of the chunks touched by dirty ``(offset, length)`` extents."""
    last = chunk_count(disk_size, chunk_size) - 1
    out: set[int] = set()
    for offset, length in extents:
        if offset < 0 or length <= 0 or offset + length > disk_size:
            raise LocalSyncError(f"dirty extent ({offset}, {length}) outside a "
                                 f"{disk_size}-byte disk")
        out.update(range(offset // chunk_size, min((offset + length - 1) // chunk_size, last) + 1))
    return sorted(out)


def chunk_span(index: int, chunk_size: int, disk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` on the disk; the last chunk may be short."""
    offset = index * chunk_size
    if not 0 <= offset < disk_size:
        raise LocalSyncError(f"chunk {index} is outside a {disk_size}-byte disk")
    return offset, min(chunk_size, disk_size - offset)

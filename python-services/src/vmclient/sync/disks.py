"""Reading a captured disk: which chunks changed, and their bytes.

A *capture* is something holding a consistent point of one guest-visible disk,
read at guest offsets through QEMU's NBD server (:mod:`.nbd`):

* a running VM: the export of a libvirt pull-mode backup job.  A full read
  takes the export's allocation (``qemu-img map`` over NBD): data extents are
  read, zero ones are not.  An incremental read takes the clusters **dirty
  since the checkpoint** (QEMU's persistent dirty bitmap, the export's
  ``qemu:dirty-bitmap:backup-<disk>`` context, :func:`parse_dirty`); everything
  else is unchanged and never read.
* a stopped VM: its disk at rest, served read-only by ``qemu-nbd`` (a LUKS
  qcow2 with its passphrase), mapped with ``qemu-img map`` (backing files and
  formats are QEMU's business).

A memory image is a plain file, read whole with ``pread``.

Dirty extents must cover whole chunks (the bitmap granularity is the 64 KiB
cluster size = the chunk size); otherwise :class:`PartialChunk` asks the engine
for a full read.  Consecutive chunks are read together, up to ``READ_RUN``
bytes per request.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..store.chunker import Chunk, Chunker, chunk_count
from ..store.errors import LocalSyncError


class PartialChunk(LocalSyncError):
    """{}"""


READ_RUN = 1 << 20  # one read request covers up to this many bytes of consecutive chunks
PREFETCH = 2  # reads per fetch thread in flight ahead of the consumer
FETCH_THREADS = 2  # threads reading and hashing a capture (NBD connections to it)


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    zero: bool
    offset: int | None  # where the data is read (guest offset; host offset of a plain file)


def qemu_img(*args: str) -> str:
    try:
        out = subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise LocalSyncError("qemu-img is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise LocalSyncError(f"qemu-img {args[0]}: {exc.stderr.strip()}") from exc
    return out.stdout


def virtual_size(path: str | Path) -> int:
    """Guest-visible size; ``-U``: the disk may be in use by a running VM."""
    return int(json.loads(qemu_img("info", "-U", "--output=json", str(path)))["virtual-size"])


def parse_map(untrusted_json: str) -> list[Extent]:
    """The extents of ``qemu-img map --output=json`` of a disk read through QEMU (NBD).

    An extent that reads as zeros (``"zero": true`` without data) is not read; any
    other is, at its guest offset, even one QEMU calls neither data nor zero.
    """
    out = []
    for start, length, zero_flag, data in _extents(untrusted_json):
        zero = zero_flag and not data
        out.append(Extent(start, length, zero, None if zero else start))
    return out


def parse_dirty(untrusted_json: str) -> list[Extent]:
    """The dirty extents of ``qemu-img map --output=json`` over an NBD export read with
    ``x-dirty-bitmap`` (:func:`.nbd.map_export`): QEMU reports the bitmap in place of
    the allocation, inverted, so a dirty extent is one *without* data.  Each is read
    at its guest offset (a cluster zeroed since is read as zeros: a change too)."""
    out = []
    for start, length, _zero, data in _extents(untrusted_json):
        if not data:
            out.append(Extent(start, length, False, start))
    return out


def _extents(untrusted_json: str) -> list[tuple[int, int, bool, bool]]:
    """(start, length, zero, data) of each extent ``qemu-img map --output=json`` printed."""
    try:
        untrusted = json.loads(untrusted_json)
    except (ValueError, RecursionError) as exc:
        raise LocalSyncError(f"qemu-img map printed no JSON list of extents: {exc}") from None
    if not isinstance(untrusted, list):
        raise LocalSyncError("qemu-img map printed no JSON list of extents")
    for i, e in enumerate(untrusted):
        if not (isinstance(e, dict) and all(type(e.get(k)) is int and e[k] >= 0
                                            for k in ("start", "length"))
                and all(type(e.get(k)) is bool for k in ("zero", "data"))):
            raise LocalSyncError(f"qemu-img map: extent {i} is not one QEMU prints: {e!r:.200}")
    return [(e["start"], e["length"], e["zero"], e["data"]) for e in untrusted]


def whole_file(size: int, chunk_size: int) -> dict[int, tuple[Extent, int]]:
    """Every chunk of a plain file read as it is (a memory image): all data."""
    return raw_chunks([Extent(0, size, False, 0)], chunk_size, size)


def covered_chunks(extents: Sequence[Extent], chunk_size: int, size: int
                   ) -> dict[int, tuple[Extent, int]]:
    """Chunk index → (extent, offset of the chunk within it) for every covered chunk.

    A chunk only partly covered (an extent not on chunk boundaries) raises
    :class:`PartialChunk`: the rest of it is not in the capture.
    """
    out: dict[int, tuple[Extent, int]] = {}
    for e in extents:
        end = e.start + e.length
        if e.start % chunk_size or (end % chunk_size and end != size):
            raise PartialChunk(f"dirty extent [{e.start}, {end}) is not on {chunk_size}-byte "
                               "chunk boundaries")
        for i in range(e.start // chunk_size, chunk_count(end, chunk_size)):
            out[i] = (e, i * chunk_size - e.start)
    return out


def raw_chunks(extents: Sequence[Extent], chunk_size: int, size: int
               ) -> dict[int, tuple[Extent, int]]:
    """Every chunk of a whole raw file: read where any data extent overlaps it.

    A raw file's extents follow the file system's holes (4 KiB), not chunks;
    a raw file's host offset is the guest offset.
    """
    data: set[int] = set()
    for e in extents:
        if e.offset is not None:
            data.update(range(e.start // chunk_size, chunk_count(e.start + e.length, chunk_size)))
    out: dict[int, tuple[Extent, int]] = {}
    for i in range(chunk_count(size, chunk_size)):
        start = i * chunk_size
        length = min(chunk_size, size - start)
        out[i] = (Extent(start, length, i not in data, start if i in data else None), 0)
    return out


@dataclass(frozen=True)
class Read:
    """Chunks ``indices`` whose data lie back to back in the capture at ``offset``
    (``None``: zero chunks, nothing to read), ``length`` bytes in all."""

    indices: tuple[int, ...]
    offset: int | None
    length: int


def plan_reads(covered: dict[int, tuple[Extent, int]], chunk_size: int, size: int
               ) -> list[Read]:
    """The covered chunks in order: runs of data chunks back to back in the capture as
    reads of up to :data:`READ_RUN` bytes, runs of zero chunks as one entry each."""
    out: list[Read] = []
    run: list[int] = []
    zero = False
    start = end = 0
    for i in sorted(covered):
        e, within = covered[i]
        n = min(chunk_size, size - i * chunk_size)
        if run and i == run[-1] + 1 and (
                (zero and e.offset is None)
                or (not zero and e.offset is not None and e.offset + within == end
                    and end - start < READ_RUN)):
            run.append(i)
            end += n
            continue
        if run:
            out.append(Read(tuple(run), None if zero else start, end - start))
        if e.offset is None:
            zero, start = True, i * chunk_size
        else:
            zero, start = False, e.offset + within
        run, end = [i], start + n
    if run:
        out.append(Read(tuple(run), None if zero else start, end - start))
    return out


ReadRun = Callable[[Sequence[int], int], list[bytes]]  # chunk lengths, offset -> their bytes


def read_chunks(path: Path, covered: dict[int, tuple[Extent, int]], chunker: Chunker,
                size: int, readers: Sequence[ReadRun] = ()) -> Iterator[Chunk]:
    """The covered chunks, in order, read from the capture (zero extents not read).

    ``readers``: functions ``read_run(lengths, offset)`` reading the capture
    through QEMU (:mod:`.nbd`), one per connection; by default ``path`` is read
    directly.  Chunks whose data lie back to back are read with one call
    (:func:`plan_reads`), each chunk into an object of its own (no copy).  One
    thread per reader takes the next read of the plan, reads it and hashes its
    chunks, up to ``PREFETCH`` reads per thread ahead of the consumer, which
    takes them in order (and filters and seals them).
    """
    cs = chunker.chunk_size
    plan = plan_reads(covered, cs, size)
    with contextlib.ExitStack() as stack:
        if not readers:
            fd = stack.enter_context(open(path, "rb")).fileno()
            readers = [functools.partial(_read_run_fd, fd)] * FETCH_THREADS
        ahead = _ReadAhead(len(plan), PREFETCH * len(readers))

        def load(r: Read, read_run: ReadRun) -> list[Chunk]:
            if r.offset is None:
                return [chunker.zero(i) for i in r.indices]
            lengths = [min(cs, size - i * cs) for i in r.indices]
            return [chunker.chunk(i, d)
                    for i, d in zip(r.indices, read_run(lengths, r.offset), strict=True)]

        def fetch(read_run: ReadRun) -> None:
            while (j := ahead.take()) is not None:
                try:
                    item: list[Chunk] | BaseException = load(plan[j], read_run)
                except BaseException as exc:  # handed to the consumer, which raises it
                    item = exc
                ahead.put(j, item)
                if isinstance(item, BaseException):
                    return

        pool = stack.enter_context(ThreadPoolExecutor(len(readers), "vmclient-fetch"))
        stack.callback(ahead.stop)  # first on the way out: the fetchers end, the pool joins
        for read_run in readers:
            pool.submit(fetch, read_run)
        for j in range(len(plan)):
            item = ahead.get(j)
            if isinstance(item, BaseException):
                raise item
            yield from item


class _ReadAhead:
    """Which read of the plan a fetch thread does next, and the results in order.

    A thread takes the next read unless it would be more than ``window`` reads
    ahead of the consumer; the consumer gets read ``j`` when it is done, whichever
    thread did it (so a slow read holds up only itself).
    """

    def __init__(self, count: int, window: int) -> None:
        self.cond = threading.Condition()
        self.count, self.window = count, window
        self.next = self.consumed = 0
        self.done: dict[int, list[Chunk] | BaseException] = {}
        self.stopped = False

    def take(self) -> int | None:
        with self.cond:
            while not self.stopped and self.next < self.count \
                    and self.next >= self.consumed + self.window:
                self.cond.wait()
            if self.stopped or self.next >= self.count:
                return None
            self.next += 1
            return self.next - 1

    def put(self, j: int, item: list[Chunk] | BaseException) -> None:
        with self.cond:
            self.done[j] = item
            self.cond.notify_all()

    def get(self, j: int) -> list[Chunk] | BaseException:
        with self.cond:
            while j not in self.done:
                self.cond.wait()
            self.consumed = j + 1
            self.cond.notify_all()
            return self.done.pop(j)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def _read_run_fd(fd: int, lengths: Sequence[int], offset: int) -> list[bytes]:
    out = []
    for n in lengths:
        data = os.pread(fd, n, offset)
        if len(data) != n:  # only at the end of a file shorter than the disk
            raise LocalSyncError(f"short read of {n} bytes at {offset}: {len(data)}")
        out.append(data)
        offset += n
    return out


def raw_to_qcow2(raw: Path, dest: Path) -> None:
    """Convert (the caller makes the result durable as it renames it into place)."""
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-W", str(raw), str(dest))

"""Reading a captured disk: which chunks changed, and their bytes.

A *capture* is a file holding a consistent point of one guest-visible disk:

* a running VM: the target of a libvirt push-mode backup job.  A full backup is
  a standalone qcow2; an incremental one is a qcow2 overlay whose backing file
  is the live disk and which holds **only the clusters dirty since the
  checkpoint** (QEMU's persistent dirty bitmap).  ``qemu-img map`` reports
  those clusters at depth 0 (data with its host offset, or a zero cluster);
  everything deeper is unchanged and never read.
* a stopped VM: ``qemu-img convert`` of its disk at rest to a sparse raw file
  (a full read; backing files and formats are QEMU's business).

Depth-0 data extents of an uncompressed qcow2 or raw file are read with
``pread`` at the offset ``qemu-img map`` gives.  Dirty extents must cover whole
chunks (the bitmap granularity is the 64 KiB cluster size = the chunk size);
otherwise :class:`PartialChunk` asks the engine for a full read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store.chunker import Chunk, Chunker, chunk_count
from ..store.errors import LocalSyncError


class PartialChunk(LocalSyncError):
    """{}"""


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    zero: bool
    offset: int | None  # host offset of the data in the capture file


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


def parse_map(untrusted_json: str, *, guest_offsets: bool = False,
              all_depths: bool = False) -> list[Extent]:
    """Depth-0 extents of ``qemu-img map --output=json`` (what the file itself holds).

    ``guest_offsets``: the capture is read through QEMU (an encrypted qcow2,
    :mod:`.nbd`), so a data extent's offset is its guest offset.  ``all_depths``:
    every extent of the chain (a whole disk read through its backing files).
    """
    out = []
    for e in json.loads(untrusted_json):
        if not all_depths and (e.get("depth", 0) != 0 or not e.get("present", True)):
            continue
        start = int(e["start"])
        if e["data"] and not guest_offsets and "offset" not in e:
            raise LocalSyncError(f"extent at {start} has no host offset (compressed?)")
        offset = (start if guest_offsets else int(e["offset"])) if e["data"] else None
        out.append(Extent(start, int(e["length"]), bool(e["zero"] and not e["data"]), offset))
    return out


def whole_file(size: int, chunk_size: int) -> dict[int, tuple[Extent, int]]:
    """Every chunk of a plain file read as it is (a memory image): all data."""
    return raw_chunks([Extent(0, size, False, 0)], chunk_size, size)


def map_capture(path: Path) -> list[Extent]:
    return parse_map(qemu_img("map", "-U", "--output=json", str(path)))


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


def read_chunks(path: Path, covered: dict[int, tuple[Extent, int]], chunker: Chunker,
                size: int, pread: Callable[[int, int], bytes] | None = None
                ) -> Iterator[Chunk]:
    """The covered chunks, in order, read from the capture (zero extents not read).

    ``pread(length, offset)`` reads the capture another way than the file
    (through QEMU, :mod:`.nbd`); by default ``path`` is read directly.
    """
    cs = chunker.chunk_size
    with contextlib.ExitStack() as stack:
        read = pread
        if read is None:
            fd = stack.enter_context(open(path, "rb")).fileno()
            read = functools.partial(_pread_fd, fd)
        for i in sorted(covered):
            e, within = covered[i]
            length = min(cs, size - i * cs)
            if e.offset is None:
                yield chunker.chunk(i, bytes(length))
                continue
            data = read(length, e.offset + within)
            if len(data) != length:
                raise LocalSyncError(f"{path}: short read at chunk {i}")
            yield chunker.chunk(i, data)


def _pread_fd(fd: int, n: int, off: int) -> bytes:
    return os.pread(fd, n, off)


def convert_to_raw(source: str, fmt: str, dest: Path) -> None:
    """A stopped VM's disk at rest → sparse raw (takes QEMU's read lock meanwhile)."""
    qemu_img("convert", "-f", fmt, "-O", "raw", "-S", "64k", source, str(dest))


def raw_to_qcow2(raw: Path, dest: Path) -> None:
    """Convert and make the result durable (it is renamed into place next)."""
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-W", str(raw), str(dest))
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

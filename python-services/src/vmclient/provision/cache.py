"""Local state of the Receiver: the last catalog seen, and the chunk cache.

* ``catalog.json`` holds the highest catalog serial and its digest this laptop
  has accepted (root-only, replaced atomically).  A lower serial is a replay, a
  different catalog under the same serial an equivocation
  (``documents.check_catalog_fresh``).
* The chunk cache ``cache/<image>/*.seg`` holds every chunk of an image
  downloaded so far, **still sealed** with the image's content key (as it came
  from the pack; it was authenticated under its id before it was kept, and its
  content is checked against its id whenever it is opened).  It is
  the download journal: an interrupted download (dropped connection, reboot)
  resumes by fetching only the chunks the cache lacks, and a new image version
  fetches only the chunks that changed.  Entries are reopened (AEAD, id, length)
  whenever they are used; a torn entry after a power cut is dropped and fetched
  again.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..host.files import fsync_dir, write_private
from ..store.objects import BlobRef


class CatalogState:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "catalog.json"

    def load(self) -> tuple[int, str]:
        try:
            doc = json.loads(self.path.read_text())
            return int(doc["serial"]), str(doc["digest"])
        except FileNotFoundError:
            return 0, ""

    def save(self, serial: int, digest: str) -> None:
        write_private(self.path, json.dumps({"serial": serial, "digest": digest}).encode())


_REC = struct.Struct(">32sII")  # chunk id, plaintext length, sealed length
WRITEBACK = 64 << 20  # put_many fdatasyncs after this many bytes
_IOV_MAX = 512  # buffers per writev (Linux takes 1024)


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` in order, continuing after short writes."""
    views = [memoryview(p) for p in parts if p]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        while done:
            if done >= len(views[0]):
                done -= len(views.pop(0))
            else:
                views[0] = views[0][done:]
                done = 0


class ChunkCache:
    """Sealed chunks of one image, by chunk id, in append-only segment files.

    Each process that adds chunks appends to a segment of its own
    (``<time>-<random>.seg``): records ``chunk id (32) | plaintext length (u32)
    | sealed length (u32) | sealed blob``.  Loading scans the record headers;
    a record cut short by a crash ends its segment's scan.  An entry that does
    not reopen later drops its whole segment (fetched again next time).
    """

    def __init__(self, state_dir: Path, image: str) -> None:
        self.dir = state_dir / "cache" / image
        self._index: dict[bytes, tuple[Path, int, int, int]] | None = None
        self._writer: BinaryIO | None = None
        self._segment: Path | None = None
        self._readers: dict[Path, BinaryIO] = {}
        self._unsynced = 0  # bytes appended since the last fdatasync
        self._appending = threading.Lock()  # keep() runs in the download's worker threads
        self._syncing = False  # a keep() is fdatasyncing the segment (outside the lock)

    def _load(self) -> dict[bytes, tuple[Path, int, int, int]]:
        if self._index is None:
            self._index = {}
            if self.dir.is_dir():
                for seg in sorted(self.dir.glob("*.seg")):
                    self._scan(seg, self._index)
        return self._index

    @staticmethod
    def _scan(seg: Path, index: dict[bytes, tuple[Path, int, int, int]]) -> None:
        with open(seg, "rb") as f:
            size, off = os.fstat(f.fileno()).st_size, 0
            while off + _REC.size <= size:
                f.seek(off)
                cid, plain, length = _REC.unpack(f.read(_REC.size))
                if off + _REC.size + length > size:
                    break  # torn by a crash: the rest is fetched again
                index.setdefault(cid, (seg, off + _REC.size, length, plain))
                off += _REC.size + length

    def ids(self) -> set[bytes]:
        return set(self._load())

    def keep(self, blobs: Sequence[tuple[bytes, BlobRef, bytes | memoryview]]) -> None:
        """:meth:`put_many` of authenticated blobs (chunk id, index entry, sealed blob),
        from any thread: what :meth:`~vmclient.store.chunkstore.ChunkStore.fetch_sealed`
        is given to keep the blobs as its workers check them."""
        with self._appending:
            fd = self._append([(cid, ref.plain_length, sealed) for cid, ref, sealed in blobs],
                              writeback=False)
            if fd is None or self._syncing or self._unsynced < WRITEBACK:
                return
            self._syncing, self._unsynced = True, 0
        # the writeback outside the lock: the other workers go on appending meanwhile
        # (the fd stays open: close() comes after the download, when no keep() runs)
        try:
            os.fdatasync(fd)
        finally:
            with self._appending:
                self._syncing = False

    def put_many(self, entries: Sequence[tuple[bytes, int, bytes | memoryview]]) -> None:
        """Keep verified sealed chunks (appended; made durable by :meth:`sync`).

        Written with one ``writev`` (no copy); every ``WRITEBACK`` bytes the
        segment is also ``fdatasync``'ed, so that the final :meth:`sync` finds
        little left to write (run this beside the download, not in its way).
        """
        self._append(entries, writeback=True)

    def _append(self, entries: Sequence[tuple[bytes, int, bytes | memoryview]], *,
                writeback: bool) -> int | None:
        """Append ``entries`` (ids already kept are skipped); the segment's fd, None if
        nothing was to be kept.  ``writeback``: fdatasync here once ``WRITEBACK`` bytes
        are unsynced (:meth:`keep` does it outside its lock instead)."""
        index = self._load()
        if not entries:
            return None
        if self._writer is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._segment = self.dir / f"{time.time_ns()}-{secrets.token_hex(4)}.seg"
            self._writer = open(self._segment, "ab")  # noqa: SIM115  (closed by close())
        assert self._segment is not None
        fd = self._writer.fileno()
        end = base = os.lseek(fd, 0, os.SEEK_END)
        parts: list[bytes | memoryview] = []
        for cid, plain_length, sealed in entries:
            if cid in index:
                continue
            parts += [_REC.pack(cid, plain_length, len(sealed)), sealed]
            index[cid] = (self._segment, end + _REC.size, len(sealed), plain_length)
            end += _REC.size + len(sealed)
        _write_all(fd, parts)
        self._unsynced += end - base
        if writeback and self._unsynced >= WRITEBACK:
            os.fdatasync(fd)
            self._unsynced = 0
        return fd

    def get(self, cid: bytes) -> tuple[int, bytes] | None:
        entry = self._load().get(cid)
        if entry is None:
            return None
        seg, off, length, plain = entry
        f = self._readers.get(seg)
        if f is None:
            f = self._readers[seg] = open(seg, "rb")  # noqa: SIM115  (closed by close())
        f.seek(off)
        return plain, f.read(length)

    def drop(self, cid: bytes) -> None:
        """Forget the segment holding ``cid`` (its chunks are fetched again)."""
        entry = self._load().get(cid)
        if entry is None:
            return
        seg = entry[0]
        self.close()
        seg.unlink(missing_ok=True)
        self._index = {k: v for k, v in self._load().items() if v[0] != seg}

    def sync(self) -> None:
        """Make what was added durable (once per download, not per chunk)."""
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            fsync_dir(self.dir)

    def close(self) -> None:
        for f in [*self._readers.values(), *([self._writer] if self._writer else [])]:
            f.close()
        self._readers, self._writer, self._segment = {}, None, None

    def clear(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

"""The chunk source of a streamed restore (issue 19) over a slow link: the fill's
sequential reads land although one fixed 4 MiB read-ahead fetch would take longer than
the read timeout (a real store in a directory, its reads held to a link's rate)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from vmclient.provision.streamsource import ChunkSource
from vmclient.store import crypto
from vmclient.store.chunker import Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.transport.localfs import LocalDirStore

C = 65536
ROOT = "vms/dev/vm"


class SlowLink(LocalDirStore):
    """A repository behind one link of ``rate`` bytes/s: reads share it, one at a time."""

    def __init__(self, root: Path, rate: float) -> None:
        super().__init__(root)
        self.rate = rate
        self._link: asyncio.Lock | None = None

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        data = await super().get(path, offset, length)
        if self._link is None:
            self._link = asyncio.Lock()
        async with self._link:
            await asyncio.sleep(len(data) / self.rate)
        return data


def snapshot_disk(tmp_path: Path, mib: int) -> tuple[crypto.KeySet, bytes, bytes]:
    """A disk of random chunks in a chunk store under ``tmp_path``: keys, bytes, ids."""
    keys = crypto.KeySet.generate()
    data = random.Random(3).randbytes(mib << 20)
    chunker = Chunker(keys.chunk_id, C)
    chunks = [chunker.chunk(i, data[o:o + C]) for i, o in enumerate(range(0, len(data), C))]
    asyncio.run(ChunkStore(LocalDirStore(tmp_path), ROOT, keys).upload(iter(chunks), {}))
    return keys, data, b"".join(c.id for c in chunks)


def read_all(source: ChunkSource, size: int, step: int) -> bytes:
    """One read after the other, as QEMU's block-stream reads a disk."""
    try:
        source.open()
        return b"".join(source.pread(o, min(step, size - o)) for o in range(0, size, step))
    finally:
        source.close()


def test_the_fill_reads_a_disk_over_a_link_slower_than_one_big_read_ahead(
        tmp_path: Path) -> None:
    """3 MiB of random chunks at 1 MiB/s with a 2 s read timeout (scaled down from 30 s:
    a link under ~2 MiB/s could not land a 4 MiB read-ahead fetch in time): every
    sequential read succeeds and returns the disk's bytes, nothing fetched twice."""
    keys, data, ids = snapshot_disk(tmp_path, 3)
    source = ChunkSource(SlowLink(tmp_path, 1 << 20), ROOT, keys, ids, len(data), C,
                         timeout=2.0)
    assert read_all(source, len(data), C) == data
    assert source.fetched == len(data) // C


def test_a_read_across_several_missing_chunks_gets_them_all(tmp_path: Path) -> None:
    """Reads of several chunks at once, none local yet (the chunks of one fetch land
    together: a read waiting for the first must still find the others)."""
    keys, data, ids = snapshot_disk(tmp_path, 2)
    source = ChunkSource(LocalDirStore(tmp_path), ROOT, keys, ids, len(data), C, timeout=5.0)
    assert read_all(source, len(data), 5 * C + 123) == data

"""The pipelined data path: sealing in workers, packs uploaded in parallel, ranges opened
and written in workers; order, bounds and failures."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmclient.store import crypto, layout
from vmclient.store.chunker import Chunk, Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import encode_payload
from vmclient.store.objects import BlobRef, ChunkMap, Manifest
from vmclient.store.pack import authenticate_blob, open_blob
from vmclient.store.plan import DownloadPlan, plan_download
from vmclient.store.remote import MemoryStore
from vmclient.sync.restore import _write
from vmclient.sync.writeback import Writeback
from vmclient.tasks import at_most

from .helpers import flip

K = 64 << 10
ROOT = layout.image_store("win")


def chunks_of(keys: crypto.KeySet, n: int) -> list[Chunk]:
    data = b"".join(os.urandom(K) if i % 5 else bytes(K) for i in range(n))
    return list(Chunker(keys.chunk_id).split(data))


def manifest(keys: crypto.KeySet, chunks: list[Chunk]) -> Manifest:
    disk = ChunkMap("system", "system", len(chunks) * K, K, tuple(c.id for c in chunks))
    return Manifest("image", "win", "1", 1, 0, keys.check, (disk,))


class GatedStore(MemoryStore):
    """Pack uploads wait until ``parallel`` of them are in flight (or no more can come)."""

    def __init__(self, parallel: int, fail_at: int | None = None) -> None:
        super().__init__()
        self.parallel, self.fail_at = parallel, fail_at
        self.in_flight = self.most = self.started = 0
        self.gate = asyncio.Event()

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if "/packs/" not in path:
            return await super().put_atomic(path, data, exclusive=exclusive)
        self.started += 1
        number = self.started
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            if self.in_flight >= self.parallel:
                self.gate.set()
            await at_most(self.gate.wait(), 10)  # sequential uploads end here
            await asyncio.sleep(0)
            if number == self.fail_at:
                raise ConnectionResetError("dropped")
            await super().put_atomic(path, data, exclusive=exclusive)
        finally:
            self.in_flight -= 1


@pytest.mark.asyncio
async def test_packs_are_uploaded_in_parallel_within_the_bound_and_keep_chunk_order(
        keys: crypto.KeySet) -> None:
    chunks = chunks_of(keys, 160)

    store = GatedStore(parallel=3)
    cs = ChunkStore(store, ROOT, keys, pack_target=1 << 20, level=None, uploads=3)
    up = await cs.upload(chunks, {})
    assert up.packs >= 6 and up.chunks == 128
    index = dict(await ChunkStore(store, ROOT, keys).load_index())
    assert store.most == 3  # several at once, never more than the bound
    # blobs fill the packs in chunk order, whatever order the workers finished in
    refs = [index[c.id] for c in chunks if not c.is_zero]
    done: set[str] = set()
    for prev, ref in itertools.pairwise(refs):
        if ref.pack == prev.pack:
            assert ref.offset > prev.offset
        else:
            done.add(prev.pack)
            assert ref.pack not in done


@pytest.mark.asyncio
async def test_a_failed_pack_upload_writes_no_index_and_the_next_upload_sends_only_the_rest(
        keys: crypto.KeySet) -> None:
    chunks = chunks_of(keys, 160)

    store = GatedStore(parallel=2, fail_at=2)
    cs = ChunkStore(store, ROOT, keys, pack_target=1 << 20, level=None, uploads=2)
    with pytest.raises(ConnectionResetError):
        await cs.upload(chunks, {})
    assert not [p for p in store.objects if "/index/" in p]
    arrived = [p for p in store.objects if "/packs/" in p]
    assert arrived  # the pack in flight beside the failed one was finished, not dropped
    store.fail_at = None
    again = ChunkStore(store, ROOT, keys, pack_target=1 << 20, level=None, uploads=2)
    known = await again.load_index()  # read by header: no index names them
    assert len(known) == len(arrived) * 16
    up = await again.upload(chunks, known)
    assert up.chunks == 128 - len(known)
    m = manifest(keys, chunks)
    plan = plan_download(m, set(), await again.load_index(), store_path=ROOT)
    got: dict[bytes, bytes] = {}
    await again.fetch_into(plan, got.update)
    assert got == {c.id: c.data for c in chunks if not c.is_zero}


@pytest.mark.asyncio
async def test_an_error_of_the_chunk_source_stops_the_upload(keys: crypto.KeySet) -> None:
    chunks = chunks_of(keys, 100)
    taken = []

    def source() -> Iterator[Chunk]:
        for i, c in enumerate(chunks):
            if i == 70:
                raise OSError("short read at chunk 70")
            taken.append(c)
            yield c

    store = MemoryStore()
    with pytest.raises(OSError, match="chunk 70"):
        await ChunkStore(store, ROOT, keys, pack_target=1 << 20).upload(source(), {})
    assert len(taken) == 70
    assert not [p for p in store.objects if "/index/" in p]


@pytest.mark.asyncio
async def test_fetch_into_refuses_a_tampered_pack_and_names_it(keys: crypto.KeySet) -> None:
    chunks = chunks_of(keys, 40)

    store = MemoryStore()
    cs = ChunkStore(store, ROOT, keys, pack_target=4 << 20)
    await cs.upload(chunks, {})
    (pack,) = [p for p in store.objects if "/packs/" in p]
    store.objects[pack] = flip(store.objects[pack], 5 * K + 100)
    plan = plan_download(manifest(keys, chunks), set(), await cs.load_index(),
                         store_path=ROOT)
    with pytest.raises(RemoteIntegrityError, match="authentication failed") as exc:
        await cs.fetch_into(plan, lambda items: None)
    assert pack in str(exc.value)


@pytest.mark.asyncio
async def test_fetch_sealed_hands_on_every_blob_authenticated_and_still_sealed(
        keys: crypto.KeySet) -> None:
    chunks = chunks_of(keys, 40)

    store = MemoryStore()
    cs = ChunkStore(store, ROOT, keys, pack_target=1 << 20)
    await cs.upload(chunks, {})
    index = await cs.load_index()
    plan = plan_download(manifest(keys, chunks), set(), index, store_path=ROOT,
                         max_read=256 << 10)
    got: dict[bytes, bytes] = {}
    async for blobs in cs.fetch_sealed(plan, concurrency=3):
        for cid, ref, sealed in blobs:
            assert ref == index[cid]
            got[cid] = open_blob(keys, cid, ref, sealed, "p")  # opened here, not before
    assert got == {c.id: c.data for c in chunks if not c.is_zero}


@pytest.mark.asyncio
async def test_fetch_sealed_fills_a_few_range_buffers_again_and_releases_what_it_handed_on(
        keys: crypto.KeySet) -> None:
    """A store that reads into a given buffer gets the same few buffers again (not one
    zero-filled per range); a view of an earlier range cannot read the next one's bytes."""
    chunks = chunks_of(keys, 48)

    class Ranged(MemoryStore):
        fresh = 0
        buffers: set[int] = set()

        async def get_range(self, path: str, offset: int, length: int,
                            into: bytearray | None = None) -> bytearray | memoryview:
            data = await self.get(path, offset, length)
            if into is None:
                self.fresh += 1
                return bytearray(data)
            self.buffers.add(id(into))
            into[:len(data)] = data
            return memoryview(into)[:len(data)]

    store = Ranged()
    cs = ChunkStore(store, ROOT, keys, pack_target=1 << 20)
    await cs.upload(chunks, {})
    index = await cs.load_index()
    plan = plan_download(manifest(keys, chunks), set(), index, store_path=ROOT,
                         max_read=256 << 10)
    assert len(plan.reads) >= 10
    got: dict[bytes, bytes] = {}
    earlier: list[memoryview] = []
    async for blobs in cs.fetch_sealed(plan, concurrency=3):
        for cid, ref, sealed in blobs:
            got[cid] = open_blob(keys, cid, ref, sealed, "p")
        earlier.append(blobs[0][2])
    assert got == {c.id: c.data for c in chunks if not c.is_zero}
    assert store.fresh == 0 and len(store.buffers) <= 3 + 1
    with pytest.raises(ValueError, match="released"):
        bytes(earlier[0])


async def tampered_in_the_fifth_blob(keys: crypto.KeySet) -> tuple[ChunkStore, str, DownloadPlan]:
    """A store of 40 chunks in one pack with a byte flipped in its fifth blob, and the
    download plan of all of them."""
    chunks = chunks_of(keys, 40)
    store = MemoryStore()
    cs = ChunkStore(store, ROOT, keys, pack_target=4 << 20)
    await cs.upload(chunks, {})
    (pack,) = [p for p in store.objects if "/packs/" in p]
    store.objects[pack] = flip(store.objects[pack], 5 * K + 100)
    plan = plan_download(manifest(keys, chunks), set(), await cs.load_index(),
                         store_path=ROOT)
    return cs, pack, plan


@pytest.mark.asyncio
async def test_fetch_sealed_refuses_a_tampered_blob_after_handing_on_the_ones_before_it(
        keys: crypto.KeySet) -> None:
    cs, pack, plan = await tampered_in_the_fifth_blob(keys)
    got = []
    with pytest.raises(RemoteIntegrityError, match="authentication failed") as exc:
        async for blobs in cs.fetch_sealed(plan):
            got += [cid for cid, _ref, _sealed in blobs]
    assert pack in str(exc.value)
    assert len(got) == 4  # the blobs before it, in its range


@pytest.mark.asyncio
async def test_fetch_sealed_keeps_in_its_workers_only_what_authenticated_before_handing_it_on(
        keys: crypto.KeySet) -> None:
    cs, _pack, plan = await tampered_in_the_fifth_blob(keys)
    kept: list[bytes] = []
    threads: set[str] = set()

    def keep(blobs: list[tuple[bytes, BlobRef, memoryview]]) -> None:
        threads.add(threading.current_thread().name)
        for cid, ref, sealed in blobs:
            open_blob(keys, cid, ref, sealed, "kept")  # whole, and the chunk it names
            kept.append(cid)

    handed: list[bytes] = []
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        async for blobs in cs.fetch_sealed(plan, keep=keep):
            assert {cid for cid, _ref, _sealed in blobs} <= set(kept)  # kept first
            handed += [cid for cid, _ref, _sealed in blobs]
    assert kept == handed and len(kept) == 4  # the blobs before the bad one, nothing after
    assert threads and all(t.startswith("vmclient-auth") for t in threads)


@pytest.mark.asyncio
async def test_fetch_sealed_hands_on_the_reads_in_flight_before_a_transport_error(
        keys: crypto.KeySet) -> None:
    """A dropped connection fails one read: what the others bring is kept for the resume."""
    chunks = chunks_of(keys, 40)

    class Dropping(MemoryStore):
        reads = 0

        async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
            if "/packs/" in path:
                self.reads += 1
                if self.reads == 2:
                    raise ConnectionResetError("dropped")  # before the others arrive
                await asyncio.sleep(0.01)
            return await super().get(path, offset, length)

    store = Dropping()
    cs = ChunkStore(store, ROOT, keys, pack_target=1 << 20)
    await cs.upload(chunks, {})
    plan = plan_download(manifest(keys, chunks), set(), await cs.load_index(),
                         store_path=ROOT, max_read=4 * (K + 64))
    got = []
    with pytest.raises(ConnectionResetError):
        async for blobs in cs.fetch_sealed(plan, concurrency=3):
            got += [cid for cid, _ref, _sealed in blobs]
    assert store.reads == 3  # no read started after the failure
    expected = {cid for read in (plan.reads[0], plan.reads[2]) for cid, _ref in read.blobs}
    assert set(got) == expected


def test_authenticating_a_blob_checks_its_seal_and_lengths_not_its_content(
        keys: crypto.KeySet) -> None:
    """The content is checked against the id when the chunk is opened (where it is used)."""
    cid = crypto.chunk_id(keys.chunk_id, b"right")
    wrong = crypto.seal(keys.enc, "chunk", cid.hex(), encode_payload(b"wrong", None))
    ref = BlobRef("p", 0, len(wrong), 5)
    authenticate_blob(keys, cid, ref, wrong, "p")
    with pytest.raises(RemoteIntegrityError, match="content does not match its id"):
        open_blob(keys, cid, ref, wrong, "p")
    other = crypto.chunk_id(keys.chunk_id, b"other")
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        authenticate_blob(keys, other, ref, wrong, "p")  # sealed under another id
    with pytest.raises(RemoteIntegrityError, match="index says 6"):
        authenticate_blob(keys, cid, BlobRef("p", 0, len(wrong), 6), wrong, "p")
    packed = crypto.seal(keys.enc, "chunk", cid.hex(), encode_payload(bytes(K), 1))
    with pytest.raises(RemoteIntegrityError, match=f"{K} bytes, index says {K - 1}"):
        authenticate_blob(keys, cid, BlobRef("p", 0, len(packed), K - 1), packed, "p")
    with pytest.raises(RemoteIntegrityError, match="index says"):
        authenticate_blob(keys, cid, BlobRef("p", 0, len(wrong) + 1, 5), wrong, "p")


def test_restore_writes_adjacent_chunks_together_and_every_place(tmp_path: Path) -> None:
    a, b, c = (bytes([x]) * K for x in (1, 2, 3))
    path = tmp_path / "disk"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * K)
        where = {b"a": [(fd, 0, K), (fd, 5 * K, K)], b"b": [(fd, K, K)], b"c": [(fd, 7 * K, K)]}
        wb = Writeback([fd], step=K)
        wb.wrote(_write(where, [(b"c", c), (b"b", b), (b"a", a)]))
        wb.close(sync=True)
    finally:
        os.close(fd)
    assert path.read_bytes() == a + b + bytes(3 * K) + a + bytes(K) + c


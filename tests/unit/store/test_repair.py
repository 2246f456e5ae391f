"""Damaged blobs found by reading them back; their pack replaced, the good blobs kept."""

from __future__ import annotations

import os

import pytest

from vmclient.store import crypto
from vmclient.store.chunker import Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.remote import MemoryStore
from vmclient.store.repair import check_blobs, replace_packs

ROOT = "images/win/store"


@pytest.mark.asyncio
async def test_a_damaged_pack_is_replaced_keeping_its_good_blobs(keys: crypto.KeySet) -> None:
    store = MemoryStore()
    chunker = Chunker(keys.chunk_id)
    chunks = [chunker.chunk(i, os.urandom(chunker.chunk_size)) for i in range(6)]
    cs = ChunkStore(store, ROOT, keys, pack_target=3 * chunker.chunk_size)
    await cs.upload(chunks, {})
    known = await cs.load_index()
    first, second = known[chunks[0].id], known[chunks[1].id]
    assert first.pack == second.pack
    path = next(p for p in store.objects if p.endswith(first.pack))
    data = bytearray(store.objects[path])
    for ref in (first, second):  # two damaged blobs, same size
        data[ref.offset + 40] ^= 0x01
    store.objects[path] = bytes(data)

    good, bad = await check_blobs(cs, known)
    assert set(bad) == {chunks[0].id, chunks[1].id} and len(good) == 4
    assert set(good.values()) == {b""}  # plaintexts not kept unless asked for

    await replace_packs(cs, {first.pack}, known, [chunks[0]])  # chunk 1: no copy exists
    assert path not in store.objects
    again = ChunkStore(store, ROOT, keys)
    index = await again.load_index()
    assert again.damaged == {} and again.unindexed == {}
    assert chunks[1].id not in index  # lost (it was already), the rest whole
    good, bad = await check_blobs(again, index, keep=True)
    assert bad == {} and {c.id: c.data for c in chunks if c.id != chunks[1].id} == good

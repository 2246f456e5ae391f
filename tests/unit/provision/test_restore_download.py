"""A restore's download (provision/restore.py) takes the Receiver's single-check path:
each chunk authenticated as it arrives and kept sealed, checked against its id once,
when it is written out (not also when it arrives)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vmclient.provision.cache import ChunkCache
from vmclient.provision.progress import Progress
from vmclient.provision.restore import download, write_memory
from vmclient.store import crypto, layout
from vmclient.store.chunker import Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.objects import ChunkMap, Manifest
from vmclient.store.remote import MemoryStore

K = 64 << 10
ROOT = layout.vm_store("laptop-a", "vm")


async def snapshot(keys: crypto.KeySet) -> tuple[MemoryStore, Manifest, bytes]:
    """A memory image of 40 chunks (a quarter zeros) in packs of ~5 chunks."""
    data = b"".join(bytes(K) if i % 4 == 0 else os.urandom(K) for i in range(40))
    chunks = list(Chunker(keys.chunk_id).split(data))
    remote = MemoryStore()
    store = ChunkStore(remote, ROOT, keys, pack_target=5 * K)
    await store.upload(chunks, await store.load_index())
    memory = ChunkMap("memory", "memory", len(data), K, tuple(c.id for c in chunks))
    return remote, Manifest("snapshot", "vm", "s1", 1, 0, keys.check, (memory,)), data


def counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The plaintexts checked against their ids (HMAC: the full check of a chunk)."""
    checked: list[bytes] = []
    real: Callable[[bytes, bytes], bytes] = crypto.chunk_id

    def chunk_id(key: bytes, plaintext: bytes) -> bytes:
        checked.append(real(key, plaintext))
        return checked[-1]
    monkeypatch.setattr(crypto, "chunk_id", chunk_id)
    return checked


@pytest.mark.asyncio
async def test_each_chunk_is_checked_against_its_id_once_where_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = crypto.KeySet.generate()
    remote, m, data = await snapshot(keys)
    memory = m.disks[0]
    checked = counting(monkeypatch)
    cache = ChunkCache(tmp_path, ".vm-vm")
    try:
        await download(lambda _p: None, remote, ROOT, keys, m, cache, Progress())
        assert cache.ids() == memory.stored_ids()  # every chunk kept, sealed
        assert checked == []  # authenticated on arrival, not opened
        digest = write_memory(cache, memory, keys, tmp_path / "memory")
    finally:
        cache.close()
    assert digest == hashlib.sha256(data).hexdigest()
    non_zero = [cid for cid in memory.ids if cid in memory.stored_ids()]
    assert checked == non_zero  # once each, as it was written


@pytest.mark.asyncio
async def test_a_kept_chunk_whose_content_is_not_its_id_is_refused_when_written(
        tmp_path: Path) -> None:
    """Sealed under the right key (so it passes on arrival) but holding another chunk's
    content: the check where it is written refuses it, naming it, and drops it."""
    keys = crypto.KeySet.generate()
    remote, m, _data = await snapshot(keys)
    memory = m.disks[0]
    cache = ChunkCache(tmp_path, ".vm-vm")
    try:
        await download(lambda _p: None, remote, ROOT, keys, m, cache, Progress())
        kept = {cid: cache.get(cid) or (0, b"") for cid in memory.stored_ids()}
        victim, other = sorted(kept)[:2]
        kept[victim] = (kept[other][0], crypto.seal(keys.enc, "chunk", victim.hex(), (
            crypto.open_sealed(keys.enc, "chunk", other.hex(), kept[other][1]))))
        cache.drop(victim)  # (its segment: every chunk) and all again, the victim forged
        cache.put_many([(cid, plain, sealed) for cid, (plain, sealed) in kept.items()])
        with pytest.raises(RemoteIntegrityError, match=f"{victim.hex()}.*does not match"):
            write_memory(cache, memory, keys, tmp_path / "memory")
        assert victim not in cache.ids()  # fetched again by the next attempt
    finally:
        cache.close()

"""End to end through an in-memory store: publish, download, tamper, swap, recover."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vmclient.store import crypto, layout
from vmclient.store.chunker import Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.documents import (
    Catalog,
    ImageVersion,
    Pointer,
    RepoConfig,
    WrappedKey,
)
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.objects import ChunkMap, Manifest
from vmclient.store.plan import plan_download
from vmclient.store.remote import MemoryStore
from vmclient.store.repo import (
    get_catalog,
    get_config,
    get_image_manifest,
    get_pointer,
    get_snapshot,
    get_wrapped_key,
    put_catalog,
    put_image_manifest,
    put_pointer,
    put_signed,
    put_snapshot,
    put_wrapped_key,
)

from .helpers import flip

K = 64 << 10


def disk_bytes(n_chunks: int = 12) -> bytes:
    parts = [os.urandom(K) if i % 3 else bytes(K) for i in range(n_chunks)]
    parts[-1] = b"text " * (K // 5) + b"x" * (K % 5)
    return b"".join(parts) + b"short tail"


async def publish(store: MemoryStore, keys: crypto.KeySet, data: bytes, version: int = 1,
                  pack_target: int = 200_000) -> tuple[Manifest, str]:
    chunks = list(Chunker(keys.chunk_id).split(data))
    cs = ChunkStore(store, layout.image_store("win"), keys, pack_target=pack_target)
    await cs.upload(chunks, await cs.load_index())
    disk = ChunkMap("system", "system", len(data), K, tuple(c.id for c in chunks))
    m = Manifest("image", "win", str(version), version, 0, keys.check, (disk,))
    return m, await put_image_manifest(store, keys, m)


async def download(store: MemoryStore, keys: crypto.KeySet, digest: str, version: int = 1,
                   local: dict[bytes, bytes] | None = None) -> bytes:
    m = await get_image_manifest(store, keys, "win", version, digest)
    cs = ChunkStore(store, layout.image_store("win"), keys)
    local = dict(local or {})
    plan = plan_download(m, set(local), await cs.load_index(), store_path=cs.root)
    async for cid, data in cs.fetch(plan):
        local[cid] = data
    disk = m.disks[0]
    out = bytearray(disk.size)
    for i, cid in enumerate(disk.ids):
        if cid in local:
            out[i * K:i * K + len(local[cid])] = local[cid]
    return bytes(out)


@pytest.mark.asyncio
async def test_published_image_downloads_byte_identical(store: MemoryStore,
                                                        keys: crypto.KeySet) -> None:
    data = disk_bytes()
    _m, digest = await publish(store, keys, data)
    assert await download(store, keys, digest) == data
    packs = [p for p in store.objects if "/packs/" in p]
    assert len(packs) >= 2, "pack target should have split the upload"


@pytest.mark.asyncio
async def test_second_version_uploads_and_downloads_only_changed_chunks(
        store: MemoryStore, keys: crypto.KeySet) -> None:
    data = disk_bytes()
    m1, _ = await publish(store, keys, data)
    changed = bytearray(data)
    changed[2 * K:2 * K + 10] = b"0123456789"
    before = dict(store.objects)
    m2, d2 = await publish(store, keys, bytes(changed), version=2)
    new_packs = [p for p in store.objects if p not in before and "/packs/" in p]
    assert len(new_packs) == 1
    assert len(m2.stored_ids() - m1.stored_ids()) == 1
    have = {c.id: c.data for c in Chunker(keys.chunk_id).split(data) if not c.is_zero}
    assert await download(store, keys, d2, 2, local=have) == bytes(changed)


@pytest.mark.asyncio
async def test_every_flipped_byte_of_a_pack_is_detected_and_named(store: MemoryStore,
                                                                  keys: crypto.KeySet) -> None:
    data = disk_bytes(4)
    _m, digest = await publish(store, keys, data)
    (pack,) = [p for p in store.objects if "/packs/" in p]
    original = store.objects[pack]
    cs = ChunkStore(store, layout.image_store("win"), keys)
    records = await cs.read_header(pack.rsplit("/", 1)[1], len(original))
    blobs_end = records[-1][1] + records[-1][2]
    # per blob: magic, version, nonce, first ciphertext byte, middle, last tag byte
    positions = [off + d for _cid, off, length, _plain in records
                 for d in (0, 4, 5, 17, length // 2, length - 1)]
    for pos in positions:
        store.objects[pack] = flip(original, pos)
        with pytest.raises(RemoteIntegrityError) as err:
            await download(store, keys, digest)
        assert err.value.obj_type == "chunk" and err.value.path == pack
    for pos in range(blobs_end, len(original)):  # the header and its length: read on recovery
        store.objects[pack] = flip(original, pos)
        with pytest.raises(RemoteIntegrityError) as err:
            await cs.read_header(pack.rsplit("/", 1)[1], len(original))
        assert err.value.obj_type == "pack-header"
    store.objects[pack] = original
    assert await download(store, keys, digest) == data


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["index", "manifest"])
async def test_flipped_index_or_manifest_is_detected(store: MemoryStore, keys: crypto.KeySet,
                                                     kind: str) -> None:
    _m, digest = await publish(store, keys, disk_bytes(4))
    (path,) = [p for p in store.objects if f"/{kind}" in p]
    store.objects[path] = flip(store.objects[path], len(store.objects[path]) // 2)
    with pytest.raises(RemoteIntegrityError) as err:
        await download(store, keys, digest)
    assert err.value.obj_type == kind and err.value.path == path


@pytest.mark.asyncio
async def test_old_manifest_swapped_in_for_a_new_version_is_refused(
        store: MemoryStore, keys: crypto.KeySet) -> None:
    _m1, _d1 = await publish(store, keys, disk_bytes(4))
    _m2, d2 = await publish(store, keys, disk_bytes(4), version=2)
    store.objects[layout.image_manifest("win", 2)] = store.objects[layout.image_manifest("win", 1)]
    with pytest.raises(RemoteIntegrityError, match="digest does not match"):
        await download(store, keys, d2, 2)
    # even without the pinned digest, AEAD binds the version into the object id
    m = Manifest("image", "win", "2", 2, 0, "", ()).object_id
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        crypto.open_sealed(keys.enc, "manifest", m, store.objects[layout.image_manifest("win", 2)])


@pytest.mark.asyncio
async def test_interrupted_upload_is_recovered_from_pack_headers(store: MemoryStore,
                                                                 keys: crypto.KeySet) -> None:
    data = disk_bytes()
    _m, _d = await publish(store, keys, data)
    for path in [p for p in store.objects if "/index/" in p]:
        del store.objects[path]  # crash after the packs, before the index
    cs = ChunkStore(store, layout.image_store("win"), keys)
    index = await cs.load_index()
    chunks = [c for c in Chunker(keys.chunk_id).split(data) if not c.is_zero]
    assert {c.id for c in chunks} <= set(index)
    assert (await cs.upload(chunks, index)).chunks == 0
    # the next upload's index adopts the orphaned packs: no header reads after that
    extra = Chunker(keys.chunk_id).chunk(99, b"new data")
    result = await cs.upload([extra], index)
    assert result.chunks == 1 and not cs.unindexed
    again = ChunkStore(store, layout.image_store("win"), keys)
    assert set(await again.load_index()) == set(index) | {extra.id}
    assert again.unindexed == {}


def snapshot(device: str, vm: str, keys: crypto.KeySet) -> Manifest:
    disk = ChunkMap("user", "user", K, K, (b"\x01" * 32,))
    return Manifest("snapshot", vm, "0000000001", 1, 0, keys.check, (disk,), device=device)


@pytest.mark.asyncio
async def test_snapshot_round_trips_and_is_bound_to_vm_and_device(
        store: MemoryStore, keys: crypto.KeySet, device_key: Ed25519PrivateKey,
        device_id: str) -> None:
    signers = {device_id: device_key.public_key()}
    m = snapshot(device_id, "office", keys)
    digest = await put_snapshot(store, device_key, keys, m)
    got = await get_snapshot(store, signers, keys, device=device_id, vm="office",
                             snapshot="0000000001", digest=digest)
    assert got == m
    # the same snapshot copied under another VM's name
    other = layout.vm_snapshot(device_id, "other", "0000000001")
    store.objects[other] = store.objects[layout.vm_snapshot(device_id, "office", "0000000001")]
    with pytest.raises(RemoteIntegrityError) as err:
        await get_snapshot(store, signers, keys, device=device_id, vm="other",
                           snapshot="0000000001")
    assert err.value.obj_id == "snapshot:other/0000000001" and err.value.path == other


@pytest.mark.asyncio
async def test_snapshot_signed_by_another_device_is_refused(
        store: MemoryStore, keys: crypto.KeySet, device_key: Ed25519PrivateKey,
        device_id: str) -> None:
    thief = Ed25519PrivateKey.from_private_bytes(b"\x0a" * 32)
    m = snapshot(device_id, "office", keys)
    await put_snapshot(store, thief, keys, m)
    with pytest.raises(RemoteIntegrityError, match="signed by unknown key"):
        await get_snapshot(store, {device_id: device_key.public_key()}, keys, device=device_id,
                           vm="office", snapshot="0000000001")
    # and a device cannot pass its snapshot off as another device's
    thief_id = crypto.key_id(thief.public_key())
    signers = {device_id: device_key.public_key(), thief_id: thief.public_key()}
    with pytest.raises(RemoteIntegrityError, match="but signed by"):
        await get_snapshot(store, signers, keys, device=device_id, vm="office",
                           snapshot="0000000001")


@pytest.mark.asyncio
async def test_snapshot_with_another_vms_key_is_refused(
        store: MemoryStore, keys: crypto.KeySet, device_key: Ed25519PrivateKey,
        device_id: str) -> None:
    await put_snapshot(store, device_key, keys, snapshot(device_id, "office", keys))
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        await get_snapshot(store, {device_id: device_key.public_key()},
                           crypto.KeySet.derive(b"\x09" * 32), device=device_id, vm="office",
                           snapshot="0000000001")


def test_chunk_whose_content_does_not_match_its_id_is_refused(keys: crypto.KeySet) -> None:
    """Defence in depth: a writer bug (or a leaked key) sealing wrong data under an id."""
    from vmclient.store.format import encode_payload
    from vmclient.store.objects import BlobRef
    from vmclient.store.pack import open_blob
    cid = crypto.chunk_id(keys.chunk_id, b"right")
    blob = crypto.seal(keys.enc, "chunk", cid.hex(), encode_payload(b"wrong", None))
    with pytest.raises(RemoteIntegrityError, match="content does not match its id"):
        open_blob(keys, cid, BlobRef("p", 0, len(blob), 5), blob, "p")


@pytest.mark.asyncio
async def test_stray_object_in_a_chunk_store_is_named(store: MemoryStore,
                                                      keys: crypto.KeySet) -> None:
    await publish(store, keys, disk_bytes(4))
    store.objects[layout.image_store("win") + "/index/notes.txt"] = b"hello"
    with pytest.raises(RemoteIntegrityError, match="unexpected object name") as err:
        await ChunkStore(store, layout.image_store("win"), keys).load_index()
    assert err.value.obj_type == "index"


REPO_ID = "3f0c5d2e9a8b4c7d1e2f3a4b5c6d7e8f"


def catalog_at(serial: int) -> Catalog:
    return Catalog(REPO_ID, serial, 1000 + serial,
                   {"win": (ImageVersion(1, "a" * 64, K, 0, "c" * 32),)})


@pytest.mark.asyncio
async def test_catalog_through_the_store_refuses_tamper_replay_and_other_signers(
        store: MemoryStore, admin: Ed25519PrivateKey) -> None:
    await put_catalog(store, admin, catalog_at(5))
    old = store.objects["catalog"]
    digest6 = await put_catalog(store, admin, catalog_at(6))
    cat, digest = await get_catalog(store, admin.public_key(), REPO_ID, known_serial=5)
    assert (cat.serial, digest) == (6, digest6)
    store.objects["catalog"] = old  # the server replays serial 5
    with pytest.raises(RemoteIntegrityError, match="serial 5 is older than serial 6"):
        await get_catalog(store, admin.public_key(), REPO_ID, known_serial=6,
                          known_digest=digest6)
    store.objects["catalog"] = flip(old, len(old) - 3)
    with pytest.raises(RemoteIntegrityError, match="bad signature"):
        await get_catalog(store, admin.public_key(), REPO_ID)
    other = Ed25519PrivateKey.from_private_bytes(b"\x0b" * 32)
    await put_catalog(store, other, catalog_at(7))
    with pytest.raises(RemoteIntegrityError, match="signed by unknown key"):
        await get_catalog(store, admin.public_key(), REPO_ID)


@pytest.mark.asyncio
async def test_config_must_name_the_pinned_admin_key(store: MemoryStore,
                                                     admin: Ed25519PrivateKey) -> None:
    good = RepoConfig(REPO_ID, 0, K, crypto.raw_public(admin.public_key()), b"\x02" * 32)
    await put_signed(store, "config", admin, ("config", "config"), good.to_bytes())
    assert await get_config(store, admin.public_key()) == good
    bad = RepoConfig(REPO_ID, 0, K, b"\x07" * 32, b"\x02" * 32)
    store.objects.clear()
    await put_signed(store, "config", admin, ("config", "config"), bad.to_bytes())
    with pytest.raises(RemoteIntegrityError, match="another admin key"):
        await get_config(store, admin.public_key())


@pytest.mark.asyncio
async def test_pointer_rollback_and_foreign_writer_are_refused(
        store: MemoryStore, device_key: Ed25519PrivateKey, device_id: str) -> None:
    signers = {device_id: device_key.public_key()}
    await put_pointer(store, device_key, Pointer("office", device_id, "0000000003", 3, 0,
                                                 "e" * 64))
    old = store.objects[layout.vm_pointer(device_id, "office")]
    await put_pointer(store, device_key, Pointer("office", device_id, "0000000004", 4, 0,
                                                 "e" * 64))
    assert (await get_pointer(store, signers, device_id, "office", known_seq=4)).seq == 4
    store.objects[layout.vm_pointer(device_id, "office")] = old
    with pytest.raises(RemoteIntegrityError, match="seq 3 is older than seq 4"):
        await get_pointer(store, signers, device_id, "office", known_seq=4)
    # a pointer of another VM copied over this one
    await put_pointer(store, device_key, Pointer("other", device_id, "0000000009", 9, 0,
                                                 "e" * 64))
    store.objects[layout.vm_pointer(device_id, "office")] = \
        store.objects[layout.vm_pointer(device_id, "other")]
    with pytest.raises(RemoteIntegrityError, match="bad signature"):
        await get_pointer(store, signers, device_id, "office")


@pytest.mark.asyncio
async def test_wrapped_key_made_by_the_server_is_refused(
        store: MemoryStore, keys: crypto.KeySet, admin: Ed25519PrivateKey,
        device_x: X25519PrivateKey) -> None:
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}
    path = layout.image_key("win", crypto.key_id(device_x.public_key()))
    await put_wrapped_key(store, path, admin,
                          WrappedKey.create("image:win", device_x.public_key(), keys))
    got = await get_wrapped_key(store, path, signers, "image:win", device_x)
    assert got.secret == keys.secret
    # the server wraps a key of its choosing for the device's (public) key
    server = Ed25519PrivateKey.from_private_bytes(b"\x0c" * 32)
    rogue = crypto.KeySet.derive(b"\x0d" * 32)
    await put_wrapped_key(store, path, server,
                          WrappedKey.create("image:win", device_x.public_key(), rogue))
    with pytest.raises(RemoteIntegrityError, match="signed by unknown key") as err:
        await get_wrapped_key(store, path, signers, "image:win", device_x)
    assert err.value.obj_type == "wrapped-key" and err.value.path == path


@pytest.mark.asyncio
async def test_a_truncated_pack_no_index_names_is_skipped_and_deleted_under_the_lock(
        store: MemoryStore, keys: crypto.KeySet) -> None:
    """A killed upload can leave a pack whose tail a server crash lost: before, every later
    load_index failed on its header; now it is skipped, and deleted by the locked writer."""
    data = disk_bytes()
    _m, _d = await publish(store, keys, data)
    for path in [p for p in store.objects if "/index/" in p]:
        del store.objects[path]  # crash after the packs, before the index
    packs = sorted(p for p in store.objects if "/packs/" in p)
    assert len(packs) >= 2
    store.objects[packs[0]] = store.objects[packs[0]][:100]  # its tail lost
    reader = ChunkStore(store, layout.image_store("win"), keys)
    index = await reader.load_index()  # a reader: skips it, leaves it
    name = packs[0].rsplit("/", 1)[-1]
    assert name in reader.damaged and packs[0] in store.objects
    assert {ref.pack for ref in index.values()} == {p.rsplit("/", 1)[-1] for p in packs[1:]}
    writer = ChunkStore(store, layout.image_store("win"), keys)
    await writer.load_index(repair=True)
    assert packs[0] not in store.objects and name in writer.damaged
    again = ChunkStore(store, layout.image_store("win"), keys)
    await again.load_index()
    assert again.damaged == {}


@pytest.mark.asyncio
async def test_index_entries_of_a_pack_shorter_than_they_say_are_not_reused(
        store: MemoryStore, keys: crypto.KeySet) -> None:
    """The server crash SFTP cannot rule out (no fsync, §8.1): a pack named by an index
    kept its name but not its data.  Its chunks are uploaded again; the index naming
    the new copies wins over the one naming the short pack, whatever the listing order."""
    data = disk_bytes()
    _m, _d = await publish(store, keys, data)
    packs = sorted(p for p in store.objects if "/packs/" in p)
    store.objects[packs[0]] = store.objects[packs[0]][:-1]
    cs = ChunkStore(store, layout.image_store("win"), keys)
    short = packs[0].rsplit("/", 1)[-1]
    assert short in {r.pack for r in (await cs.load_index()).values()}  # a reader: read there
    known = await cs.load_index(repair=True)
    assert "index" in cs.damaged[short] and short not in {r.pack for r in known.values()}
    chunks = [c for c in Chunker(keys.chunk_id).split(data) if not c.is_zero]
    assert (await cs.upload(chunks, known)).chunks > 0  # the lost ones, stored again
    full = await ChunkStore(store, layout.image_store("win"), keys).load_index()
    assert {c.id for c in chunks} <= set(full)
    assert short not in {r.pack for r in full.values()}


@pytest.mark.asyncio
async def test_an_index_cut_short_is_refused_by_readers_and_replaced_by_the_locked_writer(
        store: MemoryStore, keys: crypto.KeySet) -> None:
    data = disk_bytes()
    _m, _d = await publish(store, keys, data)
    [index_path] = [p for p in store.objects if "/index/" in p]
    store.objects[index_path] = store.objects[index_path][:50]  # a server crash lost its tail
    with pytest.raises(RemoteIntegrityError) as err:
        await ChunkStore(store, layout.image_store("win"), keys).load_index()
    assert err.value.obj_type == "index"
    writer = ChunkStore(store, layout.image_store("win"), keys)
    known = await writer.load_index(repair=True)
    assert index_path not in store.objects and any(k.startswith("index ") for k in writer.damaged)
    chunks = [c for c in Chunker(keys.chunk_id).split(data) if not c.is_zero]
    assert {c.id for c in chunks} <= set(known)  # found by the packs' headers
    assert (await writer.upload(chunks, known)).chunks == 0  # nothing sent again; re-indexed
    again = ChunkStore(store, layout.image_store("win"), keys)
    assert {c.id for c in chunks} <= set(await again.load_index())
    assert again.unindexed == {} and again.damaged == {}

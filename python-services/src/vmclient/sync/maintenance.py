"""Prune (retention) and verify for one VM's snapshots and chunk store.

Prune (repository-format.md §8.4), under the device lock:

1. load every snapshot (verified) and choose the kept ones (:mod:`.retention`;
   the one ``latest`` names is always kept);
2. delete the other snapshots (before any chunk only they used);
3. :func:`plan_prune` over every pack (indexed, or found by header): packs with
   no needed chunk go; partly used ones are repacked (needed blobs read,
   verified and written into new packs);
4. write one new index naming every surviving pack, then delete the old
   indexes, then the packs.  A crash between steps leaves at worst extra packs
   (found again by header) and never a kept snapshot without its chunks.

Verify reads every chunk a snapshot needs, through the same checks as a restore
(present in an index, AEAD with its id, length, HMAC), and writes nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..store import crypto, layout, repo
from ..store.chunker import Chunk
from ..store.chunkstore import ChunkStore
from ..store.errors import ObjectNotFound
from ..store.objects import BlobRef, Index, Manifest
from ..store.plan import DownloadPlan, ReadRange, plan_download, plan_prune
from ..store.remote import RemoteStore
from . import restore
from .lock import device_lock
from .retention import Retention, kept

Records = tuple[tuple[bytes, int, int, int], ...]


@dataclass
class PruneResult:
    kept: list[int]
    deleted_snapshots: list[int]
    deleted_packs: int = 0
    repacked_packs: int = 0


@dataclass
class VerifyResult:
    seq: int
    chunks: int
    bytes: int


# label, seq, created, the disks' size in bytes, parent, whether ``latest`` names it
SnapshotRow = tuple[str, int, int, int, str, bool]


async def verify(remote: RemoteStore, signers: repo.Signers, keys: crypto.KeySet, *,
                 device: str, vm: str, snapshot: str | None = None) -> VerifyResult:
    """Check a snapshot end to end without restoring; raises RemoteIntegrityError."""
    m = await repo.load_snapshot(remote, signers, keys, device, vm, snapshot)
    store = ChunkStore(remote, layout.vm_store(device, vm), keys)
    plan = plan_download(m, set(), await store.load_index(), store_path=store.root)
    n = 0
    async for _cid, _data in restore.fetch(store, plan):
        n += 1
    return VerifyResult(m.seq, n, plan.download_bytes)


async def list_snapshots(remote: RemoteStore, signers: repo.Signers, keys: crypto.KeySet, *,
                         device: str, vm: str) -> list[SnapshotRow]:
    """Every snapshot of the VM, each verified, oldest first."""
    try:
        latest = (await repo.get_pointer(remote, signers, device, vm)).snapshot
    except ObjectNotFound:
        latest = ""
    rows = []
    for e in await remote.list(f"{layout.vm_dir(device, vm)}/snapshots"):
        untrusted_label = e.path.rsplit("/", 1)[-1]
        m = await repo.get_snapshot(remote, signers, keys, device=device, vm=vm,
                                    snapshot=untrusted_label)
        rows.append((m.label, m.seq, m.created, sum(d.size for d in m.disks), m.parent,
                     m.label == latest))
    return sorted(rows, key=lambda r: r[1])


async def prune(remote: RemoteStore, device_key: crypto.Ed25519PrivateKey,
                keys: crypto.KeySet, vm: str, policy: Retention) -> PruneResult:
    dev = crypto.key_id(device_key.public_key())
    signers = {dev: device_key.public_key()}
    async with device_lock(remote, dev, vm):
        latest = await repo.get_pointer(remote, signers, dev, vm)
        snaps: dict[int, Manifest] = {}
        for e in await remote.list(f"{layout.vm_dir(dev, vm)}/snapshots"):
            label = e.path.rsplit("/", 1)[-1]
            m = await repo.get_snapshot(remote, signers, keys, device=dev, vm=vm,
                                        snapshot=label)
            snaps[m.seq] = m
        keep = kept(((s, m.created) for s, m in snaps.items() if s <= latest.seq), policy)
        keep.add(latest.seq)
        gone = sorted(set(snaps) - keep)
        for seq in gone:
            await remote.delete(layout.vm_snapshot(dev, vm, snaps[seq].label))
        result = PruneResult(sorted(keep), gone)
        await prune_packs(remote, keys, layout.vm_store(dev, vm),
                           [snaps[s] for s in keep], result)
        return result


async def prune_packs(remote: RemoteStore, keys: crypto.KeySet, root: str,
                       kept_manifests: list[Manifest], result: PruneResult) -> None:
    store = ChunkStore(remote, root, keys)
    packs: dict[str, Records] = {}
    old_indexes = []
    for e in await remote.list(f"{root}/index"):
        name = e.path.rsplit("/", 1)[-1]
        body = await repo.get_sealed(remote, e.path, keys.enc, "index", name)
        packs.update(Index.parse(body, name, e.path).packs)
        old_indexes.append(e.path)
    await store.load_index(repair=True)  # packs no index names: by header
    packs.update(store.unindexed)
    refs = {p: [(cid, BlobRef(p, off, ln, pl)) for cid, off, ln, pl in recs]
            for p, recs in packs.items()}
    plan = plan_prune(kept_manifests, refs)
    if not plan.delete_packs and not plan.repack:
        return
    doomed = set(plan.delete_packs) | set(plan.repack)
    survivors = {p: recs for p, recs in packs.items() if p not in doomed}
    alive = {rec[0] for recs in survivors.values() for rec in recs}
    needed = set().union(*(m.stored_ids() for m in kept_manifests)) - alive
    reads = [ReadRange(p, ref.offset, ref.length, ((cid, ref),))
             for p in plan.repack for cid, ref in refs[p] if cid in needed]
    moved = [Chunk(0, cid, data)
             async for cid, data in store.fetch(DownloadPlan(tuple(reads), frozenset(), 0))]
    if moved:  # a fresh store: its index names only the new packs
        await ChunkStore(remote, root, keys).upload(moved, {})
    name = secrets.token_hex(32)
    await repo.put_sealed(remote, layout.index(root, name), keys.enc, ("index", name),
                          Index(name, survivors).to_bytes())
    for path in old_indexes:
        await remote.delete(path)
    for p in sorted(doomed):
        await remote.delete(layout.pack(root, p))
    result.deleted_packs, result.repacked_packs = len(plan.delete_packs), len(plan.repack)

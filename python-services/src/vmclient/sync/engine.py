"""One sync of one VM: consistent point → changed chunks → packs → index → snapshot → latest.

Write ordering (repository-format.md §8.3): lock ``devices/<d>/lock``; wrapped
data keys (so a restore can open what follows); packs; one index; the snapshot
(exclusive, ``seq`` = last + 1); then ``latest``; then the local record
(:mod:`.state`); then old libvirt checkpoints are deleted; unlock.  A crash at
any point leaves the previous snapshot and ``latest`` intact; packs that
arrived are found by :meth:`ChunkStore.load_index` (by header if no index
names them) and not uploaded again.

What is read (see :mod:`.disks`):

* running VM with a usable checkpoint from the last sync: an incremental
  push backup; only the dirty clusters are read; every other chunk id is the
  parent snapshot's.
* running VM without one (first sync, disk resized, or QEMU was killed and the
  bitmaps are inconsistent, which makes libvirt refuse the incremental backup):
  a full push backup, every chunk read, hashed and compared with the index.
* stopped VM: its disks at rest, read whole and compared the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VMOperationFailed
from ..store import crypto, layout, repo
from ..store.chunker import DEFAULT_CHUNK_SIZE, Chunk, Chunker, chunk_count
from ..store.documents import Pointer, WrappedKey
from ..store.errors import LocalSyncError, LockHeld, ObjectNotFound, RemoteIntegrityError
from ..store.objects import BlobRef, ChunkMap, Manifest
from ..store.remote import LockToken, RemoteStore, lock_is_stale
from ..virt.libvirt import Hypervisor, SyncView, backup_push, delete_checkpoints, sync_view
from . import disks, state

log = logging.getLogger(__name__)
_SNAPSHOT_RE = re.compile(r"^[0-9]{10}$")


class SyncRefused(LocalSyncError):
    """VM {!r} is not synchronised: {}"""


@dataclass
class SyncResult:
    vm: str
    seq: int = 0
    mode: str = ""  # incremental | full | at-rest
    fallback: str = ""  # why an incremental sync became a full one
    chunks_covered: int = 0  # chunks the capture holds (all, or the dirty ones)
    chunks_read: int = 0  # of those, the ones with data (zero extents are not read)
    bytes_read: int = 0
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0  # packs + index + snapshot + pointer + keys
    seconds: float = 0.0
    capture_seconds: float = 0.0  # backup job or conversion, and qemu-img map


@dataclass
class _Capture:
    name: str
    role: str
    size: int
    path: Path
    covered: dict[int, tuple[disks.Extent, int]] = field(default_factory=dict)


def holder() -> str:
    return f"{socket.gethostname()} vmclient-sync pid {os.getpid()}"


_held: set[str] = set()  # lock paths this process holds right now


async def take_lock(remote: RemoteStore, path: str) -> LockToken:
    """The device lock.  One left by a dead sync process of this host, or by this
    process when it no longer holds it (an unlock lost with the connection), is
    broken at once; any other waits for staleness."""
    try:
        token = await remote.lock(path, holder())
    except LockHeld:
        untrusted = await remote.get(path)
        _stale, other, _created = lock_is_stale(untrusted, 0, 1)
        host, _, pid = other.partition(" vmclient-sync pid ")
        mine = pid == str(os.getpid()) and path not in _held
        if host != socket.gethostname() or not pid.isdigit() or (
                not mine and _alive(int(pid))):
            raise
        log.warning("breaking the lock left by sync process %s", pid)
        await remote.delete(path)
        token = await remote.lock(path, holder())
    _held.add(path)
    return token


async def release_lock(remote: RemoteStore, token: LockToken) -> None:
    _held.discard(token.path)
    await remote.unlock(token)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def sync_vm(hv: Hypervisor, remote: RemoteStore, device: crypto.Ed25519PrivateKey,
                  uuid: str, keys: crypto.KeySet, *, state_dir: Path, scratch_dir: Path,
                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                  recipients: Sequence[crypto.X25519PublicKey] = ()) -> SyncResult:
    """Sync the VM with libvirt UUID ``uuid``; ``recipients`` get its wrapped data key."""
    started = time.monotonic()
    view = await sync_view(hv, uuid)
    if view.kind != "business" or view.sync in (None, "off"):
        raise SyncRefused(view.name, f"kind {view.kind!r}, sync {view.sync!r}: only business "
                          "VMs with sync enabled are uploaded; private VMs never are")
    vm, dev = view.name, crypto.key_id(device.public_key())
    result = SyncResult(vm)
    token = await take_lock(remote, layout.device_lock(dev))
    work = scratch_dir / vm
    try:
        shutil.rmtree(work, ignore_errors=True)  # left by an interrupted sync
        work.mkdir(parents=True)
        os.chmod(work, 0o755)  # QEMU (another user) writes the backup targets here
        await _put_keys(remote, device, dev, vm, keys, recipients)
        st = await asyncio.to_thread(state.load, state_dir, vm)
        parent = await _parent(remote, device, dev, vm, keys, st.seq)
        seq = await _next_seq(remote, dev, vm, parent)
        checkpoint = f"vmclient-{seq}-{secrets.token_hex(4)}"
        store = repo.ChunkStore(remote, layout.vm_store(dev, vm), keys)
        caps, known = await _capture_indexing(
            store, _capture(hv, view, parent, st, checkpoint, work, chunk_size, result), result)
        chunker = Chunker(keys.chunk_id, chunk_size)
        ids: dict[str, list[bytes | None]] = {}
        # read and hashed in a reader thread, sealed in workers (ChunkStore.upload)
        upload = await store.upload(_chunks(caps, parent, chunker, ids, result), known)
        result.uploaded_chunks, result.uploaded_bytes = upload.chunks, upload.bytes
        maps = tuple(ChunkMap(c.name, c.role, c.size, chunk_size, _complete(ids[c.name], c.name))
                     for c in caps)
        label = layout.snapshot_name(seq)
        m = Manifest("snapshot", vm, label, seq, int(time.time()), keys.check, maps, dev,
                     parent.label if parent else "", {"uuid": uuid})
        digest = await repo.put_snapshot(remote, device, keys, m)
        p = Pointer(vm, dev, label, seq, int(time.time()), digest)
        await repo.put_pointer(remote, device, p)
        result.uploaded_bytes += len(m.to_bytes()) + len(p.to_bytes())
        keep = checkpoint if result.mode != "at-rest" else st.checkpoint
        await asyncio.to_thread(state.save, state_dir, vm, state.VMSyncState(seq, keep))
        if view.active:
            await delete_checkpoints(hv, uuid, vm, keep)
        result.seq = seq
    finally:
        shutil.rmtree(work, ignore_errors=True)
        await release_lock(remote, token)
    result.seconds = time.monotonic() - started
    log.info("%s: snapshot %d (%s) read %d chunks, uploaded %d bytes in %.1f s", vm,
             result.seq, result.mode, result.chunks_read, result.uploaded_bytes, result.seconds)
    return result


async def _put_keys(remote: RemoteStore, device: crypto.Ed25519PrivateKey, dev: str, vm: str,
                    keys: crypto.KeySet, recipients: Sequence[crypto.X25519PublicKey]) -> None:
    present = {e.path for e in await remote.list(f"{layout.vm_dir(dev, vm)}/keys")}
    for r in recipients:
        path = layout.vm_key(dev, vm, crypto.key_id(r))
        if path not in present:
            await repo.put_wrapped_key(remote, path, device, WrappedKey.create(f"vm:{vm}", r, keys))


async def _parent(remote: RemoteStore, device: crypto.Ed25519PrivateKey, dev: str, vm: str,
                  keys: crypto.KeySet, known_seq: int) -> Manifest | None:
    signers = {dev: device.public_key()}
    try:
        p = await repo.get_pointer(remote, signers, dev, vm, known_seq)
    except ObjectNotFound:
        if known_seq:
            raise RemoteIntegrityError("pointer", f"{vm}/latest", layout.vm_pointer(dev, vm),
                                       f"missing, but this device wrote seq {known_seq}"
                                       ) from None
        return None
    return await repo.get_snapshot(remote, signers, keys, device=dev, vm=vm,
                                   snapshot=p.snapshot, digest=p.manifest)


async def _next_seq(remote: RemoteStore, dev: str, vm: str, parent: Manifest | None) -> int:
    """One more than any snapshot stored: an interrupted sync may have left one unpointed."""
    last = parent.seq if parent else 0
    for e in await remote.list(f"{layout.vm_dir(dev, vm)}/snapshots"):
        untrusted_name = e.path.rsplit("/", 1)[-1]
        if _SNAPSHOT_RE.fullmatch(untrusted_name):
            last = max(last, int(untrusted_name))
    return last + 1


async def _capture(hv: Hypervisor, view: SyncView, parent: Manifest | None,
                   st: state.VMSyncState, checkpoint: str, work: Path, chunk_size: int,
                   result: SyncResult) -> list[_Capture]:
    roles = ["system"] + ["user"] * (len(view.disks) - 1)
    if not view.active:
        result.mode = "at-rest"
        caps = []
        for d, role in zip(view.disks, roles, strict=True):
            raw = work / f"{d.target}.raw"
            await asyncio.to_thread(disks.convert_to_raw, d.path, d.fmt, raw)
            caps.append(await _mapped(d.target, role, raw, chunk_size, whole_raw=True))
        return caps
    sizes = {d.target: await asyncio.to_thread(disks.virtual_size, d.path) for d in view.disks}
    incremental: str | None = st.checkpoint
    if parent is None or st.checkpoint not in view.checkpoints:
        incremental = None
        result.fallback = "no parent snapshot" if parent is None else "no usable checkpoint"
    elif {(c.name, c.size) for c in parent.disks} != set(sizes.items()):
        incremental, result.fallback = None, "disks changed"
    while True:
        targets = {d.target: str(work / f"{d.target}-{checkpoint}.qcow2") for d in view.disks}
        try:
            await backup_push(hv, view.uuid, view.name, targets, checkpoint, incremental)
            caps = [await _mapped(d.target, role, Path(targets[d.target]), chunk_size)
                    for d, role in zip(view.disks, roles, strict=True)]
        except (VMOperationFailed, disks.PartialChunk) as exc:
            if incremental is None:
                raise
            log.warning("%s: incremental backup impossible (%s); reading the whole disks",
                        view.name, exc)
            result.fallback = str(exc)
            incremental = None
            await delete_checkpoints(hv, view.uuid, view.name, None)
            await asyncio.to_thread(_remove, targets.values())
            continue
        result.mode = "incremental" if incremental else "full"
        return caps


async def _capture_indexing(store: repo.ChunkStore, capture: Coroutine[Any, Any, list[_Capture]],
                            result: SyncResult) -> tuple[list[_Capture], dict[bytes, BlobRef]]:
    """The capture, and the store's index read meanwhile (the backup job mostly waits)."""
    loading = asyncio.ensure_future(store.load_index())
    try:
        t0 = time.monotonic()
        caps = await capture
        result.capture_seconds = time.monotonic() - t0
    except BaseException:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        raise
    return caps, await loading


async def _mapped(name: str, role: str, path: Path, chunk_size: int, *,
                  whole_raw: bool = False) -> _Capture:
    size = await asyncio.to_thread(disks.virtual_size, path)
    extents = await asyncio.to_thread(disks.map_capture, path)
    cover = disks.raw_chunks if whole_raw else disks.covered_chunks
    return _Capture(name, role, size, path, cover(extents, chunk_size, size))


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _chunks(caps: list[_Capture], parent: Manifest | None, chunker: Chunker,
            ids: dict[str, list[bytes | None]], result: SyncResult) -> Iterator[Chunk]:
    """Every chunk the captures hold; fills ``ids`` (parent ids where nothing changed)."""
    old = {d.name: d for d in parent.disks} if parent and result.mode == "incremental" else {}
    for cap in caps:
        n = chunk_count(cap.size, chunker.chunk_size)
        base = old.get(cap.name)
        ids[cap.name] = list(base.ids) if base is not None else [None] * n
        for chunk in disks.read_chunks(cap.path, cap.covered, chunker, cap.size):
            ids[cap.name][chunk.index] = chunk.id
            result.chunks_covered += 1
            result.chunks_read += not chunk.is_zero
            result.bytes_read += len(chunk.data)
            yield chunk


def _complete(ids: list[bytes | None], disk: str) -> tuple[bytes, ...]:
    missing = [i for i, cid in enumerate(ids) if cid is None]
    if missing:
        raise LocalSyncError(f"disk {disk}: the capture does not cover chunk {missing[0]}")
    return tuple(cid for cid in ids if cid is not None)



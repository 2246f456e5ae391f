"""One sync of one VM: consistent point → changed chunks → packs → index → snapshot → latest.

Write ordering (repository-format.md §8.3): lock ``devices/<d>/lock``; wrapped
data keys (so a restore can open what follows); packs; one index; the snapshot
(exclusive, ``seq`` = last + 1); then ``latest``; then the local record
(:mod:`.state`); then old libvirt checkpoints are deleted; unlock.  A crash at
any point leaves the previous snapshot and ``latest`` intact; packs that
arrived are found by :meth:`ChunkStore.load_index` (by header if no index
names them) and not uploaded again.

What is read (see :mod:`.disks`; everything through QEMU over NBD, :mod:`.nbd`):

* running VM with a usable checkpoint from the last sync: an incremental
  pull-mode backup; only the dirty clusters are read from its NBD export;
  every other chunk id is the parent snapshot's.
* running VM without one (first sync, disk resized, or QEMU was killed and the
  bitmaps are inconsistent, which makes libvirt refuse the incremental backup):
  a full pull-mode backup, every allocated chunk read, hashed and compared
  with the index.
* stopped VM: its disks at rest through ``qemu-nbd``, read whole and compared
  the same way.

The backup job lasts while the chunks are read and is ended after the upload
(or when the sync fails); QEMU keeps the point in time by copying a cluster the
guest overwrites meanwhile into a scratch file first.  Nothing else is copied.

Memory (the domain's ``<vmc:vm sync="memory"/>``, from the recipe's
``sync.memory``): a running VM is saved (its RAM to a file in ``memory_dir``,
which must be RAM-backed) and restored from that file at once, *paused*; the
backup job begins while it is paused, and the VM resumes as soon as the job
has begun.  Disks and memory are the same instant; the guest is down for the
save and the restore only.  A VM stopped with a managed save image (powerd)
is synced at rest with that image as its memory.  The image is chunked like a
disk (role ``memory`` in the snapshot), always read whole.

LUKS disks (business VMs, from provisioning): the disk secret is derived from
the VM's data key (``keys``) and handed to libvirt as an ephemeral secret while
the backup job runs and for the restore only.  Scratch files are LUKS qcow2
under the same secret (checked when the job has begun), so no plaintext guest
data rests in the scratch directory; disks at rest are read through
``qemu-nbd`` with the passphrase.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VMNotFound, VMOperationFailed
from ..host.files import check_ram_backed
from ..store import crypto, layout, repo
from ..store.chunker import DEFAULT_CHUNK_SIZE, Chunk, Chunker, chunk_count
from ..store.chunkstore import ChunkStore
from ..store.documents import Pointer, WrappedKey
from ..store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from ..store.holding import keep_fresh, stop_refreshing, sweep_locked, unlock_anyway
from ..store.objects import BlobRef, ChunkMap, Manifest
from ..store.remote import LockToken, RemoteStore
from ..virt.libvirt import (
    DiskSource,
    DomState,
    Hypervisor,
    SyncView,
    backup_end,
    backup_pull,
    delete_checkpoints,
    save_and_restore_paused,
    sync_view,
)
from . import disks, nbd, state

log = logging.getLogger(__name__)
_SNAPSHOT_RE = re.compile(r"^[0-9]{10}$")
MEMORY = "memory"  # name and role of the memory image in a snapshot
DEFAULT_MEMORY_DIR = Path("/run/vmclient/sync")  # RAM-backed: plaintext guest RAM
MANAGED_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")  # libvirt's <name>.save images


class SyncRefused(LocalSyncError):
    """VM {!r} is not synchronised: {}"""


class CaptureLost(LocalSyncError):
    """VM {!r}: its disks could not be read to the end ({}); it was stopped or saved
    meanwhile. The previous snapshot stands and the next sync reads again"""


class SyncInterrupted(LocalSyncError):
    """VM {!r}: sync stopped at a safe point ({}); the next sync continues it"""


@dataclass
class Hooks:
    """A caller's window into a sync in flight (``vmclient-syncd``).

    ``progress(done, total)`` gets the bytes of the capture read so far;
    ``interrupted()`` is asked between chunks and after the capture: when it
    says True the sync raises :class:`SyncInterrupted` with no write in flight
    (packs that arrived stay and are not uploaded again).
    """

    progress: Callable[[int, int], None] = lambda _done, _total: None
    interrupted: Callable[[], bool] = lambda: False


class SyncMode(enum.StrEnum):
    """How a sync read the disks."""

    INCREMENTAL = "incremental"  # the clusters dirty since the last checkpoint
    FULL = "full"  # every cluster (no usable checkpoint)
    AT_REST = "at-rest"  # a VM not running: its disks read at rest, compared by chunk id


@dataclass
class SyncResult:
    vm: str
    seq: int = 0
    mode: SyncMode | None = None  # None: the capture did not begin
    fallback: str = ""  # why an incremental sync became a full one
    chunks_covered: int = 0  # chunks the capture holds (all, or the dirty ones)
    chunks_read: int = 0  # of those, the ones with data (zero extents are not read)
    bytes_read: int = 0
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0  # packs + index + snapshot + pointer + keys
    seconds: float = 0.0
    capture_seconds: float = 0.0  # backup job or conversion, and qemu-img map
    memory_bytes: int = 0  # size of the memory image in the snapshot (0: none)
    downtime_seconds: float = 0.0  # save + restore + job start, while the guest was down
    memory_sha256: str = ""  # of the memory image (also in the snapshot's meta)


@dataclass
class _Capture:
    name: str
    role: str
    size: int
    path: Path
    covered: dict[int, tuple[disks.Extent, int]] = field(default_factory=dict)
    whole: bool = False  # every chunk covered, never the parent's ids (memory)
    fmt: str = ""  # a disk at rest: read through qemu-nbd (image format)
    passphrase: bytes | None = None  # (at rest) a LUKS qcow2
    export: str = ""  # a backup job's NBD export of that name on the socket ``path``
    readers: list[disks.ReadRun] = field(
        default_factory=list)  # while the capture is open: one per NBD connection


def holder() -> str:
    return f"{socket.gethostname()} vmclient-sync pid {os.getpid()}"


_refreshers: dict[str, asyncio.Task[None]] = {}  # by lock nonce: the held locks' refreshers


async def take_lock(remote: RemoteStore, path: str) -> LockToken:
    """The device lock, kept fresh until :func:`release_lock`.  One left by a dead
    process of this host (this boot or an earlier one), or by this process when
    it no longer holds it (an unlock lost with the connection), is broken at once
    (:meth:`LockingMixin.lock`); any other waits for staleness."""
    token = await remote.lock(path, holder())
    _refreshers[token.nonce] = asyncio.create_task(keep_fresh(remote, token))
    return token


async def sweep_vm(remote: RemoteStore, dev: str, vm: str) -> int:
    """Under the device lock: the temporary files a killed sync or prune left in the VM's
    directory (its chunk store and snapshots below, ``latest`` in it; not ``writers/``,
    which the admin writes)."""
    vm_dir = layout.vm_dir(dev, vm)
    return await sweep_locked(remote, layout.vm_store(dev, vm), f"{vm_dir}/snapshots",
                              f"{vm_dir}/keys", shallow=(vm_dir,))


async def release_lock(remote: RemoteStore, token: LockToken) -> None:
    task = _refreshers.pop(token.nonce, None)
    try:
        if task is not None:
            await stop_refreshing(task)
    finally:
        await unlock_anyway(remote, token)


async def sync_vm(hv: Hypervisor, remote: RemoteStore, device: crypto.Ed25519PrivateKey,
                  uuid: str, keys: crypto.KeySet, *, state_dir: Path, scratch_dir: Path,
                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                  recipients: Sequence[crypto.X25519PublicKey] = (),
                  memory_dir: Path = DEFAULT_MEMORY_DIR,
                  managed_save_dir: Path = MANAGED_SAVE_DIR,
                  meta: Mapping[str, str] | None = None,
                  hooks: Hooks | None = None,
                  writers: repo.Signers | None = None) -> SyncResult:
    """Sync the VM with libvirt UUID ``uuid``; ``recipients`` get its wrapped data key.

    ``meta`` goes into the snapshot besides the VM's UUID and definition (the
    daemon passes the recipe as ``recipe``).  ``writers``: other devices whose
    snapshots the VM's directory may hold (after a rekey onto this device:
    ``manage.rekey.RestoreSource.signers``).
    """
    hooks = hooks or Hooks()
    started = time.monotonic()
    view = await sync_view(hv, uuid)
    if view.kind != "business" or view.sync in (None, "off"):
        raise SyncRefused(view.name, f"kind {view.kind!r}, sync {view.sync!r}: only business "
                          "VMs with sync enabled are uploaded; private VMs never are")
    if view.active and view.sync == MEMORY:
        await asyncio.to_thread(check_ram_backed, memory_dir, view.name)
    vm, dev = view.name, crypto.key_id(device.public_key())
    result = SyncResult(vm)
    token = await take_lock(remote, layout.device_lock(dev))
    work = scratch_dir / vm
    try:
        await sweep_vm(remote, dev, vm)
        shutil.rmtree(work, ignore_errors=True)  # left by an interrupted sync
        work.mkdir(parents=True)
        os.chmod(work, 0o755)  # QEMU (another user) writes the backup targets here
        await _put_keys(remote, device, dev, vm, keys, recipients)
        st = await asyncio.to_thread(state.load, state_dir, vm)
        parent = await _parent(remote, device, dev, vm, keys, st.seq, writers or {})
        seq = await _next_seq(remote, dev, vm, parent)
        checkpoint = f"vmclient-{seq}-{secrets.token_hex(4)}"
        mem_file = memory_dir / f"{vm}-{checkpoint}.save"
        store = ChunkStore(remote, layout.vm_store(dev, vm), keys)
        try:
            async with contextlib.AsyncExitStack() as job:  # a backup job lasts until read
                caps, known = await _capture_indexing(
                    store, _capture(hv, view, parent, st, checkpoint, work, chunk_size, result,
                                    job, keys=keys, memory_file=mem_file,
                                    managed_save=managed_save_dir / f"{vm}.save"), result)
                if hooks.interrupted():
                    raise SyncInterrupted(vm, "after the capture")
                maps = await _upload(store, known, keys, caps, parent, chunk_size, result,
                                     hooks)
        finally:
            mem_file.unlink(missing_ok=True)  # plaintext RAM: gone as soon as it is read
        label = layout.snapshot_name(seq)
        m = Manifest("snapshot", vm, label, seq, int(time.time()), keys.check, maps, dev,
                     parent.label if parent else "",
                     {**(meta or {}), "uuid": uuid, "domain": view.xml,
                      **({"memory_sha256": result.memory_sha256} if result.memory_sha256
                         else {})})
        digest = await repo.put_snapshot(remote, device, keys, m)
        p = Pointer(vm, dev, label, seq, int(time.time()), digest)
        await repo.put_pointer(remote, device, p)
        result.uploaded_bytes += len(m.to_bytes()) + len(p.to_bytes())
        keep = checkpoint if result.mode != SyncMode.AT_REST else st.checkpoint
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


async def _upload(store: ChunkStore, known: Mapping[bytes, BlobRef], keys: crypto.KeySet,
                  caps: list[_Capture], parent: Manifest | None, chunk_size: int,
                  result: SyncResult, hooks: Hooks) -> tuple[ChunkMap, ...]:
    """Read the captures, upload their new chunks; the snapshot's chunk maps.

    The chunks are read and hashed in :meth:`ChunkStore.upload`'s reader thread
    and sealed in its workers; progress and the stop check run per chunk there.
    """
    chunker = Chunker(keys.chunk_id, chunk_size)
    ids: dict[str, list[bytes | None]] = {}
    async with _opened(caps):
        watched = _watched(_chunks(caps, parent, chunker, ids, result), result.vm, hooks,
                           _capture_bytes(caps, chunk_size), chunk_size)
        try:
            upload = await store.upload(watched, known)
        except nbd.NBDError as exc:
            raise CaptureLost(result.vm, str(exc)) from exc
    result.uploaded_chunks, result.uploaded_bytes = upload.chunks, upload.bytes
    return tuple(ChunkMap(c.name, c.role, c.size, chunk_size, _complete(ids[c.name], c.name))
                 for c in caps)


async def _capture_indexing(store: ChunkStore, capture: Coroutine[Any, Any, list[_Capture]],
                            result: SyncResult) -> tuple[list[_Capture], dict[bytes, BlobRef]]:
    """The capture, and the store's index read meanwhile (the backup job mostly waits)."""
    loading = asyncio.ensure_future(store.load_index(repair=True))  # (under the lock)
    try:
        t0 = time.monotonic()
        caps = await capture
        result.capture_seconds = time.monotonic() - t0
    except BaseException:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        raise
    return caps, await loading


async def _put_keys(remote: RemoteStore, device: crypto.Ed25519PrivateKey, dev: str, vm: str,
                    keys: crypto.KeySet, recipients: Sequence[crypto.X25519PublicKey]) -> None:
    present = {e.path for e in await remote.list(f"{layout.vm_dir(dev, vm)}/keys")}
    for r in recipients:
        path = layout.vm_key(dev, vm, crypto.key_id(r))
        if path not in present:
            await repo.put_wrapped_key(remote, path, device, WrappedKey.create(f"vm:{vm}", r, keys))


async def _parent(remote: RemoteStore, device: crypto.Ed25519PrivateKey, dev: str, vm: str,
                  keys: crypto.KeySet, known_seq: int, writers: repo.Signers
                  ) -> Manifest | None:
    signers = {**writers, dev: device.public_key()}
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
                   result: SyncResult, job: contextlib.AsyncExitStack, *, keys: crypto.KeySet,
                   memory_file: Path, managed_save: Path) -> list[_Capture]:
    roles = ["system"] + ["user"] * (len(view.disks) - 1)
    pp = _passphrase(view, keys)
    memory = view.sync == MEMORY
    if not view.active:
        caps = [await _at_rest(d, role, chunk_size, pp)
                for d, role in zip(view.disks, roles, strict=True)]
        result.mode = SyncMode.AT_REST
        if memory and view.managed_save:
            caps.append(await _memory(managed_save, chunk_size, result))
        return caps
    caps = await _running(hv, view, parent, st, checkpoint, work, chunk_size, result, roles, pp,
                          memory_file if memory else None, job)
    if memory:
        caps.append(await _memory(memory_file, chunk_size, result))
    return caps


async def _at_rest(d: DiskSource, role: str, chunk_size: int, pp: bytes | None) -> _Capture:
    """A disk at rest, to be read whole through ``qemu-nbd`` (no copy)."""
    path = Path(d.path)
    passphrase = pp if d.secret else None
    size = await asyncio.to_thread(disks.virtual_size, path)
    untrusted = await asyncio.to_thread(nbd.map_image, path, passphrase, fmt=d.fmt)
    return _Capture(d.target, role, size, path,
                    disks.raw_chunks(disks.parse_map(untrusted), chunk_size, size),
                    fmt=d.fmt, passphrase=passphrase)


async def _running(hv: Hypervisor, view: SyncView, parent: Manifest | None,
                   st: state.VMSyncState, checkpoint: str, work: Path, chunk_size: int,
                   result: SyncResult, roles: list[str], pp: bytes | None,
                   memory_file: Path | None, job: contextlib.AsyncExitStack
                   ) -> list[_Capture]:
    """Pull-mode backup job (and, with ``memory_file``, the memory point) of a running VM.

    The job, and the disks' secret, stay until ``job`` closes.  The scratch file
    of a LUKS disk is itself a LUKS qcow2 under the disk's secret, so the scratch
    directory never holds plaintext guest data; each is checked to be encrypted
    as soon as the job has begun (:func:`_check_encrypted`).
    """
    sizes = {d.target: await asyncio.to_thread(disks.virtual_size, d.path) for d in view.disks}
    incremental: str | None = st.checkpoint
    if parent is None or st.checkpoint not in view.checkpoints:
        incremental = None
        result.fallback = "no parent snapshot" if parent is None else "no usable checkpoint"
    elif {(c.name, c.size) for c in parent.disks if c.role != MEMORY} != set(sizes.items()):
        incremental, result.fallback = None, "disks changed"
    encrypt = {d.target: d.secret for d in view.disks if d.secret}
    sock = await asyncio.to_thread(_socket_dir, work / "nbd", view.qemu_ids) / "s"
    await job.enter_async_context(_disk_secrets(hv, view, pp))
    while True:  # one consistent point; again if a fallback came after the VM resumed
        paused, resumed, down = False, False, time.monotonic()
        try:
            if memory_file is not None:
                paused = await save_and_restore_paused(hv, view.uuid, view.name,
                                                       str(memory_file))
            while True:  # incremental, else full
                scratch = {d.target: str(work / f"{d.target}-{checkpoint}.scratch.qcow2")
                           for d in view.disks}
                try:
                    at = await backup_pull(hv, view.uuid, view.name, str(sock), scratch,
                                           checkpoint, incremental, encrypt=encrypt,
                                           resume=paused)
                    if paused:
                        paused, resumed = False, True
                        result.downtime_seconds = at - down
                    try:
                        await asyncio.to_thread(_check_encrypted, view, scratch)
                        caps = [await _exported(d.target, role, sock, sizes[d.target],
                                                chunk_size, incremental is not None)
                                for d, role in zip(view.disks, roles, strict=True)]
                    except BaseException:
                        await backup_end(hv, view.uuid, view.name)
                        raise
                except (VMOperationFailed, disks.PartialChunk) as exc:
                    if incremental is None:
                        raise
                    log.warning("%s: incremental backup impossible (%s); reading the "
                                "whole disks", view.name, exc)
                    result.fallback = str(exc)
                    incremental = None
                    await delete_checkpoints(hv, view.uuid, view.name, None)
                    await asyncio.to_thread(_remove, scratch.values())
                    if resumed:
                        break  # the memory image is older now: take the point again
                    continue
                job.push_async_callback(backup_end, hv, view.uuid, view.name)
                result.mode = SyncMode.INCREMENTAL if incremental else SyncMode.FULL
                break
        finally:
            if paused:  # the backup did not begin: never leave the VM paused
                with contextlib.suppress(VMOperationFailed, VMNotFound):
                    if (await hv.domain(view.uuid)).state == DomState.PAUSED:
                        await hv.resume(view.uuid, view.name)
        if result.mode:
            return caps


def _socket_dir(path: Path, owner: tuple[int, int] | None) -> Path:
    """A 0700 directory where QEMU (running as ``owner``) creates the export's socket:
    the plaintext disks cross that socket, so only QEMU and root may reach it."""
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, *owner)
    return path


async def _exported(name: str, role: str, sock: Path, size: int, chunk_size: int,
                    dirty: bool) -> _Capture:
    """Disk ``name`` of a backup job: its dirty clusters, else every allocated one."""
    if dirty:
        untrusted = await asyncio.to_thread(nbd.map_export, sock, name,
                                            dirty_bitmap=f"qemu:dirty-bitmap:backup-{name}")
        covered = disks.covered_chunks(disks.parse_dirty(untrusted), chunk_size, size)
    else:
        untrusted = await asyncio.to_thread(nbd.map_export, sock, name)
        covered = disks.raw_chunks(disks.parse_map(untrusted), chunk_size, size)
    return _Capture(name, role, size, sock, covered, export=name)


def _check_encrypted(view: SyncView, scratch: Mapping[str, str]) -> None:
    """Every scratch file of a LUKS disk is LUKS-encrypted (libvirt was asked to); one
    that is not fails the sync (its job is ended and the file deleted): never
    plaintext at rest."""
    for d in view.disks:
        if not d.secret:
            continue
        path = Path(scratch[d.target])
        info = json.loads(disks.qemu_img("info", "-U", "--output=json", str(path)))
        if info.get("encrypted") is not True:
            raise SyncRefused(view.name, f"libvirt made the scratch file of disk {d.target} "
                              "unencrypted (this libvirt cannot encrypt backup scratch "
                              "files); the sync stopped and the file is deleted")


def _passphrase(view: SyncView, keys: crypto.KeySet) -> bytes | None:
    """The LUKS passphrase of the VM's disks, if they are encrypted (all or none)."""
    encrypted = [d for d in view.disks if d.secret]
    if not encrypted:
        return None
    if len(encrypted) != len(view.disks) or any(d.fmt != "qcow2" for d in encrypted):
        raise SyncRefused(view.name, "some disks are LUKS qcow2 and some not: not supported")
    return keys.passphrase()


@contextlib.asynccontextmanager
async def _disk_secrets(hv: Hypervisor, view: SyncView, pp: bytes | None
                        ) -> AsyncIterator[None]:
    """The disks' libvirt secret, defined private and ephemeral while the block runs
    (the backup job creates LUKS targets with it; a restore opens the disks)."""
    uuids = [d.secret for d in view.disks if d.secret]
    if pp is None or not uuids:
        yield
        return
    async with hv.ephemeral_secrets(uuids, pp, view.name):
        yield


async def _memory(path: Path, chunk_size: int, result: SyncResult) -> _Capture:
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except FileNotFoundError:
        raise LocalSyncError(f"the memory image {path} vanished before it was read") from None
    result.memory_bytes = size
    result.memory_sha256 = await asyncio.to_thread(_sha256, path)
    return _Capture(MEMORY, MEMORY, size, path, disks.whole_file(size, chunk_size), whole=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


@contextlib.asynccontextmanager
async def _opened(caps: list[_Capture]) -> AsyncIterator[None]:
    """NBD clients of the captures while the block reads them: the backup job's
    exports, and ``qemu-nbd`` serving each disk at rest."""
    with contextlib.ExitStack() as stack:
        for c in caps:
            if c.export:  # QEMU serves several connections: read and hash in parallel
                for _ in range(disks.FETCH_THREADS):
                    client = await asyncio.to_thread(nbd.connect, c.path, c.export)
                    stack.callback(client.close)
                    c.readers.append(client.read_run)
            elif c.fmt:
                client = await asyncio.to_thread(
                    stack.enter_context, nbd.export(c.path, c.passphrase, fmt=c.fmt))
                c.readers.append(client.read_run)
        try:
            yield
        finally:
            for c in caps:
                c.readers.clear()


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _chunks(caps: list[_Capture], parent: Manifest | None, chunker: Chunker,
            ids: dict[str, list[bytes | None]], result: SyncResult) -> Iterator[Chunk]:
    """Every chunk the captures hold; fills ``ids`` (parent ids where nothing changed)."""
    incremental = result.mode == SyncMode.INCREMENTAL
    old = {d.name: d for d in parent.disks} if parent and incremental else {}
    for cap in caps:
        n = chunk_count(cap.size, chunker.chunk_size)
        base = None if cap.whole else old.get(cap.name)
        ids[cap.name] = list(base.ids) if base is not None else [None] * n
        for chunk in disks.read_chunks(cap.path, cap.covered, chunker, cap.size, cap.readers):
            ids[cap.name][chunk.index] = chunk.id
            result.chunks_covered += 1
            result.chunks_read += not chunk.is_zero
            result.bytes_read += len(chunk.data)
            yield chunk


def _capture_bytes(caps: list[_Capture], chunk_size: int) -> int:
    return sum(min(chunk_size, c.size - i * chunk_size) for c in caps for i in c.covered)


def _watched(chunks: Iterator[Chunk], vm: str, hooks: Hooks, total: int,
             chunk_size: int) -> Iterator[Chunk]:
    """``chunks``, reporting progress and stopping between two chunks when asked."""
    done = 0
    hooks.progress(0, total)
    for chunk in chunks:
        if hooks.interrupted():
            raise SyncInterrupted(vm, f"{done} of {total} bytes read")
        done = min(total, done + (len(chunk.data) or chunk_size))  # a zero chunk: no data
        hooks.progress(done, total)
        yield chunk


def _complete(ids: list[bytes | None], disk: str) -> tuple[bytes, ...]:
    missing = [i for i, cid in enumerate(ids) if cid is None]
    if missing:
        raise LocalSyncError(f"disk {disk}: the capture does not cover chunk {missing[0]}")
    return tuple(cid for cid in ids if cid is not None)



"""The capture adapter: a VM's consistent point, and its chunks read through QEMU.

* running VM with a usable checkpoint from the last sync: an incremental
  pull-mode backup; only the dirty clusters are read from its NBD export;
  every other chunk id is the parent snapshot's.
* running VM without one (first sync, disk resized, or QEMU was killed and the
  bitmaps are inconsistent, which makes libvirt refuse the incremental backup):
  a full pull-mode backup, every allocated chunk read, hashed and compared
  with the index.
* stopped VM: its disks at rest through ``qemu-nbd``, read whole and compared
  the same way.

(:func:`.plan.backup_mode` and :func:`.plan.after_failed_backup` decide which.)
The backup job lasts while the chunks are read and is ended after the upload
(or when the sync fails), when the caller's exit stack closes; QEMU keeps the
point in time by copying a cluster the guest overwrites meanwhile into a
scratch file first.  Nothing else is copied.

Memory (the domain's ``<vmc:vm sync="memory"/>``, from the recipe's
``sync.memory``): a running VM is saved (its RAM to a file in ``memory_dir``,
which must be RAM-backed) and restored from that file at once, *paused*; the
backup job begins while it is paused, and the VM resumes as soon as the job
has begun.  Disks and memory are the same instant; the guest is down for the
save and the restore only.  A VM stopped with a managed save image (powerd)
is synced at rest with that image as its memory.  The image is chunked like a
disk (role ``memory`` in the snapshot), always read whole.

LUKS disks (business VMs, from provisioning): the disk secret is derived from
the VM's data key and handed to libvirt as an ephemeral secret while the backup
job runs and for the restore only.  Scratch files are LUKS qcow2 under the same
secret (checked when the job has begun), so no plaintext guest data rests in
the scratch directory; disks at rest are read through ``qemu-nbd`` with the
passphrase.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VMNotFound, VMOperationFailed
from ..provision import qemuimg
from ..store.chunker import Chunk, Chunker
from ..store.errors import LocalSyncError
from ..store.objects import Manifest
from ..tasks import all_of
from ..virt.libvirt import (
    DiskSource,
    DomState,
    Hypervisor,
    SyncView,
    backup_end,
    backup_pull,
    delete_checkpoints,
    save_and_restore_paused,
)
from . import disks, nbd, plan
from .job import MEMORY, SyncJob, SyncMode, SyncRefused, SyncResult
from .state import VMSyncState

log = logging.getLogger(__name__)


@dataclass
class Capture:
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


async def take(hv: Hypervisor, view: SyncView, job: SyncJob, parent: Manifest | None,
               st: VMSyncState, checkpoint: str, work: Path, result: SyncResult,
               stack: contextlib.AsyncExitStack, memory_file: Path) -> list[Capture]:
    """The VM's consistent point; a backup job (and the disks' secret) stays until
    ``stack`` closes.  Sets ``result.mode`` (and the memory fields)."""
    pp = job.keys.passphrase() if plan.encrypted(view.name, view.disks) else None
    memory = plan.memory_point(view.active, view.sync, view.managed_save)
    cs = job.chunk_size
    if not view.active:
        caps = [await _at_rest(d, role, cs, pp)
                for d, role in zip(view.disks, plan.roles(len(view.disks)), strict=True)]
        result.mode = SyncMode.AT_REST
        if memory == plan.MANAGED:
            caps.append(await _memory(job.managed_save_dir / f"{view.name}.save", cs, result))
        return caps
    caps = await _running(hv, view, parent, st, checkpoint, work, cs, result, pp,
                          memory_file if memory == plan.SAVE else None, stack)
    if memory == plan.SAVE:
        caps.append(await _memory(memory_file, cs, result))
    return caps


async def _at_rest(d: DiskSource, role: str, chunk_size: int, pp: bytes | None) -> Capture:
    """A disk at rest, to be read whole through ``qemu-nbd`` (no copy)."""
    path = Path(d.path)
    passphrase = pp if d.secret else None
    size = await asyncio.to_thread(disks.virtual_size, path)
    untrusted = await asyncio.to_thread(nbd.map_image, path, passphrase, fmt=d.fmt)
    return Capture(d.target, role, size, path,
                   disks.raw_chunks(disks.parse_map(untrusted), chunk_size, size),
                   fmt=d.fmt, passphrase=passphrase)


async def _running(hv: Hypervisor, view: SyncView, parent: Manifest | None,
                   st: VMSyncState, checkpoint: str, work: Path, chunk_size: int,
                   result: SyncResult, pp: bytes | None, memory_file: Path | None,
                   stack: contextlib.AsyncExitStack) -> list[Capture]:
    """Pull-mode backup job (and, with ``memory_file``, the memory point) of a running VM.

    The scratch file of a LUKS disk is itself a LUKS qcow2 under the disk's
    secret, so the scratch directory never holds plaintext guest data; each is
    checked to be encrypted as soon as the job has begun (:func:`_check_encrypted`).
    """
    sizes = {d.target: await asyncio.to_thread(disks.virtual_size, d.path) for d in view.disks}
    incremental, result.fallback = plan.backup_mode(parent, st.checkpoint, view.checkpoints,
                                                    sizes)
    encrypt = {d.target: d.secret for d in view.disks if d.secret}
    roles = plan.roles(len(view.disks))
    sock = await asyncio.to_thread(_socket_dir, work / "nbd", view.qemu_ids) / "s"
    await stack.enter_async_context(_disk_secrets(hv, view, pp))
    scratch = {d.target: str(work / f"{d.target}-{checkpoint}.scratch.qcow2")
               for d in view.disks}
    while True:  # one consistent point; again if a fallback came after the VM resumed
        paused, resumed = False, False
        try:
            # before the VM pauses (not part of its downtime)
            await _luks_scratch(scratch, sizes, encrypt, pp)
            down = time.monotonic()
            if memory_file is not None:
                paused = await save_and_restore_paused(hv, view.uuid, view.name,
                                                       str(memory_file))
            while True:  # incremental, else full
                try:
                    at = await backup_pull(hv, view.uuid, view.name, str(sock), scratch,
                                           checkpoint, incremental, encrypt=encrypt,
                                           resume=paused, reuse=bool(encrypt))
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
                    then = plan.after_failed_backup(incremental, resumed)
                    if not then:
                        raise
                    log.warning("%s: incremental backup impossible (%s); reading the "
                                "whole disks", view.name, exc)
                    result.fallback, incremental = str(exc), None
                    await delete_checkpoints(hv, view.uuid, view.name, None)
                    await asyncio.to_thread(_remove, scratch.values())
                    if then == plan.RETAKE:
                        break  # the memory image is older now: take the point again
                    await _luks_scratch(scratch, sizes, encrypt, pp)  # for the full job
                    continue
                stack.push_async_callback(backup_end, hv, view.uuid, view.name)
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
                    dirty: bool) -> Capture:
    """Disk ``name`` of a backup job: its dirty clusters, else every allocated one."""
    if dirty:
        untrusted = await asyncio.to_thread(nbd.map_export, sock, name,
                                            dirty_bitmap=f"qemu:dirty-bitmap:backup-{name}")
        covered = disks.covered_chunks(disks.parse_dirty(untrusted), chunk_size, size)
    else:
        untrusted = await asyncio.to_thread(nbd.map_export, sock, name)
        covered = disks.raw_chunks(disks.parse_map(untrusted), chunk_size, size)
    return Capture(name, role, size, sock, covered, export=name)


async def _luks_scratch(scratch: Mapping[str, str], sizes: Mapping[str, int],
                        encrypt: Mapping[str, str], pp: bytes | None) -> None:
    """With LUKS disks (``encrypt``), the LUKS qcow2 scratch file of each disk under the
    disks' passphrase, for the backup job to reuse: made here with a PBKDF as short as
    every disk of ours (``qemuimg``: the key is full-entropy), all at once (each
    ``qemu-img create`` calibrates its PBKDF for seconds).  A failure leaves what was
    made to the run, which empties the scratch directory."""
    if not encrypt:
        return
    assert pp is not None

    async def one(target: str, path: str) -> None:
        await qemuimg.create(Path(path), sizes[target], pp)
        log.debug("scratch file of disk %s made: %s", target, path)
    await all_of(*(one(target, path) for target, path in scratch.items()))


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


async def _memory(path: Path, chunk_size: int, result: SyncResult) -> Capture:
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except FileNotFoundError:
        raise LocalSyncError(f"the memory image {path} vanished before it was read") from None
    result.memory_bytes = size
    result.memory_sha256 = await asyncio.to_thread(_sha256, path)
    return Capture(MEMORY, MEMORY, size, path, disks.whole_file(size, chunk_size), whole=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


@contextlib.asynccontextmanager
async def opened(caps: list[Capture]) -> AsyncIterator[None]:
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


def chunks(caps: list[Capture], book: plan.ChunkBook, chunker: Chunker) -> Iterator[Chunk]:
    """Every chunk the (opened) captures hold, in order, noted in ``book``."""
    for cap in caps:
        book.begin(cap.name, cap.size, whole=cap.whole)
        for chunk in disks.read_chunks(cap.path, cap.covered, chunker, cap.size, cap.readers):
            book.add(cap.name, chunk)
            yield chunk


def covered_bytes(caps: list[Capture], chunk_size: int) -> int:
    return sum(plan.covered_bytes(c.size, c.covered, chunk_size) for c in caps)


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)

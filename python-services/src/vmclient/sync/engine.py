"""One sync of one VM: consistent point → changed chunks → packs → index → snapshot → latest.

:func:`sync_vm` refuses what is not to be synced, takes the device lock
(:mod:`.lock`) and runs the steps of :data:`.plan.SEQUENCE` in order
(repository-format.md §8.3): wrapped data keys (so a restore can open what
follows); the parent; the capture (:mod:`.capture`: backup job or disks at rest,
NBD), the VM's index read meanwhile; packs, then one index; the snapshot
(exclusive, ``seq`` = last + 1); ``latest``; the local record (:mod:`.state`);
old libvirt checkpoints deleted; unlock.  The decisions are :mod:`.plan`'s (pure);
this module only does what they say.  A crash at any point leaves the previous
snapshot and ``latest`` intact; packs that arrived are found by
:meth:`ChunkStore.load_index` (by header if no index names them) and not uploaded
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from ..host.files import check_ram_backed
from ..store import crypto, layout, repo
from ..store.chunker import Chunker
from ..store.chunkstore import ChunkStore
from ..store.documents import WrappedKey
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.objects import BlobRef, ChunkMap, Manifest
from ..store.remote import RemoteStore
from ..virt.libvirt import Hypervisor, SyncView, delete_checkpoints, sync_view
from . import capture, lock, nbd, plan, state
from .job import CaptureLost, Hooks, SyncInterrupted, SyncJob, SyncMode, SyncRefused, SyncResult

__all__ = ["CaptureLost", "Hooks", "Run", "SyncInterrupted", "SyncJob", "SyncMode",
           "SyncRefused", "SyncResult", "run", "sync_vm"]

log = logging.getLogger(__name__)


async def sync_vm(hv: Hypervisor, remote: RemoteStore, job: SyncJob,
                  hooks: Hooks | None = None) -> SyncResult:
    """Sync the VM ``job`` names; refused (:class:`SyncRefused`) before anything is
    locked or written unless it is a business VM with sync enabled."""
    view = await sync_view(hv, job.uuid)
    if reason := plan.refusal(view.kind, view.sync):
        raise SyncRefused(view.name, reason)
    if plan.memory_point(view.active, view.sync, view.managed_save) == plan.SAVE:
        await asyncio.to_thread(check_ram_backed, job.memory_dir, view.name)
    return await run(Run(hv, remote, job, view, hooks or Hooks()))


async def run(r: Run) -> SyncResult:
    """The steps of one sync, in :data:`.plan.SEQUENCE` order, under the device lock."""
    started = time.monotonic()
    async with lock.device_lock(r.remote, r.job.device_id, r.vm), r:
        steps = r.steps()
        for step in plan.SEQUENCE:
            await steps[step]()
    r.result.seq = r.seq
    r.result.seconds = time.monotonic() - started
    log.info("%s: snapshot %d (%s) read %d chunks, uploaded %d bytes in %.1f s", r.vm,
             r.result.seq, r.result.mode, r.result.chunks_read, r.result.uploaded_bytes,
             r.result.seconds)
    return r.result


class Run:
    """One sync in flight: what its steps learn, and the steps themselves.

    As a context manager it owns the VM's scratch directory (emptied before and
    removed after), the backup job's exit stack and the memory image (deleted as
    soon as it is read, and on any failure).
    """

    def __init__(self, hv: Hypervisor, remote: RemoteStore, job: SyncJob, view: SyncView,
                 hooks: Hooks) -> None:
        self.hv, self.remote, self.job, self.view, self.hooks = hv, remote, job, view, hooks
        self.vm, self.dev = view.name, job.device_id
        self.result = SyncResult(self.vm)
        self.work = job.scratch_dir / self.vm
        self.stack = contextlib.AsyncExitStack()  # the backup job lasts until read
        self.store = ChunkStore(remote, layout.vm_store(self.dev, self.vm), job.keys)
        self.record = state.VMSyncState()
        self.parent: Manifest | None = None
        self.seq = 0
        self.checkpoint = ""
        self.memory_file: Path | None = None  # plaintext RAM: gone as soon as it is read
        self.caps: list[capture.Capture] = []
        self.known: dict[bytes, BlobRef] = {}
        self.maps: tuple[ChunkMap, ...] = ()
        self.manifest: Manifest | None = None
        self.digest = ""

    def steps(self) -> dict[plan.Step, Callable[[], Awaitable[None]]]:
        S = plan.Step
        return {S.KEYS: self.put_keys, S.PARENT: self.find_parent, S.CAPTURE: self.capture_point,
                S.UPLOAD: self.upload, S.SNAPSHOT: self.put_snapshot, S.LATEST: self.put_latest,
                S.RECORD: self.save_record, S.CHECKPOINTS: self.drop_checkpoints}

    async def __aenter__(self) -> Run:
        shutil.rmtree(self.work, ignore_errors=True)  # left by an interrupted sync
        self.work.mkdir(parents=True)
        self.work.chmod(0o755)  # QEMU (another user) writes the backup targets here
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._end_capture()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    async def _end_capture(self) -> None:
        try:
            await self.stack.aclose()
        finally:
            if self.memory_file is not None:
                self.memory_file.unlink(missing_ok=True)

    # -- the steps ---------------------------------------------------------------------

    async def put_keys(self) -> None:
        present = {e.path for e in await self.remote.list(
            f"{layout.vm_dir(self.dev, self.vm)}/keys")}
        for r in self.job.recipients:
            path = layout.vm_key(self.dev, self.vm, crypto.key_id(r))
            if path not in present:
                await repo.put_wrapped_key(self.remote, path, self.job.device,
                                           WrappedKey.create(f"vm:{self.vm}", r, self.job.keys))

    async def find_parent(self) -> None:
        self.record = await asyncio.to_thread(state.load, self.job.state_dir, self.vm)
        self.parent = await self._parent(self.record.seq)
        stored = await self.remote.list(f"{layout.vm_dir(self.dev, self.vm)}/snapshots")
        self.seq = plan.next_seq(self.parent, (e.path.rsplit("/", 1)[-1] for e in stored))
        self.checkpoint = plan.checkpoint_name(self.seq, secrets.token_hex(4))
        self.memory_file = self.job.memory_dir / f"{self.vm}-{self.checkpoint}.save"

    async def _parent(self, known_seq: int) -> Manifest | None:
        """The snapshot ``latest`` names (signed by this device or one of ``writers``),
        whose seq must be at least the one this device recorded."""
        signers = {**self.job.writers, self.dev: self.job.device.public_key()}
        try:
            p = await repo.get_pointer(self.remote, signers, self.dev, self.vm, known_seq)
        except ObjectNotFound:
            if known_seq:
                raise RemoteIntegrityError(
                    "pointer", f"{self.vm}/latest", layout.vm_pointer(self.dev, self.vm),
                    f"missing, but this device wrote seq {known_seq}") from None
            return None
        return await repo.get_snapshot(self.remote, signers, self.job.keys, device=self.dev,
                                       vm=self.vm, snapshot=p.snapshot, digest=p.manifest)

    async def capture_point(self) -> None:
        """The capture, and the store's index read meanwhile (the backup job mostly waits)."""
        loading = asyncio.ensure_future(self.store.load_index(repair=True))  # (locked)
        try:
            t0 = time.monotonic()
            self.caps = await self.take()
            self.result.capture_seconds = time.monotonic() - t0
        except BaseException:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            raise
        self.known = await loading
        if self.hooks.interrupted():
            raise SyncInterrupted(self.vm, "after the capture")

    async def take(self) -> list[capture.Capture]:
        assert self.memory_file is not None  # (the parent step names it)
        return await capture.take(self.hv, self.view, self.job, self.parent, self.record,
                                  self.checkpoint, self.work, self.result, self.stack,
                                  self.memory_file)

    async def upload(self) -> None:
        """Read the captures, upload their new chunks (packs, then an index); end the job.

        The chunks are read and hashed in :meth:`ChunkStore.upload`'s reader thread
        and sealed in its workers; progress and the stop check run per chunk there.
        """
        cs = self.job.chunk_size
        book = plan.ChunkBook(self.result, self.parent, cs)
        async with capture.opened(self.caps):
            chunks = plan.watched(
                capture.chunks(self.caps, book, Chunker(self.job.keys.chunk_id, cs)),
                self.vm, self.hooks, capture.covered_bytes(self.caps, cs), cs)
            try:
                uploaded = await self.store.upload(chunks, self.known)
            except nbd.NBDError as exc:
                raise CaptureLost(self.vm, str(exc)) from exc
        self.result.uploaded_chunks, self.result.uploaded_bytes = uploaded.chunks, uploaded.bytes
        self.maps = tuple(book.chunk_map(c.name, c.role, c.size) for c in self.caps)
        await self._end_capture()

    async def put_snapshot(self) -> None:
        m = plan.snapshot(self.job, self.vm, self.seq, self.parent, self.maps, self.view.xml,
                          self.result.memory_sha256, int(time.time()))
        self.digest = await repo.put_snapshot(self.remote, self.job.device, self.job.keys, m)
        self.manifest = m
        self.result.uploaded_bytes += len(m.to_bytes())

    async def put_latest(self) -> None:
        assert self.manifest is not None  # (the snapshot step wrote it)
        p = plan.pointer(self.manifest, self.digest, int(time.time()))
        await repo.put_pointer(self.remote, self.job.device, p)
        self.result.uploaded_bytes += len(p.to_bytes())

    async def save_record(self) -> None:
        await asyncio.to_thread(state.save, self.job.state_dir, self.vm,
                                plan.record(self.record, self.seq, self.result.mode,
                                            self.checkpoint))

    async def drop_checkpoints(self) -> None:
        if plan.drops_checkpoints(self.result.mode):
            await delete_checkpoints(self.hv, self.job.uuid, self.vm, self.checkpoint)

"""A streamed restore: ``vmclientctl vm restore VM --stream``; the VM runs while its disks
still stream in.  docs/sync.md, "Streamed restore", has the design.

1. As a full restore (:func:`.restore.prepare`): the data key, the verified
   snapshot, the rebuilt definition.  A memory image is downloaded whole first
   (every chunk verified, and the image against its SHA-256).
2. Per disk, under ``<vm dir>/stream/`` (0700, owned by the user QEMU runs as):
   the disk's chunk ids, a :class:`~.streamcore.StreamSpec`, and an **nbdkit**
   running our Python plugin (:mod:`.nbdplugin`) on a Unix socket there (those
   processes: :mod:`.nbdkit`).  The disk itself is a new LUKS qcow2 overlay whose
   backing file is that export.
3. The domain is defined with each disk backed by its export
   (``error_policy``/``rerror_policy='stop'``) and started (or restored from the
   memory image).  The existence of ``stream/`` says the VM is streaming.
4. The fill (:meth:`Streams.run_fill`, a task of provd; its loop: :mod:`.fill`): a
   libvirt block pull of each disk at ``fill_mib_s``; it keeps each nbdkit alive
   (restarted if it dies), restarts a pull that failed, resumes a VM paused on an I/O
   error once the repository answers again.  A pull is (re)started only while the VM
   runs and the repository answers (probed with backoff: a dead link is not hammered);
   while the VM is paused otherwise (powerd before the laptop sleeps, the user) the
   pull is cancelled, the pulled clusters staying.  A fill that fails on an error
   nobody foresaw is tried again with the probes' backoff (:class:`.fill.Attempts`),
   not left dead while the VM runs on.  When no disk is backed any more
   (QEMU drops the backing file, libvirt the ``backingStore``), the nbdkits stop and
   ``stream/`` goes.  provd resumes every stream at its start
   (:meth:`Streams.resume_all`): the overlay keeps what was pulled, so a fill after a
   power loss continues.  How far each VM's fill is (bytes local, bytes total,
   :attr:`Streams.filled`) goes to provd's ``Fills`` property, every VM filling at
   once; ``stream/filled`` keeps it for the next provd.
5. ``vm remove`` of a streaming VM (:meth:`Streams.remove`): its fill ends and its
   nbdkits stop (a former provd's too) before the VM is removed as any VM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from ..host.files import check_ram_backed, write_private
from ..store import layout
from ..store.objects import BASE_ID, ChunkMap
from ..tasks import all_of, ended
from ..virt.libvirt import DomState
from ..virt.stream import qemu_owner, with_nbd_backing
from .cache import ChunkCache
from .fill import Attempts, Fill, LinkProbe
from .installer import Installed, Provisioner
from .nbdkit import Nbdkits
from .progress import Progress
from .qemuimg import create_overlay
from .redefine import RestoreError
from .restore import MEMORY, Prepared, download, prepare, resume_from, undo_restore, write_memory
from .streamcore import SPEC_VERSION, StreamSpec, Timeline

log = logging.getLogger(__name__)
STREAM_DIR = "stream"
POLL = 0.5  # seconds between two looks at a fill
T = TypeVar("T")
FillsFn = Callable[[Mapping[str, tuple[int, int]]], None]


class Streams:
    """provd's streamed restores: their set-up, fill tasks and nbdkits (:class:`.Nbdkits`)."""

    def __init__(self, prov: Provisioner, config_path: Path, *,
                 read_timeout: float | None = None, poll: float = POLL,
                 report: FillsFn | None = None) -> None:
        self.prov, self.config_path = prov, config_path
        self.report = report  # told of every change of ``filled``
        self.read_timeout = (prov.cfg.stream_read_timeout_s if read_timeout is None
                             else read_timeout)
        self.link = LinkProbe(prov, poll, self.read_timeout)  # (its poll: the fill's)
        self.fills: dict[str, asyncio.Task[None]] = {}
        self.nbdkits = Nbdkits(self._stream_dir)
        self.done: dict[str, asyncio.Event] = {}
        self.filled: dict[str, tuple[int, int]] = {}  # vm → (bytes local, bytes total)

    def _stream_dir(self, vm: str) -> Path:
        return self.prov.vm_dir(vm) / STREAM_DIR

    # -- the restore ---------------------------------------------------------------------

    async def restore(self, vm: str, *, snapshot: str | None = None, from_device: str = "",
                      min_seq: int = 0) -> Installed:
        """The VM runs once only what its start needs is there: after the checks (key,
        snapshot, lease), its network, the memory image (if any), every disk's nbdkit and
        LUKS overlay are made at once (each ``qemu-img create`` spends seconds of CPU
        calibrating its PBKDF: the longest step), then it is defined and started."""
        prov = self.prov
        timeline = Timeline()
        progress = Progress(vm=vm)
        progress.begin("catalog", 0)
        prov.report(progress)
        with timeline.step("catalog"):  # (refused at once if it may not run)
            p = await prepare(prov, vm, snapshot=snapshot, from_device=from_device,
                              min_seq=min_seq, runs=True, network=False)
        m = p.snapshot
        disks = [d for d in m.disks if d.role != MEMORY]
        if any(BASE_ID in d.ids for d in disks):
            raise RestoreError(vm, f"snapshot {m.label} is on a base image: not streamable")
        memory = next((d for d in m.disks if d.role == MEMORY), None)
        marker = prov.install_marker(vm)
        mem_file = prov.cfg.staging_dir / f"{vm}.save"
        pp = p.keys.passphrase()
        defined, adopted = "", False
        sockets: dict[str, str] = {}
        try:
            progress.begin("stream", 0)
            prov.report(progress)
            if not p.accepted:  # (the nbdkit plugin finds the key where provd keeps it)
                prov.keys.adopt(vm, p.keys)
                adopted = True
                write_private(marker, b"restore started\n")  # a crash from here is undone
            steps = [_timed(timeline, "network", prov.ensure_network(p.domain.recipe.zone)),
                     self._lay_out(p, disks, sockets, timeline)]
            if memory is not None:  # whole before the VM runs
                steps.append(_timed(timeline, "memory",
                                    self._memory_image(p, memory, mem_file, progress)))
            await all_of(*steps)
            if memory is not None:
                progress.begin("stream", 0)
                prov.report(progress)
            with timeline.step("define"):
                defined = await prov.hv.define(with_nbd_backing(p.domain.xml, sockets), vm)
                write_private(prov.recipe_file(vm), p.domain.recipe_text.encode())
            with timeline.step("start"):
                if memory is not None:
                    await resume_from(prov, vm, defined, mem_file, pp)
                else:
                    await prov.start(vm)
            marker.unlink(missing_ok=True)
        except BaseException:
            await self.nbdkits.stop(vm)
            await undo_restore(prov, vm, defined, adopted)
            raise
        finally:
            mem_file.unlink(missing_ok=True)
        log.info("VM %s runs from snapshot %s while its disks stream in (%s)", vm, m.label,
                 timeline.summary())
        self.follow(vm)
        return await prov.get(vm)

    async def _memory_image(self, p: Prepared, memory: ChunkMap, mem_file: Path,
                            progress: Progress) -> None:
        """The memory image, downloaded whole and checked, in the RAM-backed staging dir."""
        prov, vm = self.prov, p.snapshot.subject
        cache = ChunkCache(prov.cfg.state_dir, f".vm-{vm}")
        try:
            await download(prov.report, p.remote, layout.vm_store(p.device, vm), p.keys,
                           dataclasses.replace(p.snapshot, disks=(memory,)), cache, progress)
            await asyncio.to_thread(check_ram_backed, prov.cfg.staging_dir, vm)
            digest = await asyncio.to_thread(write_memory, cache, memory, p.keys, mem_file)
        finally:
            cache.close()
        await asyncio.to_thread(cache.clear)
        if digest != p.snapshot.meta.get("memory_sha256", digest):
            raise RestoreError(vm, "the memory image does not match its SHA-256")

    async def _lay_out(self, p: Prepared, disks: list[ChunkMap], sockets: dict[str, str],
                       timeline: Timeline) -> None:
        """``<vm dir>/stream/``, an nbdkit per disk, the overlays, every disk at once;
        ``sockets``: target dev → socket."""
        prov, vm = self.prov, p.snapshot.subject
        vm_dir = prov.vm_dir(vm)
        vm_dir.mkdir(parents=True, exist_ok=False)
        vm_dir.chmod(0o711)  # QEMU (libvirt's DAC label) must reach the disks
        sdir = vm_dir / STREAM_DIR
        sdir.mkdir(mode=0o700)
        owner = await qemu_owner(prov.hv, prov.cfg.domain_type)
        if owner is not None:  # only QEMU and root reach the plaintext exports
            os.chown(sdir, *owner)
        steps = []
        for d in disks:
            spec = StreamSpec(SPEC_VERSION, str(self.config_path), vm, d.name,
                              layout.vm_store(p.device, vm), d.size, d.chunk_size,
                              f"{d.name}.ids", self.read_timeout)
            write_private(sdir / spec.ids, b"".join(d.ids))
            write_private(sdir / f"{d.name}.json", spec.to_json())
            sock = self.nbdkits.paths(vm, d.name)[1]  # (the overlay does not open it: made at once)
            sockets[d.name] = str(sock)
            steps += [_timed(timeline, f"nbdkit {d.name}", self.nbdkits.serve(vm, d.name)),
                      _timed(timeline, f"overlay {d.name}",
                             create_overlay(vm_dir / p.domain.files[d.name], d.size,
                                            p.keys.passphrase(), sock))]
        await all_of(*steps)

    # -- removal -------------------------------------------------------------------------

    async def remove(self, vm: str) -> None:
        """``vm remove``: a streaming VM's fill ends and its nbdkits stop before the VM is
        removed as any VM (:meth:`.Provisioner.remove`: the domain destroyed, the key
        shredded, its directory with the partial overlay and ``stream/`` deleted, the
        definition undefined).  Should that fail, the fill goes on."""
        task = self.fills.pop(vm, None)
        if task is not None:
            await ended(task)
        self.link.probes.pop(vm, None)
        if self._stream_dir(vm).exists():
            info = await self.prov.hv.lookup_name(vm)
            if info.state.active or info.state == DomState.PAUSED:  # QEMU lets nbdkit go
                await self.prov.hv.destroy(info.uuid, vm)
            await self.nbdkits.stop(vm)
        try:
            await self.prov.remove(vm)
        except BaseException:
            if self._stream_dir(vm).exists():
                self.follow(vm)
            raise
        log.info("VM %s removed while its disks streamed in: fill and nbdkit stopped", vm)

    # -- the fill ------------------------------------------------------------------------

    def follow(self, vm: str) -> None:
        if vm in self.fills and not self.fills[vm].done():
            return
        self.done[vm] = asyncio.Event()
        self.fills[vm] = asyncio.create_task(self.run_fill(vm), name=f"fill {vm}")

    async def resume_all(self) -> list[str]:
        """Every VM whose disks were streaming when provd stopped (or the power went).

        Also one whose restore's crash marker is still there (provd stopped during the
        restore): once the VM runs (libvirt finishes a start provd was killed in, or
        the user starts it) the restore is done (:meth:`.Fill._restored`); a VM the restore
        did not get to define has its nbdkits stopped (the next restore of it undoes
        the rest)."""
        out = []
        images = self.prov.cfg.images_dir
        for sdir in sorted(images.glob(f"*/{STREAM_DIR}")) if images.exists() else []:
            vm = sdir.parent.name
            out.append(vm)
            self.follow(vm)
        return out

    async def run_fill(self, vm: str) -> None:
        """The fill of ``vm``'s disks, in :attr:`filled` from its start to its end (every
        disk local, the VM removed, provd stopping: cancelled).  A fill that fails on any
        other error is tried again (:class:`.fill.Attempts`: with the link probes'
        backoff, from ``stream/`` as the next provd would) and stays in :attr:`filled`,
        rather than leave the VM on its network-backed disks until provd restarts."""
        attempts = Attempts(vm, self.link.poll)

        def looked(counts: tuple[int, int]) -> None:
            attempts.looked()
            self._publish(vm, counts)
        try:
            while True:
                try:
                    complete = await Fill(self.prov, self.nbdkits, self.link, vm,
                                          self._stream_dir(vm), looked).run()
                    attempts.looked()  # (it may end without a look that reports)
                    break
                except Exception as exc:  # (a cancellation is no Exception: it ends the fill)
                    if _cancelling():  # (one turned into another error on its way out)
                        raise
                    delay = attempts.fail(exc)
                await asyncio.sleep(delay)
        finally:
            self._publish(vm, None)
        if complete:
            self.done[vm].set()

    def _publish(self, vm: str, counts: tuple[int, int] | None) -> None:
        if counts == self.filled.get(vm):
            return
        if counts is None:
            del self.filled[vm]
        else:
            self.filled[vm] = counts
        if self.report is not None:
            self.report(self.filled)

    async def close(self) -> None:
        """provd stops: the fill tasks end; each nbdkit stays (the VM reads from it) and
        the next provd takes it over (:meth:`resume_all`)."""
        await ended(*self.fills.values())


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _timed(timeline: Timeline, name: str, step: Awaitable[T]) -> T:
    with timeline.step(name):
        return await step

"""A streamed restore: ``vmclientctl vm restore VM --stream``; the VM runs while its disks
still stream in.  docs/sync.md, "Streamed restore", has the design.

1. As a full restore (:func:`.restore.prepare`): the data key, the verified
   snapshot, the rebuilt definition.  A memory image is downloaded whole first
   (every chunk verified, and the image against its SHA-256).
2. Per disk, under ``<vm dir>/stream/`` (0700, owned by the user QEMU runs as):
   the disk's chunk ids, a :class:`~.streamcore.StreamSpec`, and an **nbdkit**
   running our Python plugin (:mod:`.nbdplugin`) on a Unix socket there.  The
   disk itself is a new LUKS qcow2 overlay whose backing file is that export.
3. The domain is defined with each disk backed by its export
   (``error_policy``/``rerror_policy='stop'``) and started (or restored from the
   memory image).  The existence of ``stream/`` says the VM is streaming.
4. The fill (:meth:`Streams.run_fill`, a task of provd): a libvirt block pull of
   each disk at ``fill_mib_s``; it keeps each nbdkit alive (restarted if it dies),
   restarts a pull that failed, resumes a VM paused on an I/O error once the
   repository answers again.  A pull is (re)started only while the VM runs and the
   repository answers (probed with backoff: a dead link is not hammered); while the
   VM is paused otherwise (powerd before the laptop sleeps, the user) the pull is
   cancelled, the pulled clusters staying.  When no disk is backed any more (QEMU
   drops the backing file, libvirt the ``backingStore``), the nbdkits stop and
   ``stream/`` goes.  provd resumes every stream at its start
   (:meth:`Streams.resume_all`): the overlay keeps what was pulled, so a fill after
   a power loss continues.  How far each VM's fill is (bytes local, bytes total,
   :attr:`Streams.filled`) goes to provd's ``Fills`` property, every VM filling at
   once; ``stream/filled`` keeps it for the next provd.
5. ``vm remove`` of a streaming VM (:meth:`Streams.remove`): its fill ends and its
   nbdkits stop (a former provd's too) before the VM is removed as any VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import site
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from ..errors import VMClientError, VMNotFound
from ..host.files import check_ram_backed, write_atomic, write_private
from ..store import layout
from ..store.objects import BASE_ID, ChunkMap
from ..tasks import all_of
from ..virt.libvirt import DomState
from ..virt.stream import block_pull, cancel_pull, pull_state, qemu_owner, with_nbd_backing
from .cache import ChunkCache
from .installer import Installed, Provisioner
from .progress import Progress
from .qemuimg import create_overlay
from .redefine import RestoreError
from .restore import MEMORY, Prepared, download, prepare, resume_from, undo_restore, write_memory
from .streamcore import SPEC_VERSION, FillProgress, StreamSpec, Timeline

log = logging.getLogger(__name__)
STREAM_DIR = "stream"
PLUGIN = Path(__file__).with_name("nbdplugin.py")
POLL = 0.5  # seconds between two looks at a fill
PROBE_MOST = 5.0  # seconds at most between two probes of an unreachable repository
STOP_WAIT = 10.0  # seconds an nbdkit has to end on SIGTERM before SIGKILL
READY_TIMEOUT = 60.0  # nbdkit loads the store's index before it serves
FILLED = "filled"  # in ``stream/``: how far each disk's fill is (FillProgress.to_json)
SYNC_EVERY = 5.0  # seconds at least between two durable (fsync'd) writes of it
T = TypeVar("T")
FillsFn = Callable[[Mapping[str, tuple[int, int]]], None]


class StreamError(VMClientError):
    """Streaming VM {}: {}"""


class Streams:
    """provd's streamed restores: their nbdkit processes and fill tasks."""

    def __init__(self, prov: Provisioner, config_path: Path, *,
                 read_timeout: float | None = None, poll: float = POLL,
                 report: FillsFn | None = None) -> None:
        self.prov, self.config_path = prov, config_path
        self.report = report  # told of every change of ``filled``
        self.read_timeout = (prov.cfg.stream_read_timeout_s if read_timeout is None
                             else read_timeout)
        self.poll = poll
        self._probe: dict[str, tuple[float, float]] = {}  # vm → (next probe, its delay)
        self.fills: dict[str, asyncio.Task[None]] = {}
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self.adopted: dict[tuple[str, str], int] = {}  # a former provd's nbdkits: pids
        self.done: dict[str, asyncio.Event] = {}
        self.filled: dict[str, tuple[int, int]] = {}  # vm → (bytes local, bytes total)

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
            await self.stop_serving(vm)
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
            sock = self._paths(vm, d.name)[1]  # (the overlay does not open it: made at once)
            sockets[d.name] = str(sock)
            steps += [_timed(timeline, f"nbdkit {d.name}", self.serve(vm, d.name)),
                      _timed(timeline, f"overlay {d.name}",
                             create_overlay(vm_dir / p.domain.files[d.name], d.size,
                                            p.keys.passphrase(), sock))]
        await all_of(*steps)

    # -- nbdkit --------------------------------------------------------------------------

    def _paths(self, vm: str, disk: str) -> tuple[Path, Path, Path]:
        sdir = self.prov.vm_dir(vm) / STREAM_DIR
        return sdir / f"{disk}.json", sdir / f"{disk}.sock", sdir / f"{disk}.pid"

    async def serve(self, vm: str, disk: str) -> Path:
        """Start the nbdkit serving ``disk`` (again, if it died); returns its socket once
        it accepts connections."""
        spec, sock, pidfile = self._paths(vm, disk)
        pid = _serving(pidfile, spec)
        if pid:  # ours, or left running by the provd before
            if (vm, disk) not in self.procs:
                self.adopted[(vm, disk)] = pid
            return sock
        if not sock.parent.is_dir():
            raise StreamError(vm, f"{sock.parent} is gone: the VM was removed")
        old = self.procs.pop((vm, disk), None)
        if old is not None and old.returncode is None:  # not serving: stuck or dying
            with contextlib.suppress(ProcessLookupError):
                old.kill()
            await old.wait()
        exe = shutil.which("nbdkit")
        if exe is None:
            raise StreamError(vm, "nbdkit is not installed (packages nbdkit and its Python "
                              "plugin)")
        bound = sock.with_suffix(".new")  # renamed to ``sock`` once QEMU may connect
        for stale in (sock, pidfile, bound):
            stale.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(_python_path())}
        log_path = sock.with_suffix(".log")
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, "--foreground", "--readonly", "--unix", str(bound), "--pidfile",
                str(pidfile), "python", str(PLUGIN), f"spec={spec}", env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)  # it outlives a provd restart: the VM reads it
        finally:
            os.close(out)
        self.procs[(vm, disk)] = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not pidfile.exists():
            if proc.returncode is not None or loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                tail = log_path.read_text(errors="replace")[-800:]
                raise StreamError(vm, f"nbdkit for disk {disk} did not start: {tail}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
        log.info("VM %s: nbdkit serves disk %s (ready in %.1f s)", vm, disk,
                 loop.time() - deadline + READY_TIMEOUT)
        sdir_stat = sock.parent.stat()
        os.chown(bound, sdir_stat.st_uid, sdir_stat.st_gid)  # QEMU's, as its directory
        os.chmod(bound, 0o600)
        os.rename(bound, sock)
        return sock

    async def stop_serving(self, vm: str) -> None:
        sdir = self.prov.vm_dir(vm) / STREAM_DIR
        adopted = {pid for (name, disk), pid in self.adopted.items() if name == vm
                   and _runs(pid, self._paths(vm, disk)[0])}  # (pidfiles may be gone)
        for spec in sdir.glob("*.json") if sdir.exists() else []:
            pid = _serving(spec.with_suffix(".pid"), spec)
            if pid and (vm, spec.stem) not in self.procs:  # a former provd's
                adopted.add(pid)
        for key in [k for k in self.adopted if k[0] == vm]:
            del self.adopted[key]
        for pid in adopted:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for (name, disk), proc in list(self.procs.items()):
            if name != vm:
                continue
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            del self.procs[(name, disk)]
        for pid in adopted:  # not our child: its end is seen in /proc
            await _ended(pid, STOP_WAIT)
        for stale in (*sdir.glob("*.pid"), *sdir.glob("*.sock")) if sdir.exists() else []:
            stale.unlink(missing_ok=True)

    async def remove(self, vm: str) -> None:
        """``vm remove``: a streaming VM's fill ends and its nbdkits stop before the VM is
        removed as any VM (:meth:`.Provisioner.remove`: the domain destroyed, the key
        shredded, its directory with the partial overlay and ``stream/`` deleted, the
        definition undefined).  Should that fail, the fill goes on."""
        task = self.fills.pop(vm, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._probe.pop(vm, None)
        if (self.prov.vm_dir(vm) / STREAM_DIR).exists():
            info = await self.prov.hv.lookup_name(vm)
            if info.state.active or info.state == DomState.PAUSED:  # QEMU lets nbdkit go
                await self.prov.hv.destroy(info.uuid, vm)
            await self.stop_serving(vm)
        try:
            await self.prov.remove(vm)
        except BaseException:
            if (self.prov.vm_dir(vm) / STREAM_DIR).exists():
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
        the user starts it) the restore is done (:meth:`_restored`); a VM the restore
        did not get to define has its nbdkits stopped (the next restore of it undoes
        the rest)."""
        out = []
        images = self.prov.cfg.images_dir
        for sdir in sorted(images.glob(f"*/{STREAM_DIR}")) if images.exists() else []:
            vm = sdir.parent.name
            out.append(vm)
            self.follow(vm)
        return out

    def _restored(self, vm: str) -> None:
        """The VM runs: a restore's crash marker left by a provd stopped after it defined
        the VM goes (the restore is done: undoing it now would take a running VM away)."""
        marker = self.prov.install_marker(vm)
        if marker.exists():
            log.warning("VM %s runs: provd stopped during its streamed restore, after the VM "
                        "was defined; the restore is done and its fill goes on", vm)
            marker.unlink(missing_ok=True)

    async def run_fill(self, vm: str) -> None:
        """The fill of ``vm``'s disks, in :attr:`filled` from its start to its end (every
        disk local, the VM removed, provd stopping)."""
        try:
            complete = await self._fill(vm)
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

    async def _fill(self, vm: str) -> bool:
        """True once every disk is local; False if the VM was removed meanwhile."""
        prov = self.prov
        sdir = prov.vm_dir(vm) / STREAM_DIR
        disks = sorted(p.stem for p in sdir.glob("*.json"))
        local = FillProgress({p.stem: StreamSpec.parse(p.read_bytes(), str(p)).size
                              for p in sdir.glob("*.json")})
        with contextlib.suppress(OSError):  # how far a provd before saw it
            local.restore((sdir / FILLED).read_bytes())
        saver = _Saver(sdir / FILLED, local)
        uuid = ""
        while True:
            if not sdir.is_dir():  # removed behind provd's back (an unassign order)
                log.warning("VM %s was removed while its disks streamed in: its fill and "
                            "nbdkit stop", vm)
                await self.stop_serving(vm)
                return False
            try:
                uuid = uuid or (await prov.hv.lookup_name(vm)).uuid
                if not await self._fill_step(vm, uuid, local):
                    break
            except VMNotFound:  # undefined behind provd's back: its disks are left alone
                if prov.install_marker(vm).exists():
                    log.warning("VM %s: provd stopped during its streamed restore, before the "
                                "VM was defined: its nbdkit stops (a restore of it starts "
                                "anew)", vm)
                else:
                    log.warning("VM %s was undefined while its disks streamed in: its fill "
                                "and nbdkit stop", vm)
                await self.stop_serving(vm)
                shutil.rmtree(sdir, ignore_errors=True)
                return False
            except VMClientError as exc:  # a race with a stop or start: look again
                log.info("VM %s: fill: %s", vm, exc)
            self._publish(vm, local.counts())  # (after a look: a running job may be ahead)
            saver.save()
            await asyncio.sleep(self.poll)
        await self.stop_serving(vm)
        shutil.rmtree(sdir, ignore_errors=True)
        log.info("VM %s: every disk is local (%s); it no longer needs the network", vm,
                 ", ".join(disks))
        return True

    async def _fill_step(self, vm: str, uuid: str, local: FillProgress) -> bool:
        """One look at the fill; False once no disk is backed by its export any more."""
        prov = self.prov
        st = await pull_state(prov.hv, uuid, vm)
        if st.active:
            self._restored(vm)
        if not st.backed:
            return False
        for disk in st.backed:
            await self.serve(vm, disk)  # a dead nbdkit comes back
        if st.active and st.paused_io_error:
            if await self._link_up(vm):
                log.warning("VM %s: paused on a read error while streaming; the repository "
                            "answers again: resumed", vm)
                await prov.hv.resume(uuid, vm)
        elif st.paused:  # powerd before the laptop sleeps, or the user: no fill meanwhile
            for disk in st.jobs:
                await cancel_pull(prov.hv, uuid, vm, disk)
                log.info("VM %s is paused: the fill of disk %s is suspended", vm, disk)
        elif st.active:
            bandwidth = int(prov.cfg.fill_mib_s * (1 << 20))
            idle = [disk for disk in st.backed if disk not in st.jobs]
            # a pull on a dead link only fails (without a receiver provd cannot probe)
            if idle and (prov.receiver is None or await self._link_up(vm)):
                for disk in idle:
                    await block_pull(prov.hv, uuid, vm, disk, bandwidth)
        local.update(st.backed, st.jobs)
        return True

    async def _link_up(self, vm: str) -> bool:
        """Whether the repository answers; after a failed probe the next waits twice as
        long (from one poll up to :data:`PROBE_MOST`): a dead link is not hammered."""
        loop = asyncio.get_running_loop()
        at, delay = self._probe.get(vm, (0.0, 0.0))
        if loop.time() < at:
            return False
        if await self._reachable(vm):
            if self._probe.pop(vm, None) is not None:
                log.warning("VM %s: the datacenter answers again: the fill of its disks "
                            "goes on", vm)
            return True
        if vm not in self._probe:  # once an outage (the probes that follow are quiet)
            log.warning("VM %s: the datacenter does not answer: the fill of its disks waits "
                        "and goes on by itself when it answers; meanwhile a read of what is "
                        "not here yet waits up to %.0f s, then the VM pauses until then",
                        vm, self.read_timeout)
        delay = min(PROBE_MOST, max(self.poll, delay * 2))
        self._probe[vm] = (loop.time() + delay, delay)
        return False

    async def _reachable(self, vm: str) -> bool:
        receiver = self.prov.receiver
        if receiver is None:
            return False
        try:
            await asyncio.wait_for(receiver.remote.list(
                layout.vm_store(self.prov.keys.device.device_id(), vm) + "/index"),
                self.read_timeout)
        except (TimeoutError, Exception):
            return False
        return True

    async def close(self) -> None:
        """provd stops: the fill tasks end; each nbdkit stays (the VM reads from it) and
        the next provd takes it over (:meth:`resume_all`)."""
        for task in self.fills.values():
            task.cancel()
        await asyncio.gather(*self.fills.values(), return_exceptions=True)


class _Saver:
    """Writes how far the fill is to ``path`` whenever it changed (what the next provd
    shows after this one is killed), fsync'd at most every :data:`SYNC_EVERY` seconds
    (after a power loss it shows what was local at most that long before)."""

    def __init__(self, path: Path, local: FillProgress) -> None:
        self.path, self.local = path, local
        self.saved, self.synced = local.to_json(), 0.0

    def save(self) -> None:
        data = self.local.to_json()
        if data == self.saved:
            return
        now = time.monotonic()
        durable = now - self.synced >= SYNC_EVERY
        try:  # (not into a stream/ removed meanwhile: the fill sees that and ends)
            write_atomic(self.path, data, durable=durable, make_parent=False)
        except FileNotFoundError:
            return
        except OSError as exc:  # (only shown: the fill goes on)
            log.warning("cannot keep how far the fill is in %s: %s", self.path, exc)
            return
        self.saved = data
        if durable:
            self.synced = now


async def _timed(timeline: Timeline, name: str, step: Awaitable[T]) -> T:
    with timeline.step(name):
        return await step


def _serving(pidfile: Path, spec: Path) -> int:
    """The pid of the nbdkit serving ``spec`` per ``pidfile``, if it runs (0 if not)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if _runs(pid, spec) else 0


def _runs(pid: int, spec: Path) -> bool:
    """Whether process ``pid`` is an nbdkit serving ``spec`` (not another that took
    its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return f"spec={spec}".encode() in cmdline.split(b"\0")


async def _ended(pid: int, limit: float) -> None:
    """Wait until process ``pid`` (not a child) is gone; SIGKILL it after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline, killed = loop.time() + limit, False
    while _alive(pid):
        if loop.time() > deadline:
            if killed:
                log.error("nbdkit (pid %d) does not end, even on SIGKILL", pid)
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline, killed = loop.time() + limit, True
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")  # a zombie has ended


def _python_path() -> list[str]:
    """What nbdkit's embedded Python needs: this vmclient and the packages it uses."""
    import vmclient

    here = str(Path(vmclient.__file__).parent.parent)
    extra = [p for p in (*site.getsitepackages(), *sys.path) if p.endswith("-packages")]
    return list(dict.fromkeys([here, *extra]))

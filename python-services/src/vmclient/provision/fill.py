"""The fill of a streamed restore (:mod:`.stream`): per VM a task of provd that pulls
its disks in and keeps what they read from alive, until every disk is local.

Each look (every ``poll`` s) at a VM's block jobs: each disk still backed by its export
gets its nbdkit back if it died (:class:`.Nbdkits`); a VM paused on an I/O error is
resumed once the repository answers again; while the VM is paused otherwise its pulls
are cancelled (the pulled clusters stay); while it runs, a disk without a pull gets one
at ``fill_mib_s`` (only while the repository answers: :class:`LinkProbe`).  How far the
fill is goes to provd and to ``stream/filled`` (:class:`_Saver`); once no disk is backed
any more the nbdkits stop and ``stream/`` goes.  A fill that fails on an error its loop
does not take for a race is tried again (:class:`Attempts`).  docs/sync.md, "Streamed
restore", has the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import VMClientError, VMNotFound
from ..host.files import write_atomic
from ..store import layout
from ..tasks import at_most
from ..virt.stream import block_pull, cancel_pull, pull_state
from .installer import Provisioner
from .nbdkit import Nbdkits
from .streamcore import FillProgress, StreamSpec

log = logging.getLogger(__name__)
PROBE_MOST = 5.0  # seconds at most between two probes of an unreachable repository
FILLED = "filled"  # in ``stream/``: how far each disk's fill is (FillProgress.to_json)
SYNC_EVERY = 5.0  # seconds at least between two durable (fsync'd) writes of it


def next_delay(delay: float, poll: float) -> float:
    """The wait after a failed try that followed a wait of ``delay`` (0: none yet): twice
    as long, from one ``poll`` up to :data:`PROBE_MOST` (a dead link is not hammered, nor
    a fill that keeps failing)."""
    return min(PROBE_MOST, max(poll, delay * 2))


class LinkProbe:
    """Whether the repository answers, per VM, probed with backoff."""

    def __init__(self, prov: Provisioner, poll: float, read_timeout: float) -> None:
        self.prov, self.poll, self.read_timeout = prov, poll, read_timeout
        self.probes: dict[str, tuple[float, float]] = {}  # vm → (next probe, its delay)

    async def up(self, vm: str) -> bool:
        """Whether the repository answers; after a failed probe the next waits twice as
        long (from one poll up to :data:`PROBE_MOST`): a dead link is not hammered."""
        loop = asyncio.get_running_loop()
        at, delay = self.probes.get(vm, (0.0, 0.0))
        if loop.time() < at:
            return False
        if await self._reachable(vm):
            if self.probes.pop(vm, None) is not None:
                log.warning("VM %s: the datacenter answers again: the fill of its disks "
                            "goes on", vm)
            return True
        if vm not in self.probes:  # once an outage (the probes that follow are quiet)
            log.warning("VM %s: the datacenter does not answer: the fill of its disks waits "
                        "and goes on by itself when it answers; meanwhile a read of what is "
                        "not here yet waits up to %.0f s, then the VM pauses until then",
                        vm, self.read_timeout)
        delay = next_delay(delay, self.poll)
        self.probes[vm] = (loop.time() + delay, delay)
        return False

    async def _reachable(self, vm: str) -> bool:
        receiver = self.prov.receiver
        if receiver is None:
            return False
        try:
            await at_most(receiver.remote.list(
                layout.vm_store(self.prov.keys.device.device_id(), vm) + "/index"),
                self.read_timeout)
        except (TimeoutError, Exception):
            return False
        return True


class Fill:
    """The fill of one VM's disks; :meth:`run` until every disk is local or the VM is
    gone, ``publish`` told how far it is (bytes local, bytes total) after every look."""

    def __init__(self, prov: Provisioner, nbdkits: Nbdkits, link: LinkProbe, vm: str,
                 sdir: Path, publish: Callable[[tuple[int, int]], None]) -> None:
        self.prov, self.nbdkits, self.link = prov, nbdkits, link
        self.vm, self.sdir, self.publish = vm, sdir, publish

    async def run(self) -> bool:
        """True once every disk is local; False if the VM was removed meanwhile."""
        prov, vm, sdir = self.prov, self.vm, self.sdir
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
                await self.nbdkits.stop(vm)
                return False
            try:
                uuid = uuid or (await prov.hv.lookup_name(vm)).uuid
                if not await self._step(uuid, local):
                    break
            except VMNotFound:  # undefined behind provd's back: its disks are left alone
                if prov.install_marker(vm).exists():
                    log.warning("VM %s: provd stopped during its streamed restore, before the "
                                "VM was defined: its nbdkit stops (a restore of it starts "
                                "anew)", vm)
                else:
                    log.warning("VM %s was undefined while its disks streamed in: its fill "
                                "and nbdkit stop", vm)
                await self.nbdkits.stop(vm)
                shutil.rmtree(sdir, ignore_errors=True)
                return False
            except VMClientError as exc:  # a race with a stop or start: look again
                log.info("VM %s: fill: %s", vm, exc)
            self.publish(local.counts())  # (after a look: a running job may be ahead)
            saver.save()
            await asyncio.sleep(self.link.poll)
        await self.nbdkits.stop(vm)
        shutil.rmtree(sdir, ignore_errors=True)
        log.info("VM %s: every disk is local (%s); it no longer needs the network", vm,
                 ", ".join(disks))
        return True

    async def _step(self, uuid: str, local: FillProgress) -> bool:
        """One look at the fill; False once no disk is backed by its export any more."""
        prov, vm = self.prov, self.vm
        st = await pull_state(prov.hv, uuid, vm)
        if st.active:
            self._restored()
        if not st.backed:
            return False
        for disk in st.backed:
            await self.nbdkits.serve(vm, disk)  # a dead nbdkit comes back
        if st.active and st.paused_io_error:
            if await self.link.up(vm):
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
            if idle and (prov.receiver is None or await self.link.up(vm)):
                for disk in idle:
                    await block_pull(prov.hv, uuid, vm, disk, bandwidth)
        local.update(st.backed, st.jobs)
        return True

    def _restored(self) -> None:
        """The VM runs: a restore's crash marker left by a provd stopped after it defined
        the VM goes (the restore is done: undoing it now would take a running VM away)."""
        marker = self.prov.install_marker(self.vm)
        if marker.exists():
            log.warning("VM %s runs: provd stopped during its streamed restore, after the VM "
                        "was defined; the restore is done and its fill goes on", self.vm)
            marker.unlink(missing_ok=True)


class Attempts:
    """The attempts of one VM's fill (:meth:`.stream.Streams.run_fill`) that failed in a row
    on an error nobody foresaw: what the fill's own loop does not catch (a
    :class:`VMClientError` there is a race: it looks again).  Each is tried again after
    the link probes' backoff (:func:`next_delay`); the first of a run is logged with its
    traceback (the same error as the last one logged, in one line), the others quietly;
    a look that completes ends the run (:meth:`looked`)."""

    def __init__(self, vm: str, poll: float) -> None:
        self.vm, self.poll = vm, poll
        self.failed, self.delay, self.logged = 0, 0.0, ""

    def fail(self, exc: Exception) -> float:
        """Seconds to wait before the next attempt, after ``exc``."""
        what = f"{type(exc).__name__}: {exc}"
        if not self.failed and what != self.logged:
            log.error("VM %s: the fill of its disks failed (%s); it is tried again until "
                      "it goes on", self.vm, what, exc_info=exc)
            self.logged = what
        elif not self.failed:
            log.warning("VM %s: the fill of its disks failed again (%s); it is tried again "
                        "until it goes on", self.vm, what)
        else:
            log.debug("VM %s: the fill failed again: %s", self.vm, what)
        self.failed += 1
        self.delay = next_delay(self.delay, self.poll)
        return self.delay

    def looked(self) -> None:
        """A look at the fill completed: a run of failed attempts ends."""
        if self.failed:
            log.warning("VM %s: the fill of its disks goes on (after %d failed attempt%s)",
                        self.vm, self.failed, "" if self.failed == 1 else "s")
        self.failed, self.delay = 0, 0.0


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

"""``vmclient-syncd``: business VMs to the datacenter, on a schedule and on demand.

One cycle (at the latest every ``recheck_seconds``, or at once when asked):

1. find the business VMs with sync enabled (provisioning's metadata);
2. gather the facts (UPower, NetworkManager or the routing table, logind) and,
   when nothing local holds a sync back, ask the datacenter for its signed
   ``config`` (the probe);
3. sync each VM that is due or asked for, one at a time (:func:`engine.sync_vm`);
4. when the datacenter answered, let the management agent fetch and execute
   orders (:meth:`Agent.poll`) and apply the lease.

A logind delay lock on sleep is held while awake.  On ``PrepareForSleep(true)``
a sync in flight stops at its next safe point (between two chunks, after the
capture; :class:`engine.SyncInterrupted`), the VM is shown ``paused`` and the
lock released; on ``PrepareForSleep(false)`` the lock is taken again and the
sync runs again: packs that arrived before the pause are not uploaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from .. import daemon as common
from ..dbus import names
from ..errors import UsageError, VMClientError, VMNotFound
from ..host.keys import DeviceKeys, VMKeys, read_admin_key
from ..host.lease import device_account
from ..store import crypto, layout, repo
from ..store.documents import RepoConfig
from ..store.format import NAME_RE
from ..store.remote import RemoteStore
from ..tasks import at_most
from ..transport import close_store
from ..virt.libvirt import Hypervisor, sync_view
from . import config as sconfig
from . import engine, hosting, maintenance, plan, policy, state
from .peers import Sensors, SleepGuard
from .service import (
    ManagementInterface,
    Outcome,
    Progress,
    SyncInterface,
    VMStatus,
    install_guard,
)
from .status import SyncOutcome, SyncState
from .throttle import Throttled

log = logging.getLogger("vmclient.syncd")


class Synchronizer:
    def __init__(self, cfg: sconfig.SyncConfig, hv: Hypervisor, remote: RemoteStore,
                 device: DeviceKeys, iface: SyncInterface, sensors: Sensors,
                 guard: SleepGuard | None = None, agent: Any = None,
                 clock: Callable[[], float] = time.time,
                 management: ManagementInterface | None = None) -> None:
        self.cfg, self.hv, self.remote, self.device = cfg, hv, remote, device
        self.iface, self.sensors, self.guard = iface, sensors, guard
        self.clock = clock
        self.management = management or ManagementInterface()
        self.host = hosting.AgentHost(cfg, hv, agent, iface, self.management)
        self.rules = cfg.rules()
        self.admin = read_admin_key(cfg.repository.admin_key)
        rate = cfg.network.max_upload_mib_s * 2**20
        self.upload: RemoteStore = Throttled(remote, rate) if rate else remote
        self.keys = VMKeys(cfg.provision_dir, device)
        self.demands: dict[str, list[asyncio.Future[Outcome]]] = {}
        self.retry_at: dict[str, float] = {}  # after a failed scheduled sync
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.sleeping = self.interrupt = False
        self.known = state.load_status(cfg.state_dir)  # the last successful sync of each VM

    # -- the VMs ------------------------------------------------------------------------

    async def discover(self) -> None:
        found: dict[str, str] = {}
        for d in await self.hv.list_domains():
            if not d.name.startswith(self.cfg.name_prefix):
                continue
            with contextlib.suppress(VMClientError):  # gone meanwhile
                view = await sync_view(self.hv, d.uuid)
                if not plan.refusal(view.kind, view.sync):
                    found[view.name] = view.uuid
        vms = self.iface.vms
        for gone in set(vms) - set(found):
            if gone != self.iface.current:
                del vms[gone]
        for name, uuid in found.items():
            v = vms.setdefault(name, VMStatus(name))
            v.uuid = uuid
            rec = self.known.get(name, {})
            v.last_sync, v.snapshot = rec.get("last_sync", 0), rec.get("snapshot", "")
            v.next_run = int(max(policy.next_run(self.rules, v.last_sync or None, self.clock()),
                                 self.retry_at.get(name, 0)))

    async def facts(self) -> policy.Facts:
        on_battery, pct = await self.sensors.battery()
        online, metered = await self.sensors.network()
        return policy.Facts(online=online, on_battery=on_battery, battery_percent=pct,
                            metered=metered, sleeping=self.sleeping,
                            business_refused=self.host.refusal())

    async def probe(self) -> tuple[RepoConfig | None, str]:
        """The datacenter's signed config, or why there is none."""
        if self.admin is None:
            return None, f"no admin key at {self.cfg.repository.admin_key}"
        try:
            cfg = await at_most(repo.get_config(self.remote, self.admin),
                                self.cfg.repository.timeout)
        except TimeoutError:
            return None, "the datacenter does not answer (timeout)"
        except (VMClientError, OSError) as exc:
            return None, f"the datacenter does not answer: {exc}"
        return cfg, ""

    # -- the cycle ----------------------------------------------------------------------

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.cycle()
            except VMClientError as exc:
                log.warning("sync cycle: %s", exc)
            waits = [v.next_run for v in self.iface.vms.values()
                     if v.state == SyncState.IDLE and self.cfg.schedule.enabled]
            delay = min([self.cfg.schedule.recheck_seconds,
                         *(w - self.clock() for w in waits)])
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(
                self.wake.wait())]
            await asyncio.wait(waiters, timeout=max(delay, 0.5),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def cycle(self) -> None:
        await self.discover()
        for name in set(self.demands) - set(self.iface.vms):
            self._finish(name, SyncOutcome.FAILED, f"no synchronised VM named {name!r}")
        if self.sleeping:  # demands and paused syncs wait for the resume
            self.iface.changed()
            return
        facts = await self.facts()
        dc: tuple[RepoConfig | None, str] | None = None
        if facts.online and not facts.sleeping:
            dc = await self.probe()
        now = self.clock()
        for v in list(self.iface.vms.values()):
            on_demand = v.name in self.demands
            scheduled = self.cfg.schedule.enabled and policy.due(
                self.rules, v.last_sync or None, now) and now >= self.retry_at.get(v.name, 0)
            if not on_demand and v.state != SyncState.PAUSED and not scheduled:
                if v.state == SyncState.WAITING:  # held back on demand: nothing is due now
                    v.state, v.reason = SyncState.IDLE, ""
                continue
            reason = policy.held_back(self.rules, facts, on_demand=on_demand)
            if not reason and dc is not None:
                reason = dc[1]
            if reason or dc is None or dc[0] is None:
                if v.state != SyncState.PAUSED:
                    v.state = SyncState.WAITING
                v.reason = reason
                self._finish(v.name, SyncOutcome.SKIPPED, reason)
                continue
            await self.run_one(v, dc[0])
            if self.sleeping:
                break
        self.iface.changed()
        await self.host.after_cycle(dc is not None and dc[0] is not None, facts)

    async def enrol(self, untrusted_code: str) -> str:
        """``Enrol``: the request is on its way; the next cycle looks for IT's answer."""
        device = await self.host.enrol(untrusted_code)
        self.wake.set()
        return device

    async def run_one(self, v: VMStatus, repo_cfg: RepoConfig) -> None:
        """One sync; it answers the demands made before it started (later ones: next run)."""
        if self.sleeping:  # PrepareForSleep arrived during this cycle: after the resume
            return
        waiting = self.demands.pop(v.name, [])
        try:
            keys = await asyncio.to_thread(self.keys.load, v.name)
        except VMClientError as exc:
            self._failed(v, waiting, exc)
            return
        progress = Progress(self.iface, v, asyncio.get_running_loop())
        v.state, v.reason, v.done, v.total, v.rate = SyncState.RUNNING, "", 0, 0, 0.0
        self.iface.current = v.name
        self.idle.clear()
        self.iface.changed()
        escrow = crypto.X25519PublicKey.from_public_bytes(repo_cfg.escrow_key)
        try:
            job = engine.SyncJob(
                v.uuid, self.device.signing(), keys, state_dir=self.cfg.state_dir,
                scratch_dir=self.cfg.scratch_dir, chunk_size=repo_cfg.chunk_size,
                recipients=(self.device.wrapping().public_key(), escrow),
                memory_dir=self.cfg.memory_dir, meta=self._recipe(v.name),
                writers=await self.host.writers(v.name))
            result = await engine.sync_vm(self.hv, self.upload, job,
                                          engine.Hooks(progress, lambda: self.interrupt))
        except engine.SyncInterrupted as exc:
            log.info("%s", exc)
            v.state, v.reason = (SyncState.PAUSED,
                                 "the laptop sleeps; the sync continues after resume")
            self.demands.setdefault(v.name, [])[:0] = waiting  # answered after the resume
        except VMClientError as exc:
            self._failed(v, waiting, exc)
        else:
            v.state, v.reason = SyncState.IDLE, ""
            v.last_sync, v.snapshot = int(self.clock()), layout.snapshot_name(result.seq)
            v.next_run = int(policy.next_run(self.rules, v.last_sync, self.clock()))
            self.known[v.name] = {"last_sync": v.last_sync, "snapshot": v.snapshot}
            self.retry_at.pop(v.name, None)
            await asyncio.to_thread(state.save_status, self.cfg.state_dir, self.known)
            _answer(waiting, (v.name, SyncOutcome.SYNCED, v.snapshot))
        finally:
            self.iface.current = ""
            self.idle.set()
            self.iface.changed()

    def _recipe(self, vm: str) -> dict[str, str]:
        """The recipe provisioning installed the VM from, for the snapshot (a restore
        keeps it for upgrades); none if provisioning has none."""
        try:
            return {"recipe": (self.cfg.provision_dir / "vms" / vm / "recipe.toml").read_text()}
        except (OSError, UnicodeDecodeError):
            return {}

    def _failed(self, v: VMStatus, waiting: list[asyncio.Future[Outcome]],
                exc: VMClientError) -> None:
        """A failed sync is tried again by the schedule after ``recheck_seconds``."""
        log.warning("%s: sync failed: %s", v.name, exc)
        v.state, v.reason = SyncState.IDLE, f"last sync failed: {exc}"
        self.retry_at[v.name] = self.clock() + self.cfg.schedule.recheck_seconds
        v.next_run = int(self.retry_at[v.name])
        _answer(waiting, (v.name, SyncOutcome.FAILED, str(exc)))

    def _finish(self, vm: str, outcome: SyncOutcome, detail: str) -> None:
        _answer(self.demands.pop(vm, []), (vm, outcome, detail))

    # -- sleep ----------------------------------------------------------------------------

    def on_prepare_for_sleep(self, start: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._sleep(start))
        self._sleep_task = task  # keep a reference until it is done

    async def _sleep(self, start: bool) -> None:
        if start:
            self.sleeping = self.interrupt = True
            if not self.idle.is_set():
                log.info("going to sleep: stopping the sync of %s at a safe point",
                         self.iface.current)
                # logind lets the sleep go ahead after InhibitDelayMaxSec anyway
                limit = await self.guard.delay_max() if self.guard is not None else 5.0
                try:
                    await at_most(self.idle.wait(), max(limit - 0.5, 0.5))
                except TimeoutError:
                    log.warning("the sync of %s did not reach a safe point before sleep; "
                                "it stops at the next one", self.iface.current)
            if self.guard is not None:
                self.guard.release()
            self.iface.changed()
            return
        self.sleeping = self.interrupt = False
        if self.guard is not None:
            try:
                await self.guard.take()
            except VMClientError as exc:
                log.warning("%s", exc)
        self.wake.set()

    # -- methods ------------------------------------------------------------------------

    async def sync_now(self, vm: str) -> list[Outcome]:
        await self.discover()
        if vm and vm not in self.iface.vms:
            raise VMNotFound(vm)
        targets = [vm] if vm else sorted(self.iface.vms)
        futures = []
        for name in targets:
            fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            self.demands.setdefault(name, []).append(fut)
            futures.append(fut)
        self.wake.set()
        return list(await asyncio.gather(*futures))

    def _signers(self) -> dict[str, crypto.Ed25519PublicKey]:
        return {self.device.device_id(): self.device.signing().public_key()}

    async def _vm_keys(self, vm: str) -> crypto.KeySet:
        if not vm:
            raise UsageError("name a VM")
        if not NAME_RE.fullmatch(vm):  # it becomes part of a key path and remote paths
            raise UsageError(f"not a VM name: {vm!r} (a VM name matches {NAME_RE.pattern})")
        return await asyncio.to_thread(self.keys.load, vm)

    async def verify(self, vm: str, snapshot: str) -> tuple[str, int, int]:
        keys = await self._vm_keys(vm)
        r = await maintenance.verify(self.remote, self._signers(), keys,
                                     device=self.device.device_id(), vm=vm,
                                     snapshot=snapshot or None)
        return layout.snapshot_name(r.seq), r.chunks, r.bytes

    async def snapshots(self, vm: str) -> list[tuple[str, int, int, int, str, bool]]:
        keys = await self._vm_keys(vm)
        return await maintenance.list_snapshots(self.remote, self._signers(), keys,
                                                device=self.device.device_id(), vm=vm)


def _answer(futures: list[asyncio.Future[Outcome]], outcome: Outcome) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(outcome)


async def run(cfg: sconfig.SyncConfig) -> None:
    stop = asyncio.Event()
    syncer: list[Synchronizer] = []

    def halt() -> None:  # a sync in flight stops at its next safe point
        stop.set()
        for s in syncer:
            s.interrupt = True

    common.install_stop_handlers(asyncio.get_running_loop(), halt)
    device = DeviceKeys.load_or_create(cfg.device_dir)
    # an sftp:// location without user@: the device's own account, once enrolled (Enrol)
    remote = cfg.repository.open(account=device_account(cfg.manage.state_dir,
                                                        str(cfg.repository.location)))
    hv = Hypervisor(cfg.libvirt_uri)
    await hv.connect(retry=True)
    bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    try:
        iface, management = SyncInterface(), ManagementInterface()
        guard = SleepGuard(bus)
        agent = hosting.agent(cfg, remote, hv, bus)
        s = Synchronizer(cfg, hv, remote, device, iface,
                         Sensors(bus, cfg.network.metered_interfaces), guard, agent,
                         management=management)
        syncer.append(s)
        await guard.connect(s.on_prepare_for_sleep)
        try:
            await guard.take()
        except VMClientError as exc:
            log.warning("%s: a sync is not stopped before sleep", exc)
        await s.host.startup()
        await s.discover()
        s.host.show_enrolment()
        bus.export(names.SYNC_PATH, iface)
        bus.export(names.MANAGE_PATH, management)
        install_guard(bus, s, s.host.postpone_restart)
        hosting.install_guard(bus, s.enrol)
        await bus.request_name(names.SYNC_BUS_NAME)
        common.sd_notify("READY=1")
        log.info("ready on %s", names.SYNC_BUS_NAME)
        await s.loop(stop)
        common.sd_notify("STOPPING=1")
    finally:
        bus.disconnect()
        await close_store(remote)
        await hv.close()


def main(argv: list[str] | None = None) -> int:
    async def start(config: Path) -> None:
        await run(sconfig.load(config))
    return common.main(argv, "vmclient-syncd", "vmclient synchroniser", sconfig.DEFAULT_PATH,
                       start)


if __name__ == "__main__":
    sys.exit(main())

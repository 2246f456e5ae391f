"""``vmclient-powerd``: wires logind, udev/evdev and libvirt to the policy table."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from .. import daemon as common
from ..dbus import names
from ..errors import VMClientError, VMOperationFailed
from ..host.gate import StartGate
from ..virt.libvirt import Hypervisor
from . import config as power_config
from .delays import PauseDelays
from .holds import HeldTable
from .logind import Inhibitor, Logind
from .policy import (
    Action,
    Decision,
    Event,
    HoldAction,
    LidState,
    Phase,
    PowerSource,
    State,
    decide,
    suspend_wanted,
)
from .service import PowerInterface, install_guard
from .statefile import HoldsFile
from .udev import PowerReading, UdevWatcher
from .vms import VMController

log = logging.getLogger("vmclient.powerd")

# Events whose rules read the lid: it is read again from the switch first (a change
# may sit unread while the loop was busy).
_READ_LID = (Event.LID_CLOSED, Event.WOKE, Event.STARTED, Event.RECONNECTED)


class PowerDaemon:
    """The host's state (:attr:`state`: sensors and configuration), what the VMs are held
    for (:attr:`held`, the one copy) and the daemon's phase, each kept in one place."""

    def __init__(self, cfg: power_config.PowerConfig) -> None:
        self.cfg = cfg
        self.state = State(lid_policy=cfg.lid_policy(),
                           restore_on_start=cfg.shutdown.restore_on_start,
                           restore_on_ac=cfg.battery.restore_on_ac)
        self.phase = Phase.UNKNOWN
        self.sleep_lock = Inhibitor("sleep", "delay", "Pausing every VM before the host sleeps")
        self.lid_lock = Inhibitor("handle-lid-switch", "block",
                                  "vmclient pauses every VM when the lid closes")
        self.sleep_bound = cfg.sleep.max_delay_s
        self.delays = PauseDelays()  # the shell's: the lock on screen before a pause
        self.hv = Hypervisor(cfg.libvirt.uri, cfg.libvirt.connections,
                             on_reconnect=self._reconnected)
        # In-process, not through provd: powerd is root and already holds libvirt's full
        # rights, and restores must work while provd or the bus are down (shutdown,
        # critical battery).  The gate is the one place the start policy lives.
        gate = StartGate(self.hv, cfg.keys.gate())
        self.held = HeldTable(HoldsFile(cfg.state_dir, cfg.runtime_dir), self._changed)
        self.vms = VMController(self.hv, cfg.vms, self.held, gate, self._changed)
        self.iface: PowerInterface | None = None
        self.bus: MessageBus | None = None
        self.logind: Logind | None = None
        self.udev: UdevWatcher | None = None
        self._events = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_resumed: list[str] = []
        self._sleep_gen = 0  # bumps on every PrepareForSleep: the watchdog's generation
        # While the VMs pause for sleep, the properties are published once at the end
        # (_settle) rather than after each VM: the per-VM refreshes took the 2 cores from
        # the suspends in flight, and the delay lock waits for the last one.
        self._quiet = False

    # -- D-Bus properties --------------------------------------------------------

    def properties(self) -> dict[str, Any]:
        s = self.state
        return {
            "LidState": int(s.lid), "PowerSource": int(s.source),
            "BatteryPresent": s.battery_present, "BatteryPercent": float(s.battery_percent),
            "Docked": s.docked, "State": int(self.phase),
            "PausedByUs": [[n, int(a)] for n, a in self.vms.paused_by_us()],
            "PauseCauses": [[n, causes] for n, causes in self.vms.held_for()],
            "OwnsLid": self.lid_lock.held, "LidAction": int(s.lid_action()),
            "RestoreRefused": [[n, why] for n, why in sorted(self.held.refused.items())],
        }

    def _changed(self) -> None:
        if self.iface is not None and not self._quiet:
            self.iface.refresh()

    def _set(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)
        self._changed()

    # -- event intake ----------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, VMClientError):
                log.error("%s", exc)
            else:
                log.error("unexpected error", exc_info=exc)

    def _on_prepare_for_sleep(self, start: bool) -> None:
        self._sleep_gen += 1
        if start:
            log.info("the host is going to sleep: pausing every VM")
            # Safety net: the delay lock goes at the bound whatever happens
            # (even if another operation holds the event lock meanwhile).
            asyncio.get_running_loop().call_later(self.sleep_bound + 0.5, self._sleep_watchdog,
                                                  self._sleep_gen)
            self._spawn(self.handle(Event.SLEEP))
        else:
            log.info("the host woke up: resuming the VMs we paused")
            self._spawn(self.handle(Event.WOKE))

    def _sleep_watchdog(self, gen: int) -> None:
        if self.sleep_lock.held and gen == self._sleep_gen:
            log.error("pausing took longer than %.1f s; releasing the sleep lock anyway",
                      self.sleep_bound)
            self.sleep_lock.release()

    def _on_lid(self, lid: LidState) -> None:
        previous = self.state.lid
        self._set(lid=lid)
        log.info("lid %s", lid.name.lower())
        if lid == LidState.CLOSED and previous != LidState.CLOSED:
            self._spawn(self.handle(Event.LID_CLOSED))
        elif lid == LidState.OPEN and previous == LidState.CLOSED:
            self._spawn(self.handle(Event.LID_OPENED))

    def _on_power(self, p: PowerReading) -> None:
        before = self.state
        self._set(source=p.source, battery_present=p.battery_present,
                  battery_percent=round(p.battery_percent, 1))
        if p.source != before.source:
            log.info("on %s", "AC" if p.source == PowerSource.AC else "battery")
            if p.source == PowerSource.AC:
                self._spawn(self.handle(Event.AC_ONLINE))
        if p.critical:
            log.warning("battery critical (%.0f%%): saving every VM", p.battery_percent)
            self._spawn(self.handle(Event.BATTERY_CRITICAL))

    async def request_pause_all(self) -> list[str]:
        await self.handle(Event.PAUSE_REQUESTED)
        return [n for n, _ in self.vms.paused_by_us()]

    async def request_resume_all(self) -> list[str]:
        await self.handle(Event.RESUME_REQUESTED)
        return list(self._last_resumed)

    async def request_pause_vm(self, vm: str) -> list[str]:
        """PauseVM: the user's pause of one VM (``vm`` is only compared with names)."""
        await self.handle(Event.PAUSE_REQUESTED, only=vm)
        held = [n for n, _ in self.vms.paused_by_us() if n == vm]
        if not held:
            raise VMOperationFailed(vm, "pause", "it is not a running VM of vmclient, or "
                                    "its power policy keeps it running")
        return held

    async def request_resume_vm(self, vm: str) -> list[str]:
        """ResumeVM: ends the user's, the lid's and sleep's pause of one VM."""
        await self.handle(Event.RESUME_REQUESTED, only=vm)
        return list(self._last_resumed)

    def request_pause_delay(self, who: str) -> int:
        return self.delays.take(who)

    # -- the policy loop -------------------------------------------------------

    async def handle(self, event: Event, only: str | None = None) -> None:
        """``only``: the event concerns that VM alone (PauseVM, ResumeVM)."""
        async with self._events:
            try:
                if event in _READ_LID and self.udev is not None:
                    self.udev.read_lid()
                if event == Event.LID_CLOSED and self.logind is not None:
                    self._set(docked=await self.logind.docked())
                decision = decide(self.state, event, self.held.holds)
                log.debug("%s -> %s", event.value, [a.value for a in decision.actions])
                # Each action whatever happened to the one before: a pause that fails
                # (libvirtd dying) must not keep the sleep lock or the host awake.
                failed: VMClientError | None = None
                for action in decision.actions:
                    try:
                        await self._do(action, event, decision, only)
                    except VMClientError as exc:
                        log.error("%s (%s): %s", action.value, event.value, exc)
                        failed = failed or exc
                    except Exception:
                        log.exception("%s (%s) failed; going on", action.value, event.value)
            finally:
                self._quiet = False
                self._settle()
            if failed is not None and event in (Event.PAUSE_REQUESTED, Event.RESUME_REQUESTED):
                raise failed  # the caller's D-Bus error, once every action has run

    def _settle(self) -> None:
        held = self.vms.paused_by_us()
        if any(a != HoldAction.SAVE for _, a in held):
            self.phase = Phase.PAUSED
        else:
            self.phase = Phase.RUNNING
        self._changed()

    async def _do(self, action: Action, event: Event, decision: Decision,
                  only: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        if action == Action.PAUSE_VMS:
            assert decision.adds is not None
            self.phase = Phase.PAUSING
            if event != Event.SLEEP or self.delays.held:
                # A sleep's pause publishes nothing before its calls (the signal took
                # 0.1-0.45 ms of the cores the suspends need), unless it waits for the
                # screen lock first: its end (Paused) is published once, by _settle.
                self._changed()
            bound = self.sleep_bound if event in (Event.SLEEP, Event.LID_CLOSED) \
                else self.cfg.vms.timeout_s + 1.0
            deadline = loop.time() + bound
            if event in (Event.SLEEP, Event.LID_CLOSED):  # the screen locks first
                await self.delays.released(min(self.cfg.sleep.lock_screen_s, bound / 2))
            self._quiet = event == Event.SLEEP  # until every action of this event has run
            paused = await self.vms.pause_all(decision.adds, deadline, only)
            log.info("paused: %s", ", ".join(paused) or "(none)")
        elif action == Action.RELEASE_SLEEP_LOCK:
            self.sleep_lock.release()
        elif action == Action.TAKE_SLEEP_LOCK:
            await self._take(self.sleep_lock)
        elif action == Action.SUSPEND_HOST:
            assert self.logind is not None
            if self.udev is not None:
                self.udev.read_lid()
            if not suspend_wanted(self.state):
                log.info("the lid is %s again: not suspending the host",
                         self.state.lid.name.lower())
                return
            log.info("asking logind to suspend the host")
            await self.logind.suspend()
        elif action in (Action.RESUME_VMS, Action.RESTORE_VMS):
            self.phase = Phase.RESUMING
            self._changed()
            self._last_resumed = []
            self._last_resumed = await self.vms.release(decision.ends, only)
            log.info("%s: %s", "resumed" if action == Action.RESUME_VMS else "restored",
                     ", ".join(self._last_resumed) or "(none)")
        elif action == Action.SYNC_CLOCKS:
            self._spawn(self.vms.sync_clocks(list(self._last_resumed)))
        elif action == Action.SAVE_VMS:
            assert decision.adds is not None
            self.phase = Phase.SAVING
            self._changed()
            saved = await self.vms.save_all(decision.adds)
            log.info("saved: %s", ", ".join(saved) or "(none)")

    async def _take(self, lock: Inhibitor) -> None:
        assert self.logind is not None
        try:
            await self.logind.take(lock)
        except VMClientError as exc:
            log.error("%s", exc)
        self._changed()

    async def _reconnected(self) -> None:
        log.info("reconciling with libvirtd after the reconnection")
        async with self._events:
            try:
                await self.vms.reconcile()
            except VMClientError as exc:
                log.error("cannot reconcile with libvirtd: %s", exc)
            self._settle()
        # then undo what an earlier resume could not (libvirtd was gone)
        await self.handle(Event.RECONNECTED)

    # -- life cycle ------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        common.install_stop_handlers(loop, self._stop.set)
        self.bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        self.logind = Logind(self.bus)
        await self.logind.connect()
        self.logind.on_prepare_for_sleep(self._on_prepare_for_sleep)
        delay_max = await self.logind.inhibit_delay_max()
        if delay_max:
            self.sleep_bound = min(self.sleep_bound, 0.8 * delay_max)
        log.info("VMs are paused within %.1f s before the host sleeps", self.sleep_bound)
        await self._take(self.sleep_lock)
        if self.cfg.lid.own:
            await self._take(self.lid_lock)

        self.udev = UdevWatcher(self._on_lid, self._on_power, self.cfg.battery.critical_percent)
        self.udev.start()
        if self.state.lid == LidState.ABSENT:
            log.info("no lid switch: sleep and shutdown are still handled")
        if not self.state.battery_present:
            log.info("no battery: running on mains")

        await self.hv.connect(retry=True)
        await self.vms.reconcile()
        self._settle()

        self.iface = PowerInterface(self)
        self.bus.export(names.POWER_PATH, self.iface)
        install_guard(self.bus, self)
        await self.bus.request_name(names.BUS_NAME)
        common.sd_notify("READY=1")
        log.info("ready on %s", names.BUS_NAME)

        await self.handle(Event.STARTED)
        if self.state.lid == LidState.CLOSED and self.cfg.lid.own:
            log.info("started with the lid closed")
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        common.sd_notify("STOPPING=1")
        if self.cfg.shutdown.save:
            log.info("stopping: saving every running VM")
            await self.handle(Event.SHUTDOWN)
        await self.vms.drain(2.0)
        for task in list(self._tasks):
            task.cancel()
        if self.udev is not None:
            self.udev.stop()
        self.sleep_lock.release()
        self.lid_lock.release()
        self.delays.close()
        await self.hv.close()
        if self.bus is not None:
            self.bus.disconnect()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    async def run(config: Path) -> None:
        await PowerDaemon(power_config.load(config)).run()
    return common.main(argv, "vmclient-powerd", "vmclient power manager",
                       power_config.DEFAULT_PATH, run)


if __name__ == "__main__":
    sys.exit(main())

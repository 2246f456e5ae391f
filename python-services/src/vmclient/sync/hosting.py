"""The management agent as ``vmclient-syncd`` hosts it (``[manage] enabled``), and the
Management interface's methods (``Enrol``, ``SetPassword``).

The agent is :class:`vmclient.manage.agent.Agent`; syncd calls only its public
entry points: at start-up ``startup()`` (finish a wipe, apply the lease, upload
reports); after a cycle in which the datacenter answered ``complete_enrolment()``
(if pending) and ``poll()`` (fetch, verify and execute orders); every cycle
``enforce()``.  A laptop never enrolled (no device id in the management state)
is not managed: the agent is left alone.  Its ``assign`` orders install through
vmclient-provd on the system bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from ..dbus import names
from ..dbus.guard import Member, install_method_guard
from ..errors import ServiceUnavailable, VMClientError
from ..host.files import write_atomic
from ..host.lease import boot_id
from ..power.logind import Logind
from ..store import crypto
from ..store.remote import RemoteStore
from ..virt.libvirt import Hypervisor
from . import config as sconfig
from . import enrolment
from .service import ManagementInterface, SyncInterface

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..host.inventory import ManageConfig
    from ..manage.hostrestart import RestartPlan

log = logging.getLogger("vmclient.syncd")
POSTPONED = "host-restart-postponed.json"  # {release, boot, until: local ISO time}


class AgentHost:
    """The agent (None: management is off) and what syncd shows of it: the lease on the
    Sync interface, the enrolment's state on the Management interface."""

    def __init__(self, cfg: sconfig.SyncConfig, hv: Hypervisor, agent: Any,
                 iface: SyncInterface, management: ManagementInterface) -> None:
        self.cfg, self.hv, self.agent = cfg, hv, agent
        self.iface, self.management = iface, management
        self.enrolling = asyncio.Lock()  # one Enrol at a time: it makes the device's keys
        self.host_updates = HostUpdates(cfg, agent)

    def refusal(self) -> str:
        """Why IT refuses business work on this laptop (wiped or locked), else ""."""
        if self.agent is None:
            return ""
        lease = self.agent.lease()
        return lease.reason if lease.wiped or lease.locked else ""

    async def startup(self) -> None:
        if self.agent is None or not self.agent.state_file.load().device:
            return
        try:
            await self.agent.startup()
        except (VMClientError, OSError) as exc:
            log.warning("management start-up: %s", exc)

    async def after_cycle(self, reachable: bool, facts: Any = None) -> None:
        """Orders and the lease, through the agent's public entry points; then host updates
        (``facts``: the cycle's :class:`..sync.policy.Facts`, battery and network)."""
        if self.agent is None:
            return
        try:
            st = self.agent.state_file.load()
            if st.device and not st.enrolled:
                st = await self._refused()
            if st.device:  # enrolled, or enrolment requested: a managed laptop
                if reachable:
                    if not st.enrolled:
                        await self.agent.complete_enrolment()
                        self.show_enrolment()  # before the orders: they may take long
                    await self.agent.poll()
                    if st.enrolled and facts is not None:
                        await self.host_updates.run(facts.on_battery, facts.metered)
                if self.host_updates.enabled:
                    from ..manage import hostupdate
                    self.iface.host_update = hostupdate.load_record(
                        self.agent.cfg.state_dir).installed
                    on_battery = facts.on_battery if facts is not None else True
                    plan = await self.host_updates.restart_if_due(on_battery)
                    self.iface.host_restart_at = int(plan.at.timestamp()) if plan.at else 0
                    self.iface.host_restart_waiting = plan.waiting
                await self.agent.enforce()
                lease = self.agent.lease()
                self.iface.lease_state, self.iface.lease_remaining = lease.reason, \
                    lease.remaining
            else:
                self.iface.lease_state, self.iface.lease_remaining = "not enrolled", -1
        except (VMClientError, OSError) as exc:
            log.warning("management: %s", exc)
        self.iface.changed()
        self.show_enrolment()

    async def _refused(self) -> Any:
        """Whether IT refused the pending enrolment request (then the laptop is not
        enrolling: the person types the code again); the management state after."""
        try:
            async with self.enrolling:  # not while an Enrol replaces the request
                reason = await enrolment.check_refused(self.cfg, self.agent, self.hv)
        except (VMClientError, OSError) as exc:
            log.info("IT's answer to the enrolment request not read: %s", exc)
        else:
            if reason:
                self.show_enrolment()
        return self.agent.state_file.load()

    async def enrol(self, untrusted_code: str) -> str:
        """``Enrol``: the request is on its way (the device id); a later cycle completes
        the enrolment once IT has accepted it."""
        async with self.enrolling:
            device = await enrolment.request(self.cfg, self.agent, self.hv, untrusted_code)
        log.info("enrolment requested as device %s", device)
        self.show_enrolment()
        return device

    def postpone_restart(self, seconds: int) -> int:
        """``PostponeHostRestart``: the new ``HostRestartAt``."""
        if self.agent is None:
            from ..manage.hostrestart import NothingToPostpone
            raise NothingToPostpone("this laptop is not managed: no host updates")
        plan = self.host_updates.postpone(seconds)
        self.iface.host_restart_at = int(plan.at.timestamp()) if plan.at else 0
        self.iface.host_restart_waiting = plan.waiting
        self.iface.changed()
        return self.iface.host_restart_at

    def show_enrolment(self) -> None:
        try:
            self.management.set(enrolment.state(self.agent), enrolment.refused(self.agent))
        except (VMClientError, OSError) as exc:
            log.warning("enrolment state: %s", exc)

    async def writers(self, vm: str) -> dict[str, crypto.Ed25519PublicKey]:
        """After a ``rekey`` order, the devices whose snapshots this VM's directory holds."""
        if self.agent is None:
            return {}
        from ..manage import rekey
        if vm not in rekey.rekeyed_vms(self.agent.cfg):
            return {}
        return dict((await self.agent.restore_source(vm)).signers)


class HostUpdates:
    """The host updater (:mod:`..manage.hostupdate`) on the agent's cycle, every
    ``[host_updates] interval_minutes`` at most; off without ``rauc`` on the laptop."""

    def __init__(self, cfg: sconfig.SyncConfig, agent: Any,
                 clock: Callable[[], float] = time.monotonic,
                 os_release: Path = Path("/etc/os-release"),
                 local_now: Callable[[], datetime] = datetime.now,
                 boot: Callable[[], str] = boot_id) -> None:
        self.cfg, self.agent, self.clock = cfg.host_updates, agent, clock
        self.local_now, self.boot = local_now, boot  # naive local wall-clock time
        self.os_release = os_release  # VERSION_ID: the running release
        self.next = 0.0
        self.enabled = self.cfg.enabled and agent is not None
        if self.enabled and shutil.which("rauc") is None:
            log.info("host updates: rauc is not installed; not looking for any")
            self.enabled = False

    async def run(self, on_battery: bool, metered: bool) -> None:
        if not self.enabled or self.clock() < self.next:
            return
        from ..host.keys import pinned_admin_key
        from ..manage import hostupdate, status
        self.next = self.clock() + self.cfg.interval_minutes * 60
        st = self.agent.state_file.load()
        updater = hostupdate.HostUpdater(
            hostupdate.HostConfig(self.agent.cfg.state_dir, self.cfg.data_dir, self.cfg.channel),
            self.agent.remote, pinned_admin_key(self.agent.cfg.state_dir),
            self.agent.keys.wrapping(), st.device,
            hostupdate.Rauc(conf=Path(self.cfg.rauc_conf) if self.cfg.rauc_conf else None),
            status.os_release(self.os_release).get("VERSION_ID", "0"))
        try:
            await updater.cycle(on_battery=on_battery, metered=metered)
        except (VMClientError, OSError) as exc:
            log.warning("host updates: %s", exc)
            self.next = self.clock() + min(self.cfg.interval_minutes * 60, 600)


    async def restart_if_due(self, on_battery: bool) -> RestartPlan:
        """Restart into an installed update when IT's maintenance window says so
        (:func:`..manage.hostrestart.plan`): logind's ``Reboot``, so systemd stops
        vmclient-powerd, which saves every running VM as on any shutdown."""
        from ..manage import hostrestart, hostupdate
        rec = hostupdate.load_record(self.agent.cfg.state_dir)
        # installed in this boot: after a restart the next look clears it (no loop)
        pending = self.enabled and bool(rec.installed) and rec.boot == self.boot()
        window = None
        if pending and rec.window():
            try:
                window = hostrestart.Window.parse(rec.window())
            except hostrestart.BadWindow as exc:
                log.warning("host update: %s", exc)
        if window is None:
            return hostrestart.plan(self.local_now(), None, pending=pending, user_active=True,
                                    on_ac=not on_battery)
        until = self.postponed_until(rec)

        def plan(user_active: bool) -> RestartPlan:  # (not knowing: as if in use)
            return hostrestart.plan(self.local_now(), window, pending=True,
                                    user_active=user_active, on_ac=not on_battery,
                                    postponed_until=until)
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, DBusError) as exc:
            log.warning("host update: no system bus for the maintenance restart: %s", exc)
            return plan(user_active=True)
        try:
            logind = Logind(bus)
            await logind.connect()
            in_use = self.cfg.wait_for_idle and not await logind.idle()
            decided = plan(user_active=in_use)
            log.info("host update %s: %s restart (%s)", rec.installed, decided.action,
                     decided.reason)
            if decided.action == hostrestart.NOW:
                log.warning("host update %s: restarting in the maintenance window %s; "
                            "vmclient-powerd saves the VMs", rec.installed, window)
                await logind.reboot()
        except ServiceUnavailable as exc:
            log.warning("host update: maintenance restart: %s", exc)
            decided = plan(user_active=True)
        finally:
            bus.disconnect()
        return decided

    def postponed_until(self, rec: Any) -> datetime | None:
        """The user's postponement of the restart into ``rec``'s installed release (None:
        none, or one for another install; a damaged file counts as none, logged)."""
        try:
            doc = json.loads((self.agent.cfg.state_dir / POSTPONED).read_text())
            if (doc["release"], doc["boot"]) != (rec.installed, rec.boot):
                return None
            return datetime.fromisoformat(doc["until"])
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("host update: %s is damaged (%s): not postponed", POSTPONED, exc)
            return None

    def postpone(self, seconds: int) -> RestartPlan:
        """``PostponeHostRestart``: not before ``seconds`` from now, or with 0 past the
        maintenance window's next occurrence; kept in the agent's state directory, so a
        syncd restart keeps it, for this release only.  The plan it leaves."""
        from ..manage import hostrestart, hostupdate
        rec = hostupdate.load_record(self.agent.cfg.state_dir) if self.enabled else None
        if rec is None or not rec.installed or rec.boot != self.boot():
            raise hostrestart.NothingToPostpone("no host update waits for a restart")
        if not rec.window():
            raise hostrestart.NothingToPostpone(
                "IT set no maintenance window: the laptop does not restart by itself")
        window = hostrestart.Window.parse(rec.window())
        now = self.local_now()
        until = hostrestart.postponed(now, window, seconds, self.postponed_until(rec))
        doc = {"release": rec.installed, "boot": rec.boot, "until": until.isoformat()}
        write_atomic(self.agent.cfg.state_dir / POSTPONED,
                     json.dumps(doc, sort_keys=True).encode())
        log.info("host update %s: the user postponed the restart until %s", rec.installed,
                 until)
        return hostrestart.plan(now, window, pending=True, user_active=False, on_ac=True,
                                postponed_until=until)


def install_guard(bus: MessageBus, enrol: Callable[[str], Awaitable[str]]) -> None:
    """The Management interface's methods, each authorised by its own polkit action."""
    async def enrol_call(args: list[Any]) -> list[Any]:
        return [await enrol(str(args[0]))]

    install_method_guard(bus, names.MANAGE_PATH, names.MANAGE_IFACE, names.POLKIT_ACTION_ENROL,
                         {"Enrol": Member("enrolling this laptop", enrol_call)})

    async def set_password(args: list[Any]) -> list[Any]:
        from ..manage.password import set_first_password
        user = await set_first_password(int(args[0]), str(args[1]))
        log.info("the first password of %s is set", user)
        return [user]

    install_method_guard(bus, names.MANAGE_PATH, names.MANAGE_IFACE,
                         names.POLKIT_ACTION_FIRST_PASSWORD,
                         {"SetPassword": Member("setting your first password",
                                                set_password, with_caller=True)})


def agent(cfg: sconfig.SyncConfig, remote: RemoteStore, hv: Hypervisor,
          bus: MessageBus) -> Any:
    """The management agent; ``assign`` orders install through vmclient-provd on ``bus``."""
    if not cfg.manage.enabled:
        return None
    from ..manage.agent import Agent
    from ..manage.provisioning import ProvdInstaller
    return Agent(manage_config(cfg), remote, hv, installer=ProvdInstaller(bus))


def manage_config(cfg: sconfig.SyncConfig) -> ManageConfig:
    """The agent's configuration: what it reads and removes (vmclient-syncd.service's
    sandbox must let it write every directory named here)."""
    from ..host.inventory import ManageConfig
    from ..manage import keyuse
    return ManageConfig(state_dir=cfg.manage.state_dir, vm_keys_dir=cfg.provision_dir / "keys",
                        images_dir=cfg.manage.images_dir, name_prefix=cfg.name_prefix,
                        vm_state_dirs=(cfg.provision_dir / "vms",),  # the recipe
                        device_dir=cfg.device_dir,
                        recovery_record=keyuse.RECORD,  # read only
                        lease_days=cfg.manage.lease_days)

"""The key gate under powerd: VMs with LUKS disks (secret only ephemeral) come back after a
managed save by vmclient-powerd, and a business VM stays saved when the lease is gone.

Real libvirtd + QEMU (LUKS qcow2 disks, data keys wrapped for the device key, an enrolled
management state from orders_env), vmclient-powerd as a child process on a private
dbus-daemon with dbusmock's logind and a umockdev battery/AC."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest
from fixtures_bus import PrivateSystemBus
from fixtures_udev import SimulatedLaptop
from fixtures_virt import URI
from orders_env import Laptop, dom_state, has_managed_save
from orders_env import laptop as managed_laptop
from powerd_harness import Logind, PowerDaemon, PowerDaemons, wait_for

from testlib import vmclientctl

pytestmark = pytest.mark.asyncio(loop_scope="session")
RUNNING, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF


def gate_config(lap: Laptop, extra: str = "") -> str:
    """powerd's configuration for the managed laptop's VMs and keys."""
    c = lap.cfg
    return f"""[vms]
name_prefix = "{lap.prefix}-"
[keys]
device_dir = "{c.device_keys_dir}"
vm_keys_dir = "{c.vm_keys_dir}"
manage_dir = "{c.state_dir}"
{extra}"""


def secrets_of(name: str) -> set[str]:
    """The disk secrets a domain names that libvirt holds right now."""
    conn = libvirt.open(URI)
    try:
        held = {s.UUIDString() for s in conn.listAllSecrets(0)}
        xml = conn.lookupByName(name).XMLDesc(0)
    finally:
        conn.close()
    return {u for u in held if u in xml}


def set_lease(lap: Laptop, seconds: int) -> None:
    """IT renewed (> 0) or the lease ran out (< 0), as the manage agent records it."""
    lap.agent().state_file.update(lease_until=int(time.time()) + seconds)


async def started_laptop(lap: Laptop) -> tuple[str, str]:
    agent = await lap.enrol()
    biz, priv = lap.create_vm("biz", "business"), lap.create_vm("priv", "private")
    for vm in (biz, priv):
        await agent.start_vm(vm)
        assert dom_state(vm) == RUNNING and not secrets_of(vm)
    return biz, priv


def save_on_critical_battery(d: PowerDaemon, sim: SimulatedLaptop, names: tuple[str, ...]
                             ) -> None:
    sim.set_ac(False)
    wait_for(lambda: d.props()["PowerSource"] == 2, 10, "on battery")
    sim.set_battery(3, "Critical")
    wait_for(lambda: d.paused_by_us() == dict.fromkeys(names, "save"), 90, "VMs saved")
    for n in names:
        assert dom_state(n) == SHUTOFF and has_managed_save(n)


async def test_critical_battery_save_and_ac_restore_luks_vms(
        tmp_path: Path, system_bus: PrivateSystemBus, logind: object,
        laptop: SimulatedLaptop, run_powerd: PowerDaemons) -> None:
    async with managed_laptop(tmp_path) as lap:
        biz, priv = await started_laptop(lap)
        d = run_powerd(gate_config(lap), laptop)
        save_on_critical_battery(d, laptop, (biz, priv))
        laptop.set_ac(True)
        wait_for(lambda: dom_state(biz) == RUNNING and dom_state(priv) == RUNNING, 90,
                 "both VMs restored")
        wait_for(lambda: d.paused_by_us() == {}, 10, "nothing left saved by us")
        for n in (biz, priv):
            assert not has_managed_save(n) and not secrets_of(n)  # secret gone again
        assert d.props()["RestoreRefused"] == []


async def test_save_policy_on_sleep_is_undone_on_wake(
        tmp_path: Path, system_bus: PrivateSystemBus, logind: Logind,
        laptop: SimulatedLaptop, run_powerd: PowerDaemons) -> None:
    async with managed_laptop(tmp_path) as lap:
        biz, priv = await started_laptop(lap)
        d = run_powerd(gate_config(lap, f'[vms.policies]\n"{biz}" = "save"\n'), laptop)
        logind.prepare_for_sleep(True)
        wait_for(lambda: d.paused_by_us() == {biz: "save", priv: "pause"}, 60,
                 "the business VM saved (its policy), the private one paused")
        assert dom_state(biz) == SHUTOFF and has_managed_save(biz)
        logind.prepare_for_sleep(False)
        wait_for(lambda: dom_state(biz) == RUNNING and dom_state(priv) == RUNNING, 90,
                 "both running again after the wake-up")
        wait_for(lambda: d.paused_by_us() == {}, 10, "nothing left held")
        assert not has_managed_save(biz) and not secrets_of(biz)


async def test_shutdown_save_then_next_start_restores_luks_vms(
        tmp_path: Path, system_bus: PrivateSystemBus, logind: object,
        laptop: SimulatedLaptop, run_powerd: PowerDaemons) -> None:
    async with managed_laptop(tmp_path) as lap:
        biz, priv = await started_laptop(lap)
        d = run_powerd(gate_config(lap), laptop)
        assert d.stop() == 0
        for n in (biz, priv):
            assert dom_state(n) == SHUTOFF and has_managed_save(n)
        d.start()
        wait_for(lambda: dom_state(biz) == RUNNING and dom_state(priv) == RUNNING, 90,
                 "both VMs restored when powerd started again")
        # libvirt reports RUNNING before its restore call returns to powerd, which
        # only then undefines the secret: it must go, not be gone at that instant.
        wait_for(lambda: not secrets_of(biz) and not secrets_of(priv), 10,
                 "the disks' secrets undefined once the restores returned")


async def test_expired_lease_refuses_the_restore_and_keeps_the_saved_state(
        tmp_path: Path, system_bus: PrivateSystemBus, logind: object,
        laptop: SimulatedLaptop, run_powerd: PowerDaemons) -> None:
    async with managed_laptop(tmp_path) as lap:
        biz, priv = await started_laptop(lap)
        d = run_powerd(gate_config(lap), laptop)
        save_on_critical_battery(d, laptop, (biz, priv))
        set_lease(lap, -60)  # offline too long meanwhile
        laptop.set_ac(True)
        wait_for(lambda: dom_state(priv) == RUNNING, 90, "the private VM restored")
        wait_for(lambda: d.props()["RestoreRefused"], 30, "the refusal in powerd's status")
        [(name, why)] = d.props()["RestoreRefused"]
        assert (name, str(why).split(":")[0]) == (biz, "the lease has expired")
        # left as it was: shut off, its saved RAM kept, still ours to restore
        assert dom_state(biz) == SHUTOFF and has_managed_save(biz)
        assert d.paused_by_us() == {biz: "save"}
        assert not secrets_of(biz)
        lines = [ln for ln in d.log().splitlines() if "not restored" in ln]
        assert len(lines) == 1 and biz in lines[0] and "lease has expired" in lines[0], lines
        status = vmclientctl("power", "status", env=d.env).stdout
        assert f"Not restored:       {biz}: the lease has expired" in status, status

        # IT renews the lease: the next restore (AC back after a while on battery) works
        set_lease(lap, 86400)
        laptop.set_battery(80)  # charged meanwhile: going on battery saves nothing
        laptop.set_ac(False)
        wait_for(lambda: d.props()["PowerSource"] == 2, 10, "on battery")
        laptop.set_ac(True)
        wait_for(lambda: dom_state(biz) == RUNNING, 90, "the business VM restored")
        wait_for(lambda: d.props()["RestoreRefused"] == [] and d.paused_by_us() == {}, 10,
                 "the refusal cleared")

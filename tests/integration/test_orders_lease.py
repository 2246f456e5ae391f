
"""The offline lease on real libvirtd + QEMU: expiry saves and stops business VMs, the
clock set back does not revive them, private VMs are untouched, a renewal does."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from orders_env import dom_state, has_managed_save, laptop

from vmclient.manage.vms import BusinessWorkRefused

pytestmark = pytest.mark.asyncio(loop_scope="session")
DAY = 86400


async def test_lease_expiry_survives_clock_set_back_and_renewal_restarts(
        tmp_path: Path) -> None:
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        assert 13 * DAY < agent.status()["lease_remaining"] <= 14 * DAY  # default policy
        biz, priv = lap.create_vm("biz", "business"), lap.create_vm("priv", "private")
        for vm in (biz, priv):
            await agent.start_vm(vm)
        start = int(lap.clock.wall())

        lap.clock.run(13 * DAY)
        assert await agent.enforce() == []
        lap.clock.run(2 * DAY)  # offline for 15 days
        assert await agent.enforce() == [biz]
        assert dom_state(biz) == libvirt.VIR_DOMAIN_SHUTOFF and has_managed_save(biz)
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        with pytest.raises(BusinessWorkRefused, match="expired"):
            await agent.start_vm(biz)

        # the guard is not only ours: without the key libvirt cannot restore it either
        conn = libvirt.open("qemu:///system")
        try:
            with pytest.raises(libvirt.libvirtError):
                conn.lookupByName(biz).create()
        finally:
            conn.close()
        assert dom_state(biz) == libvirt.VIR_DOMAIN_SHUTOFF

        # the user sets the clock back, while running and across a reboot
        lap.clock.wall_t = start
        assert agent.lease().remaining == 0
        lap.clock.reboot()
        lap.clock.wall_t = start - DAY
        assert agent.lease().remaining == 0
        with pytest.raises(BusinessWorkRefused, match="expired"):
            await agent.start_vm(biz)

        # IT renews: business VMs may start again (restored from their saved state)
        renew = await lap.order("renew-lease", lease_until=start + 30 * DAY)
        await agent.poll()
        [rep] = [r for r in await lap.reports() if r.order == renew.seq]
        assert rep.outcome == "done"
        assert agent.lease().business_allowed
        await agent.start_vm(biz)
        assert dom_state(biz) == libvirt.VIR_DOMAIN_RUNNING and not has_managed_save(biz)
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING


async def test_lock_unlock_and_unassign(tmp_path: Path) -> None:
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        biz, priv = lap.create_vm("biz", "business"), lap.create_vm("priv", "private")
        for vm in (biz, priv):
            await agent.start_vm(vm)
        await lap.order("lock")
        await agent.poll()
        assert dom_state(biz) == libvirt.VIR_DOMAIN_SHUTOFF and has_managed_save(biz)
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        with pytest.raises(BusinessWorkRefused, match="locked"):
            await agent.start_vm(biz)
        await lap.order("unlock")
        await agent.poll()
        await agent.start_vm(biz)
        assert dom_state(biz) == libvirt.VIR_DOMAIN_RUNNING

        key = lap.cfg.vm_keys_dir / f"{biz}.wrapped"
        order = await lap.order("unassign", vm=biz)
        await agent.poll()
        assert dom_state(biz) is None and not key.exists() and not lap.vms[biz].exists()
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        [rep] = [r for r in await lap.reports() if r.order == order.seq]
        assert rep.outcome == "done" and "data key destroyed first" in rep.detail
        # unassigning a private VM is not IT's business
        order = await lap.order("unassign", vm=priv)
        await agent.poll()
        [rep] = [r for r in await lap.reports() if r.order == order.seq]
        assert "nothing to do" in rep.detail and dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        assert [r.outcome for r in await lap.reports()] == ["done"] * 4

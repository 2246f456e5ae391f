"""The kill pill on real libvirtd + QEMU with LUKS qcow2 disks: keys first, then data;
private VMs untouched; the report arrives and verifies; further business work refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import libvirt
import pytest
from orders_env import dom_state, laptop, qemu_io_read

from vmclient.host import assigned
from vmclient.host.keys import DeviceKeys
from vmclient.manage.vms import BusinessWorkRefused
from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_wipe_destroys_keys_first_then_business_vms_and_keeps_private(
        tmp_path: Path) -> None:
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        biz, priv = lap.create_vm("biz", "business"), lap.create_vm("priv", "private")
        for vm in (biz, priv):
            await agent.start_vm(vm)
            assert dom_state(vm) == libvirt.VIR_DOMAIN_RUNNING
        (tmp_path / "cache" / "img").mkdir(parents=True)
        biz_key, biz_disk = lap.cfg.vm_keys_dir / f"{biz}.wrapped", lap.vms[biz]
        old_wrapping = DeviceKeys(lap.cfg.device_keys_dir).wrapping()
        wrapped_copy = biz_key.read_bytes()  # e.g. the copy a sync put in the repository
        stolen_disk = tmp_path / "stolen.qcow2"  # a copy of the disk taken before the wipe
        shutil.copyfile(biz_disk, stolen_disk)
        pp = (crypto.KeySet.derive(crypto.unwrap_key(
            old_wrapping, wrapped_copy, "data-key", f"vm:{biz}"))).passphrase()
        assert qemu_io_read(stolen_disk, pp).returncode == 0  # opening needs exactly this key
        wrong = qemu_io_read(stolen_disk, b"0" * 64)
        assert wrong.returncode != 0 and "password" in (wrong.stdout + wrong.stderr).lower()
        del pp
        orphan = lap.cfg.vm_keys_dir / f"{lap.prefix}-half-installed.wrapped"
        orphan.write_bytes(wrapped_copy)  # a key whose domain is gone already

        assigned.record(lap.cfg.state_dir, assigned.Assigned(biz, "img", 1, "done", ""))
        seen: list[tuple[str, bool, bool]] = []
        agent = lap.agent(after_wipe_step=lambda s: seen.append(
            (s, biz_key.exists(), biz_disk.exists())))
        order = await lap.order("wipe", include_private=False)
        await agent.poll()

        # keys first: when the key step ended the key was gone and the disk still there
        assert ("keys", False, True) in seen
        assert [s for s, _k, _d in seen] == ["keys", "stop", "data", "undefine"]
        assert not biz_key.exists() and not biz_disk.exists() and not orphan.exists()
        assert not (tmp_path / "cache").exists() and not (tmp_path / "vmstate" / biz).exists()
        assert assigned.load(lap.cfg.state_dir) == []  # nothing IT assigned is here now
        assert dom_state(biz) is None  # definition and saved state gone
        # no key the laptop still has opens the wrapped copy: the device key was replaced
        new_wrapping = DeviceKeys(lap.cfg.device_keys_dir).wrapping()
        with pytest.raises(RemoteIntegrityError):
            crypto.unwrap_key(new_wrapping, wrapped_copy, "data-key", f"vm:{biz}")
        assert not list(lap.cfg.device_keys_dir.glob("wrapping.next"))
        # the private VM runs on, and its key was re-wrapped for the new device key
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        assert (lap.cfg.vm_keys_dir / f"{priv}.wrapped").exists()
        await lap.hv.destroy(lap_uuid(priv), priv)
        await agent.start_vm(priv)
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING

        # the report arrives, signed by the device
        [rep] = [r for r in await lap.reports() if r.order == order.seq]
        assert rep.outcome == "done" and biz in rep.detail and priv in rep.detail, rep
        # no more business work until re-enrolled
        assert agent.status()["wiped"] and not agent.lease().business_allowed
        later = lap.create_vm("biz2", "business")
        with pytest.raises(BusinessWorkRefused, match="wiped"):
            await agent.start_vm(later)
        assert dom_state(later) == libvirt.VIR_DOMAIN_SHUTOFF
        renew = await lap.order("renew-lease", lease_until=int(lap.clock.wall()) + 10**6)
        await agent.poll()
        [rep] = [r for r in await lap.reports() if r.order == renew.seq]
        assert rep.outcome == "refused" and "re-enrol" in rep.detail

        # re-enrolled (a new code, a new device id): business work is allowed again
        old_device = lap.device
        agent = await lap.enrol()
        assert lap.device != old_device and agent.status()["business_allowed"]
        await agent.start_vm(later)
        assert dom_state(later) == libvirt.VIR_DOMAIN_RUNNING


def lap_uuid(name: str) -> str:
    conn = libvirt.open("qemu:///system")
    try:
        return str(conn.lookupByName(name).UUIDString())
    finally:
        conn.close()


"""provd's ``ListRestorable`` (the shell's restore page) over the real SFTP repository: what
this laptop may restore, each pointer checked as a restore checks it."""

from __future__ import annotations

import json

import pytest
from provision_env import need_tools
from stream_env import disk_bytes, give_to, put_vm_snapshot, streamed

from vmclient.host.assigned import REKEYED
from vmclient.provision.restorable import restorable
from vmclient.shell.restoring import list_failure_text
from vmclient.store import crypto, layout
from vmclient.store.documents import Pointer, pointer_id
from vmclient.store.repo import put_signed
from vmclient.transport.localfs import LocalDirStore
from vmclient.transport.target import RemoteUnavailable

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_listed_are_the_vms_with_a_key_for_this_laptop_and_a_pointer_that_verifies(
        tmp_path):
    """Four VMs under this device's directory: one as a sync writes it (listed, with its
    snapshot and the time it became the latest); one whose ``latest`` a stranger signed;
    one without its data key wrapped for this device; one older than what a ``rekey``
    order accepted (a server replaying an old pointer).  Only the first is listed.  With
    the SFTP server gone, the listing fails as the shell's page words it: "the datacenter
    does not answer"."""
    need_tools(vm=False)
    async with streamed(tmp_path) as s:
        good, forged, unkeyed, replayed = (s.env.name(n) for n in ("ok", "forged", "nokey",
                                                                   "old"))
        made = {vm: await put_vm_snapshot(s.env, s.server.repo, vm, disk_bytes(1), s.keys)
                for vm in (good, forged, unkeyed, replayed)}
        dev = s.env.device.device_id()
        stranger = crypto.Ed25519PrivateKey.generate()
        await put_signed(LocalDirStore(s.server.repo), layout.vm_pointer(dev, forged), stranger,
                         ("pointer", pointer_id(forged)),
                         Pointer(forged, dev, "0000000001", 1, 1, "0" * 64).to_bytes(),
                         exclusive=False)
        (s.server.repo / layout.vm_key(dev, unkeyed, s.env.device.wrapping_id())).unlink()
        s.env.cfg.manage_dir.mkdir(parents=True, exist_ok=True)
        (s.env.cfg.manage_dir / REKEYED).write_text(json.dumps(
            {replayed: {"from_device": dev, "min_seq": 2}}))
        give_to(s.account, s.server.repo / layout.device_dir(dev))
        rows = [r for r in await restorable(s.prov) if r.vm.startswith(s.env.prefix)]
        assert [(r.vm, r.snapshot, r.time) for r in rows] == \
            [(good, made[good].label, made[good].created)]
        # the link down: provd's error, and what the shell's restore page makes of it
        s.server.stop()
        with pytest.raises(RemoteUnavailable) as exc:
            await restorable(s.prov)
        assert list_failure_text(exc.value.dbus_name, str(exc.value)) == (
            "The VMs to restore are not known: the datacenter does not answer.  Check the "
            "network (Wi-Fi, at the right of the bar), then try again")

"""A wipe killed (SIGKILL) in the middle finishes on the next start and leaves no keys."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import libvirt
import pytest
from fixtures_virt import scaled
from orders_env import dom_state, laptop

from testlib import ROOT, run
from vmclient.manage.vms import BusinessWorkRefused

pytestmark = pytest.mark.asyncio(loop_scope="session")
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("step", ["keys", "stop", "data"])
async def test_wipe_killed_midway_finishes_on_next_start(tmp_path: Path, step: str) -> None:
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        biz, priv = lap.create_vm("biz", "business"), lap.create_vm("priv", "private")
        for vm in (biz, priv):
            await agent.start_vm(vm)
        key, disk = lap.cfg.vm_keys_dir / f"{biz}.wrapped", lap.vms[biz]
        order = await lap.order("wipe", include_private=False)

        path = os.pathsep.join([str(ROOT / "python-services" / "src"), str(ROOT / "tests"),
                                str(HERE)])
        r = run([sys.executable, HERE / "orders_crash_driver.py", tmp_path, lap.prefix, step],
                env={"PYTHONPATH": path}, timeout=scaled(120))
        assert r.returncode == -9, r.stderr

        journal = json.loads((lap.cfg.state_dir / "wipe.json").read_text())
        assert journal["done"][-1] == step and journal["order"] == order.seq
        # keys first: gone whatever step was cut short; the VM still runs after "keys"
        assert dom_state(biz) == (libvirt.VIR_DOMAIN_RUNNING if step == "keys"
                                  else libvirt.VIR_DOMAIN_SHUTOFF)  # still defined
        assert not key.exists() and disk.exists() == (step != "data")
        assert agent.state_file.load().last_seq == 0  # not recorded yet
        with pytest.raises(BusinessWorkRefused, match="wiped"):  # no business work meanwhile
            await agent.start_vm(biz)

        agent = lap.agent()
        await agent.startup()  # the next start of the daemon
        assert not (lap.cfg.state_dir / "wipe.json").exists()
        assert not key.exists() and not disk.exists() and dom_state(biz) is None
        assert not list(lap.cfg.device_keys_dir.glob("wrapping.next"))
        assert dom_state(priv) == libvirt.VIR_DOMAIN_RUNNING
        assert (lap.cfg.vm_keys_dir / f"{priv}.wrapped").exists()
        st = agent.status()
        assert (st["last_order"], st["wiped"]) == (order.seq, True)
        [rep] = [r for r in await lap.reports() if r.order == order.seq]
        assert rep.outcome == "done" and "resumed" in rep.detail, rep
        await agent.poll()  # executed once: no second report
        assert [r.order for r in await lap.reports()].count(order.seq) == 1

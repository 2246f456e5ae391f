"""A VM name from a caller is a name, never a path: provd's methods refuse anything else
before it reaches a path (issue 13, security point 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from provision_env import need_tools, provision_env

from vmclient.provision.restore import restore
from vmclient.provision.spec import BadVMName

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools(vm=False)


async def test_a_vm_name_with_dots_and_slashes_reaches_no_path(tmp_path: Path) -> None:
    """``vm restore ../<victim>``: with an "interrupted install" marker planted where the
    name leads, the remnant clean-up would delete ``<images_dir>/../<victim>``."""
    async with provision_env(tmp_path) as env:
        victim = env.cfg.images_dir.parent / f"{env.prefix}-victim"
        try:
            victim.mkdir(parents=True)
            env.cfg.images_dir.mkdir(parents=True)  # as on a laptop with VMs
            (victim / "precious").write_text("user data")
            evil = f"../{env.prefix}-victim"
            marker = env.cfg.state_dir / "vms" / f"{evil}.installing"
            (env.cfg.state_dir / "vms").mkdir(parents=True, exist_ok=True)
            marker.write_text("install started\n")
            with pytest.raises(BadVMName, match=r"Not a VM name: '\.\./"):
                await restore(env.provisioner(), evil)
            assert (victim / "precious").read_text() == "user data"
            assert marker.exists()
        finally:
            shutil.rmtree(victim, ignore_errors=True)

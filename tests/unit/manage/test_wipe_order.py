"""The wipe's step order (issue 13 §2.9): the keys go before any VM is touched, so a
``destroy`` that keeps failing cannot keep them alive."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.errors import VMClientError
from vmclient.host.inventory import ManageConfig, VMTarget
from vmclient.host.keys import DeviceKeys
from vmclient.manage.wipe import STEPS, Journal, plan, run_wipe
from vmclient.store import crypto


class StuckHost:
    """A host whose VM will not power off (libvirt's destroy keeps failing)."""

    def __init__(self, vms: list[VMTarget]) -> None:
        self.vms, self.forgotten, self.power_offs = vms, [], 0

    async def list(self) -> list[VMTarget]:
        return self.vms

    async def power_off(self, vm: VMTarget) -> None:
        self.power_offs += 1
        raise VMClientError(f"virDomainDestroy {vm.name}: Failed to terminate process")

    async def forget_secrets(self, vm: VMTarget) -> None:
        self.forgotten.append(vm.name)


@pytest.mark.asyncio
async def test_keys_are_shredded_even_when_destroy_keeps_failing(tmp_path: Path) -> None:
    cfg = ManageConfig(tmp_path / "manage", tmp_path / "vmkeys", tmp_path / "images")
    keys = DeviceKeys(cfg.device_keys_dir)
    keys.ensure()
    old = keys.wrapping()
    cfg.vm_keys_dir.mkdir()
    key_file = cfg.vm_keys_dir / "biz.wrapped"
    secret = crypto.KeySet.generate().secret
    key_file.write_bytes(crypto.wrap_key(old.public_key(), secret, "data-key", "vm:biz"))
    host = StuckHost([VMTarget("biz", "u-1", "business", (), ("s-1",))])
    journal = Journal(cfg)

    async def attempt() -> None:
        journal.save(journal.load() or await plan(host, cfg, 7, False))  # type: ignore[arg-type]
        with pytest.raises(VMClientError, match="Failed to terminate"):
            await run_wipe(host, cfg, journal)  # type: ignore[arg-type]

    for _ in range(3):  # the agent retries the wipe at every start; destroy fails each time
        await attempt()
        assert not key_file.exists() and host.forgotten == ["biz"]
        assert keys.wrapping().private_bytes_raw() != old.private_bytes_raw()
        assert journal.load()["done"] == ["plan", "keys"]  # type: ignore[index]
    assert host.power_offs == 3
    assert STEPS.index("keys") < STEPS.index("stop")

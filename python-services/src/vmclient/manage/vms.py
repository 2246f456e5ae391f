"""Business and private VMs through the libvirt adapter: list, start under the lease, save, remove.

**The lease guard** is :mod:`.gate`, the one start path of every daemon: a
business VM's disks are LUKS qcow2 whose passphrase exists only wrapped for the
device key, and the gate hands it to libvirt (as a private, ephemeral secret)
only under a valid lease.  ``virsh start`` (or a restore of a managed save)
without that secret fails because QEMU cannot open the disks.  Root on the
laptop can unwrap the key itself: root is trusted (threat-model.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from ..errors import VMClientError, VMNotFound
from ..host.files import overwrite
from ..host.gate import StartRefused
from ..host.inventory import ManageConfig, VMTarget, parse_domain
from ..virt.libvirt import DomState, Hypervisor

log = logging.getLogger(__name__)
__all__ = ["BusinessWorkRefused", "VMHost"]


BusinessWorkRefused = StartRefused  # the name the lease tests know


class VMHost:
    def __init__(self, hv: Hypervisor, cfg: ManageConfig) -> None:
        self.hv, self.cfg = hv, cfg

    async def list(self) -> list[VMTarget]:
        out = []
        for info in await self.hv.list_domains():
            if not info.name.startswith(self.cfg.name_prefix):
                continue
            with contextlib.suppress(VMNotFound):
                vm = parse_domain(await self.hv.xml_desc(info.uuid, info.name), info.uuid)
                if vm is not None:
                    out.append(vm)
        return sorted(out, key=lambda v: v.name)

    async def state(self, vm: VMTarget) -> DomState | None:
        try:
            return (await self.hv.domain(vm.uuid)).state
        except VMNotFound:
            return None

    async def save_and_stop(self, vm: VMTarget) -> bool:
        """Managed save of a running or paused VM (libvirt stops it); True if it ran."""
        state = await self.state(vm)
        if state is None or not state.active:
            return False
        await self.hv.managed_save(vm.uuid, vm.name)
        return True

    async def power_off(self, vm: VMTarget) -> None:
        state = await self.state(vm)
        if state is not None and state.active:
            with contextlib.suppress(VMNotFound):
                await self.hv.destroy(vm.uuid, vm.name)

    async def forget_secrets(self, vm: VMTarget) -> None:
        for secret in vm.secrets:
            await self.hv.undefine_secret(secret)

    async def remove_data(self, vm: VMTarget) -> None:
        """Saved RAM, disks, the VM's directories; the definition stays (idempotent)."""
        with contextlib.suppress(VMNotFound):
            if (await self.hv.domain(vm.uuid)).managed_save:
                # saved RAM holds the disks' LUKS master key: overwrite it before removal
                await asyncio.to_thread(overwrite, self.cfg.save_dir / f"{vm.name}.save")
                await self.hv.managed_save_remove(vm.uuid, vm.name)
        dirs = [self.cfg.images_dir / vm.name, *(d / vm.name for d in self.cfg.vm_state_dirs)]
        await asyncio.to_thread(_remove, [Path(d) for d in vm.disks], dirs)

    async def undefine(self, vm: VMTarget) -> None:
        with contextlib.suppress(VMNotFound):
            await self.hv.undefine(vm.uuid, vm.name)


def _remove(files: list[Path], dirs: list[Path]) -> None:
    for f in files:
        f.unlink(missing_ok=True)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            raise VMClientError(f"could not remove {d}")

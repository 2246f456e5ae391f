"""The one key-gated start path of vmclient VMs: provd, the manage agent and powerd use it.

Every disk of a vmclient VM is a LUKS qcow2 whose passphrase comes from the
VM's data key, and that key exists on the laptop only wrapped for the device
key.  libvirt gets the passphrase as a private, ephemeral secret for the moment
of a start and loses it right after.  So whoever starts (or restores) such a VM
must go through :meth:`StartGate.start`:

1. read the domain XML: the VM's vmclient identity (kind) and the UUIDs of the
   secrets its disks name;
2. a business VM needs the lease: enrolled, not expired by trusted time, not
   locked by IT, not wiped and no wipe under way (``manage/state.json``,
   ``manage/wipe.json``);
3. unwrap the data key with the device's X25519 key;
4. define each secret (``ephemeral='yes' private='yes'``) and set its value;
5. start the domain: libvirt restores its managed save image if it has one;
6. undefine the secrets: QEMU holds the opened keys, nothing else does.

A refusal (steps 2-3) raises :class:`StartRefused` before anything changed:
the domain stays shut off with its managed save image intact, and the error
names the VM and the reason.  Domains that are not vmclient VMs, or whose disks
are not encrypted, are started as they are.

The lease is only *read* here (:func:`.lease.read_lease`): the trusted time is
advanced in memory from the persisted record, never written back.  The manage
agent is the only writer of ``state.json``; a second writer could lose a
renewal it had just recorded.

Two starts of one VM at once need no lock: the second start fails because the
domain is already active, and whichever undefines the secret first only costs
the other its (failing) start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import EXIT_NOPERM, VMClientError
from ..store import crypto
from ..virt.libvirt import Hypervisor
from .inventory import VMTarget, parse_domain
from .keys import DeviceKeys, VMKeyError, unwrap_vm_key
from .lease import Lease, read_lease

log = logging.getLogger(__name__)


class StartRefused(VMClientError):
    """VM {!r} may not start: {}"""

    exit_code = EXIT_NOPERM

    @property
    def vm(self) -> str:
        return str(self.args[0])

    @property
    def reason(self) -> str:
        return str(self.args[1])


@dataclass(frozen=True)
class GateConfig:
    device_keys_dir: Path  # signing.key / wrapping.key (0600, dir 0700)
    vm_keys_dir: Path  # <vm>.wrapped: each VM's data key, wrapped for the device key
    manage_dir: Path  # the manage agent's state.json (lease) and wipe.json


@dataclass(frozen=True)
class KeySettings:
    """The ``[keys]`` table of a daemon that starts VMs without provisioning's config."""

    device_dir: Path = config.setting(
        Path("/var/lib/vmclient/device"), help="root-only: the device's private keys")
    vm_keys_dir: Path = config.setting(
        Path("/var/lib/vmclient/provision/keys"),
        help="root-only: each VM's data key, wrapped for the device key")
    manage_dir: Path = config.setting(
        Path("/var/lib/vmclient/manage"),
        help="root-only: the management state (the lease business VMs start under)")

    def gate(self) -> GateConfig:
        return GateConfig(self.device_dir, self.vm_keys_dir, self.manage_dir)


def refusal(vm: VMTarget, lease: Callable[[], Lease]) -> str | None:
    """Why ``vm`` may not start now, or None (pure but for the lease it asks for)."""
    if vm.kind != "business":
        return None
    current = lease()
    return None if current.business_allowed else current.reason


def data_key(cfg: GateConfig, keys: DeviceKeys, vm: str) -> crypto.KeySet:
    """The VM's data key, unwrapped with the device key; StartRefused if it cannot be."""
    try:
        return unwrap_vm_key(cfg.vm_keys_dir / f"{vm}.wrapped", keys, vm)
    except VMKeyError as exc:
        raise StartRefused(vm, exc.reason) from exc
    except VMClientError as exc:
        raise StartRefused(vm, f"no device key: {exc}") from exc


class StartGate:
    """Start or restore a VM, handing libvirt its disks' secret only for that moment.

    ``lease`` defaults to :func:`read_lease` on ``cfg.manage_dir``; the manage
    agent passes its own (which records the trusted time it advances).
    """

    def __init__(self, hv: Hypervisor, cfg: GateConfig, *, keys: DeviceKeys | None = None,
                 lease: Callable[[], Lease] | None = None) -> None:
        self.hv, self.cfg = hv, cfg
        self.keys = keys or DeviceKeys(cfg.device_keys_dir)
        self.lease = lease or (lambda: read_lease(cfg.manage_dir))

    async def target(self, uuid: str, name: str) -> VMTarget | None:
        """The domain's vmclient identity, or None for a domain that is not a vmclient VM."""
        return parse_domain(await self.hv.xml_desc(uuid, name), uuid)

    def allowed(self, vm: VMTarget) -> None:
        """Refuse (StartRefused) a business VM the lease does not allow now."""
        try:
            why = refusal(vm, self.lease)
        except VMClientError as exc:  # an unreadable management state refuses, naming it
            why = str(exc)
        if why is not None:
            raise StartRefused(vm.name, why)

    def check(self, vm: VMTarget) -> crypto.KeySet:
        """Refuse (StartRefused) or return the data key; changes nothing."""
        self.allowed(vm)
        return data_key(self.cfg, self.keys, vm.name)

    async def start(self, uuid: str, name: str) -> None:
        """Start (or restore from its managed save) the domain ``uuid``."""
        vm = await self.target(uuid, name)
        if vm is None:
            await self.hv.start(uuid, name)  # not a vmclient VM: as it is
            return
        if not vm.secrets:  # not encrypted by us (imported as it is): the lease still holds
            self.allowed(vm)
            await self.hv.start(uuid, name)
            return
        pp = self.check(vm).passphrase()
        async with self.hv.ephemeral_secrets(vm.secrets, pp, vm.name):
            await self.hv.start(uuid, vm.name)

"""Which VMs are business and which are private, where their disks and keys are (pure + config).

A VM is a vmclient VM if its domain carries ``<vmc:vm kind="business|private">``
in the ``https://vmclient.org/xmlns/vm/1`` namespace (written by provisioning's
``domainxml``).  Its LUKS disks are the ``<disk device="disk">`` sources; the
libvirt secrets that unlock them are named in ``<encryption>``.  Its data key
is ``<keys_dir>/<vm>.wrapped`` (provisioning's ``VMKeys``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..store.format import NAME_RE

VM_NS = "https://vmclient.org/xmlns/vm/1"


class BadVMName(UsageError):
    """Not a VM name: {!r} (a VM name matches {})"""


@dataclass(frozen=True)
class ManageConfig:
    state_dir: Path  # state.json, wipe journal, device keys under keys/, admin.pub
    vm_keys_dir: Path  # <vm>.wrapped data keys (provisioning's <state_dir>/keys)
    images_dir: Path  # <images_dir>/<vm>/: the VM's disks
    vm_state_dirs: tuple[Path, ...] = ()  # <dir>/<vm>/ removed with a business VM (recipe…)
    business_caches: tuple[Path, ...] = ()  # removed whole by a wipe (image chunk caches)
    name_prefix: str = ""  # only domains named so are managed (tests share one libvirtd)
    allow_private_wipe: bool = False  # the user's local consent to a wipe of private VMs
    lease_days: int = 14
    save_dir: Path = Path("/var/lib/libvirt/qemu/save")  # libvirt's managed-save images
    device_dir: Path | None = None  # the device keys, shared with provisioning's device_dir
    # the data partition's record of recovery key uses (manage.keyuse), read for the
    # heartbeat; None: not reported
    recovery_record: Path | None = None

    @property
    def device_keys_dir(self) -> Path:
        return self.device_dir or self.state_dir / "keys"


@dataclass(frozen=True)
class VMTarget:
    name: str
    uuid: str
    kind: str  # business | private
    disks: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=())

    def key_file(self, cfg: ManageConfig) -> Path:
        return cfg.vm_keys_dir / f"{self.name}.wrapped"


def parse_domain(untrusted_xml: str, uuid: str) -> VMTarget | None:
    """The vmclient identity of a domain, or None for a domain that is not ours."""
    root = ET.fromstring(untrusted_xml)
    name = root.findtext("name", "")
    vm = root.find(f"metadata/{{{VM_NS}}}vm")
    if vm is None or not NAME_RE.fullmatch(name) or vm.get("kind") not in ("business",
                                                                          "private"):
        return None
    disks, secrets = [], []
    for disk in root.iterfind("devices/disk[@device='disk']"):
        src = disk.find("source")
        if src is not None and src.get("file"):
            disks.append(src.get("file", ""))
        for sec in disk.iterfind(".//encryption/secret"):
            if sec.get("uuid"):
                secrets.append(sec.get("uuid", ""))
    return VMTarget(name, uuid, vm.get("kind", ""), tuple(disks), tuple(sorted(set(secrets))))

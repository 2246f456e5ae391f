"""Where each object lives in the repository (repository-format.md, "Layout").

Paths are relative to the repository root and use ``/``.  A *chunk store* is a
directory with ``packs/`` and ``index/``; images and VMs each have one, so the
Receiver and the Synchronizer share one chunk-store code path.
"""

from __future__ import annotations

CONFIG = "config"
CATALOG = "catalog"
REPOSITORY_LOCK = "lock"
ACCOUNT_PREFIX = "vmc-"


def account_name(device: str) -> str:
    """The storage server's SFTP account of a device: ``vmc-<first 12 hex of its id>``.

    The admin confines it under this name (:mod:`vmclient.admin.sshd`); a laptop whose
    ``[repository] location`` names no user logs in as it (docs/provisioning.md).
    """
    return ACCOUNT_PREFIX + device[:12]


def image_dir(name: str) -> str:
    return f"images/{name}"


def image_lock(name: str) -> str:
    return f"images/{name}/lock"


def image_store(name: str) -> str:
    return f"images/{name}/store"


def image_manifest(name: str, version: int) -> str:
    return f"images/{name}/versions/{version}/manifest"


def image_key(name: str, recipient: str) -> str:
    return f"images/{name}/keys/{recipient}"


def device_dir(device: str) -> str:
    return f"devices/{device}"


def device_record(device: str) -> str:
    return f"devices/{device}/device"


def device_lock(device: str) -> str:
    return f"devices/{device}/lock"


def order(device: str, seq: int) -> str:
    return f"devices/{device}/orders/{seq:012d}"


def report(device: str, seq: int) -> str:
    return f"devices/{device}/reports/{seq:012d}"


def vm_dir(device: str, vm: str) -> str:
    return f"devices/{device}/vms/{vm}"


def vm_store(device: str, vm: str) -> str:
    return f"{vm_dir(device, vm)}/store"


def vm_snapshot(device: str, vm: str, snapshot: str) -> str:
    return f"{vm_dir(device, vm)}/snapshots/{snapshot}"


def vm_pointer(device: str, vm: str) -> str:
    return f"{vm_dir(device, vm)}/latest"


def vm_key(device: str, vm: str, recipient: str) -> str:
    return f"{vm_dir(device, vm)}/keys/{recipient}"


def pack(store: str, name: str) -> str:
    return f"{store}/packs/{name[:2]}/{name}"


def index(store: str, name: str) -> str:
    return f"{store}/index/{name}"


def snapshot_name(seq: int) -> str:
    """Snapshot ids sort by sequence number."""
    return f"{seq:010d}"

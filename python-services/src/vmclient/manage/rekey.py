"""Restore onto another device: the admin re-keys a VM, the device accepts it (issues 6, 7).

Admin side, :func:`rekey` (``vmclient-admin rekey VM --to NEW [--from OLD]``):

1. The VM's data key is unwrapped from its escrow copy
   ``devices/<old>/vms/<vm>/keys/<escrow key id>`` (signed by the old device, or
   by the admin after an earlier re-key) with the escrow private key, which IT
   keeps offline.
2. The old device's ``latest`` and the snapshot it names are verified under
   that key (the signers: the old device and the former writers the old
   directory lists), so nothing unverified is handed on.
3. The VM's objects are copied into the new device's directory, in the
   write order of repository-format.md §8.1 (packs, indexes, other objects,
   snapshots, ``latest``).  Copies keep their writer's signature.  A rerun
   skips objects already copied whole (same size).
4. ``vms/<vm>/writers/<device id>``: a byte copy of the admin-signed device
   record of every device that wrote those snapshots (the new device cannot
   read other devices' directories, so it learns their keys from here).
5. The data key is wrapped for the new device's X25519 key and again for the
   escrow key, both signed by the admin, under ``vms/<vm>/keys/``.
6. The caller issues the ``rekey`` order (``from_device``, ``min_seq`` = the
   verified ``latest`` seq), so a server cannot hand the new device an older
   snapshot.

Device side, :func:`accept` (the agent, on the ``rekey`` order) checks the
admin-signed wrapped key and the writers, verifies ``latest`` with
``seq >= min_seq``, stores the data key wrapped for its own device key where
provisioning keeps it (``<vm_keys_dir>/<vm>.wrapped``, so the lease-checked
start path opens the disks) and remembers the order in ``rekeyed.json``.
:func:`restore_source` then gives everything :func:`vmclient.sync.restore.restore_vm`
needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError, VMClientError
from ..host.assigned import REKEYED, read_rekeyed
from ..host.files import write_private
from ..host.inventory import ManageConfig
from ..store import crypto, layout, repo
from ..store.documents import WrappedKey
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.orders import DeviceRecord, Order
from ..store.remote import RemoteStore, get_object
from ..store.repo import writer_record, writers, writers_dir


def _admin(admin: crypto.Ed25519PublicKey) -> dict[str, crypto.Ed25519PublicKey]:
    return {crypto.key_id(admin): admin}


def _signers(records: dict[str, DeviceRecord]) -> repo.Signers:
    return {d: crypto.ed25519_public(r.signing_key) for d, r in records.items()}


# --- the admin -----------------------------------------------------------------------------

@dataclass
class RekeyResult:
    vm: str
    source: str
    target: str
    seq: int  # the verified latest snapshot: the order's min_seq
    snapshot: str
    copied: int = 0  # objects
    copied_bytes: int = 0
    skipped: int = 0  # already there from an earlier, interrupted run


def _rank(rel: str) -> int | None:
    """Copy order (§8.1 rule 3); None: not copied (keys and writers are written anew)."""
    if rel.startswith(("keys/", "writers/")):
        return None
    if rel.startswith("store/packs/"):
        return 0
    if rel.startswith("store/index/"):
        return 1
    if rel.startswith("snapshots/"):
        return 3
    if rel == "latest":
        return 4
    return 2


async def rekey(remote: RemoteStore, admin: crypto.Ed25519PrivateKey,
                escrow: crypto.X25519PrivateKey, vm: str, source: DeviceRecord,
                target: DeviceRecord, *,
                progress: Callable[[int], None] = lambda _n: None,
                on_size: Callable[[int], None] = lambda _n: None) -> RekeyResult:
    """Steps 1 to 5 above; the caller issues the order with ``min_seq = result.seq``."""
    if source.device == target.device:
        raise UsageError(f"{vm}: source and target are the same device {source.device}")
    admin_pub = admin.public_key()
    former = await writers(remote, admin_pub, source.device, vm)
    signers = {**_signers(former), **_signers({source.device: source})}
    escrow_id = crypto.key_id(escrow.public_key())
    try:
        keys = await repo.get_wrapped_key(
            remote, layout.vm_key(source.device, vm, escrow_id),
            {**signers, **_admin(admin_pub)}, f"vm:{vm}", escrow)
    except ObjectNotFound:
        raise UsageError(f"device {source.name} ({source.device}) has no escrowed data key "
                         f"for VM {vm!r} under escrow key {escrow_id}: was it ever synced, "
                         "and is this the organisation's escrow key?") from None
    try:
        p = await repo.get_pointer(remote, signers, source.device, vm)
    except ObjectNotFound:
        raise UsageError(f"VM {vm!r} of device {source.name} has no snapshot") from None
    await repo.get_snapshot(remote, signers, keys, device=source.device, vm=vm,
                            snapshot=p.snapshot, digest=p.manifest)
    result = RekeyResult(vm, source.device, target.device, p.seq, p.snapshot)

    src, dst = layout.vm_dir(source.device, vm), layout.vm_dir(target.device, vm)
    present = {e.path: e.size for e in await remote.list(dst)}
    todo = []
    for entry in await remote.list(src):
        rel = entry.path[len(src) + 1:]
        rank = _rank(rel)
        if rank is not None:
            todo.append((rank, rel, entry.size))
    todo.sort()
    on_size(sum(size for _r, _rel, size in todo))
    for _r, rel, size in todo:
        if present.get(f"{dst}/{rel}") == size:
            result.skipped += 1
        else:
            await remote.put_atomic(f"{dst}/{rel}",
                                    await get_object(remote, f"{src}/{rel}", "object", rel))
            result.copied += 1
            result.copied_bytes += size
        progress(size)

    for writer in (*former, source.device):
        raw = await get_object(remote, layout.device_record(writer) if writer == source.device
                               else writer_record(source.device, vm, writer), "device", writer)
        await remote.put_atomic(writer_record(target.device, vm, writer), raw)
    for recipient in (crypto.x25519_public(target.wrapping_key), escrow.public_key()):
        await repo.put_wrapped_key(remote, layout.vm_key(target.device, vm,
                                                         crypto.key_id(recipient)),
                                   admin, WrappedKey.create(f"vm:{vm}", recipient, keys))
    return result


# --- the device ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreSource:
    """What :func:`vmclient.sync.restore.restore_vm` needs for a re-keyed VM."""

    device: str  # this device: the copy lives in its own directory
    vm: str
    signers: repo.Signers  # this device and the former writers
    keys: crypto.KeySet
    known_seq: int  # the order's min_seq: an older latest is a rollback

    def __repr__(self) -> str:  # never print key material
        return f"RestoreSource({self.device}, {self.vm}, seq>={self.known_seq})"


def _rekeyed(cfg: ManageConfig) -> dict[str, dict[str, object]]:
    return read_rekeyed(cfg.state_dir)


async def _source(remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: str,
                  wrapping: crypto.X25519PrivateKey, vm: str, from_device: str,
                  min_seq: int, signing: crypto.Ed25519PublicKey | None) -> RestoreSource:
    former = await writers(remote, admin, device, vm)
    if from_device not in former:
        raise RemoteIntegrityError("device", from_device, writers_dir(device, vm),
                                   "the rekey order's device is not among the VM's writers")
    signers = {**_signers(former), **({device: signing} if signing is not None else {})}
    path = layout.vm_key(device, vm, crypto.key_id(wrapping.public_key()))
    keys = await repo.get_wrapped_key(remote, path, _admin(admin), f"vm:{vm}", wrapping)
    p = await repo.get_pointer(remote, signers, device, vm, known_seq=min_seq)
    await repo.get_snapshot(remote, signers, keys, device=device, vm=vm, snapshot=p.snapshot,
                            digest=p.manifest)
    return RestoreSource(device, vm, signers, keys, min_seq)


async def accept(remote: RemoteStore, admin: crypto.Ed25519PublicKey, cfg: ManageConfig,
                 device: str, wrapping: crypto.X25519PrivateKey, order: Order) -> str:
    """Execute a ``rekey`` order: check everything, install the data key, remember it."""
    vm, from_device = str(order.args["vm"]), str(order.args["from_device"])
    min_seq = int(order.args["min_seq"])
    src = await _source(remote, admin, device, wrapping, vm, from_device, min_seq, None)
    key_file = cfg.vm_keys_dir / f"{vm}.wrapped"
    if key_file.exists():
        try:
            old = crypto.unwrap_key(wrapping, key_file.read_bytes(), "data-key", f"vm:{vm}",
                                    path=str(key_file))
        except RemoteIntegrityError:
            old = b""
        if old != src.keys.secret:
            raise VMClientError(f"VM {vm!r} exists here with another data key ({key_file}): "
                                "unassign it first")
    write_private(key_file, crypto.wrap_key(wrapping.public_key(), src.keys.secret, "data-key",
                                            f"vm:{vm}"))
    done = _rekeyed(cfg)
    done[vm] = {"from_device": from_device, "min_seq": min_seq, "order": order.seq}
    write_private(cfg.state_dir / REKEYED, json.dumps(done, sort_keys=True).encode())
    return (f"{vm}: data key from {from_device} installed; snapshot seq >= {min_seq} "
            "verified, ready to restore")


async def restore_source(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                         cfg: ManageConfig, device: str, wrapping: crypto.X25519PrivateKey,
                         vm: str, signing: crypto.Ed25519PublicKey | None = None
                         ) -> RestoreSource:
    """A VM this device accepted a ``rekey`` order for, verified again now."""
    entry = _rekeyed(cfg).get(vm)
    if entry is None:
        raise UsageError(f"no rekey order for VM {vm!r} was executed on this device")
    return await _source(remote, admin, device, wrapping, vm, str(entry["from_device"]),
                         int(str(entry["min_seq"])), signing)


def rekeyed_vms(cfg: ManageConfig) -> list[str]:
    return sorted(_rekeyed(cfg))


__all__ = ["RekeyResult", "RestoreSource", "accept", "rekey", "rekeyed_vms", "restore_source",
           "writers"]

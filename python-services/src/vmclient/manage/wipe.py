"""The kill pill: a journalled, idempotent wipe of the business VMs (repository-format.md §8.6).

Steps, each recorded in ``wipe.json`` (0600, fsync'ed) before the next starts;
after a crash :func:`run_wipe` resumes at the first step not recorded:

1. ``plan``     the journal names the VMs to wipe (business ones; private ones
                only if the order says so *and* local policy allows) and the
                laptop counts as wiped from here on (no business start).
2. ``keys``     crypto-shredding: every wiped VM's wrapped data key is
                overwritten, fsync'ed and unlinked, the libvirt secrets are
                undefined, and the device's X25519 wrapping key is replaced
                (private VMs' keys re-wrapped for the new one first), so no
                copy of a wrapped key — here or in the repository — opens any
                more.  Then checked: a key file still there fails the step.
                First, so that no failure of a later step (a ``destroy`` that
                keeps failing, a disk that cannot be removed) leaves the keys
                alive: a VM still running holds its key in QEMU's memory only.
3. ``stop``     those VMs are powered off (no managed save: saved RAM is plaintext).
4. ``data``     saved states, disks, the VMs' directories, business caches.
5. ``undefine`` the domain definitions.

The journal is removed only after the caller has recorded the outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..errors import VMClientError
from ..host.files import KeyDestructionFailed, shred, write_private
from ..host.inventory import ManageConfig, VMTarget
from ..host.keys import WRAPPING, read_private
from ..store import crypto
from ..store.errors import RemoteIntegrityError
from .vms import VMHost

log = logging.getLogger(__name__)
STEPS = ("plan", "keys", "stop", "data", "undefine")
JOURNAL = "wipe.json"
NEXT_WRAPPING = "wrapping.next"


class Journal:
    def __init__(self, cfg: ManageConfig) -> None:
        self.path = cfg.state_dir / JOURNAL

    def load(self) -> dict[str, object] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def save(self, doc: dict[str, object]) -> None:
        write_private(self.path, json.dumps(doc, sort_keys=True).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


async def plan(host: VMHost, cfg: ManageConfig, order: int, include_private: bool
               ) -> dict[str, object]:
    vms = await host.list()
    private = include_private and cfg.allow_private_wipe
    targets = [v for v in vms if v.kind == "business" or private]
    kept = [v.name for v in vms if v not in targets]
    return {"order": order, "targets": [asdict(v) for v in targets], "kept": kept,
            "private_requested": include_private, "done": ["plan"]}


async def run_wipe(host: VMHost, cfg: ManageConfig, journal: Journal,
                   after_step: Callable[[str], None] = lambda _s: None) -> dict[str, object]:
    """Finish the wipe the journal describes; returns the journal (all steps done)."""
    doc = journal.load()
    if doc is None:
        raise VMClientError("no wipe in progress")
    targets = [VMTarget(t["name"], t["uuid"], t["kind"], tuple(t["disks"]), tuple(t["secrets"]))
               for t in doc["targets"]]  # type: ignore[attr-defined]
    done: list[str] = list(doc["done"])  # type: ignore[call-overload]
    for step in STEPS:
        if step in done:
            continue
        log.warning("wipe (order %s): %s", doc["order"], step)
        if step == "stop":
            for vm in targets:
                await host.power_off(vm)
        elif step == "keys":
            await destroy_keys(host, cfg, targets, [str(k) for k in doc["kept"]])  # type: ignore[attr-defined]
        elif step == "data":
            for vm in targets:
                await host.remove_data(vm)
            for cache in cfg.business_caches:
                await host_remove_tree(cache)
        elif step == "undefine":
            for vm in targets:
                await host.undefine(vm)
        done.append(step)
        doc["done"] = done
        journal.save(doc)
        after_step(step)
    return doc


async def host_remove_tree(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)


async def destroy_keys(host: VMHost, cfg: ManageConfig, targets: list[VMTarget],
                       kept: list[str]) -> None:
    for vm in targets:
        shred(vm.key_file(cfg))
        await host.forget_secrets(vm)
    # keys of VMs no domain names any more (an install or removal cut short) go too:
    # every key but the kept VMs' is shredded
    for path in orphan_keys(cfg, kept):
        shred(path)
    rotate_wrapping_key(cfg, kept)
    left = [str(vm.key_file(cfg)) for vm in targets if vm.key_file(cfg).exists()]
    left += [str(p) for p in orphan_keys(cfg, kept)]
    if left:
        raise KeyDestructionFailed(", ".join(left), "still present")


def orphan_keys(cfg: ManageConfig, kept: list[str]) -> list[Path]:
    if not cfg.vm_keys_dir.is_dir():
        return []
    return sorted(p for p in cfg.vm_keys_dir.glob(f"{cfg.name_prefix}*.wrapped")
                  if p.name.removesuffix(".wrapped") not in kept)


def rotate_wrapping_key(cfg: ManageConfig, kept: list[str]) -> None:
    """Replace the device's X25519 key; re-wrap the kept (private) VMs' keys first.

    Resumable: ``wrapping.next`` is made once; each kept key file is re-wrapped
    if it still opens under the old key; then the old key is shredded and the
    new one renamed into place.
    """
    kdir = cfg.device_keys_dir
    old_path, next_path = kdir / WRAPPING, kdir / NEXT_WRAPPING
    if not next_path.exists():
        if not old_path.exists():
            return  # rotated already
        write_private(next_path, crypto.raw_private(crypto.X25519PrivateKey.generate()))
    new = crypto.X25519PrivateKey.from_private_bytes(read_private(next_path, missing="gone"))
    old = (crypto.X25519PrivateKey.from_private_bytes(read_private(old_path, missing="gone"))
           if old_path.exists() else None)
    for name in kept:
        path = cfg.vm_keys_dir / f"{name}.wrapped"
        if old is None or not path.exists():
            continue
        try:
            secret = crypto.unwrap_key(old, path.read_bytes(), "data-key", f"vm:{name}")
        except RemoteIntegrityError:
            continue  # re-wrapped already (opens under the new key)
        write_private(path, crypto.wrap_key(new.public_key(), secret, "data-key", f"vm:{name}"))
    shred(old_path)
    next_path.rename(old_path)

"""What this laptop may restore from the datacenter: provd's ``ListRestorable`` (the
shell's restore page).

A VM is offered when the repository holds, under this device's own directory, its
``latest`` snapshot pointer and its data key wrapped for this device (what IT's
``vmclient-admin restore VM --to DEVICE`` or ``rekey`` puts there, or what this
laptop's own sync wrote), and no VM of that name is on this laptop: a restore never
replaces a VM that is here (its newer local state would be thrown away).  Each
pointer is verified as a restore verifies it (signed by this device or a former
writer the admin vouches for, not older than a ``rekey`` order's floor); a VM whose
pointer fails that is left out, with a warning in provd's log.  Read-only: nothing is
downloaded but the listing of the device's directory and one pointer per VM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ServiceUnavailable
from ..host.assigned import accepted_min_seq
from ..store import layout
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.repo import get_pointer
from .installer import Provisioner
from .restore import vm_signers
from .spec import NAME_RE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restorable:
    vm: str
    snapshot: str  # the label of its latest snapshot
    time: int  # when that snapshot became the latest (unix seconds; 0 unknown)


def candidates(untrusted_paths: Iterable[str], vms_dir: str, wrapping_id: str) -> list[str]:
    """Pure: the VMs under ``vms_dir`` with both a ``latest`` and ``keys/<wrapping_id>``
    among ``untrusted_paths`` (a recursive listing), whose names are VM names."""
    latest: set[str] = set()
    keyed: set[str] = set()
    for path in untrusted_paths:
        if not path.startswith(vms_dir + "/"):
            continue
        parts = path[len(vms_dir) + 1:].split("/")
        if parts[1:] == ["latest"]:
            latest.add(parts[0])
        elif parts[1:] == ["keys", wrapping_id]:
            keyed.add(parts[0])
    return sorted(n for n in latest & keyed if NAME_RE.fullmatch(n))


async def restorable(prov: Provisioner) -> list[Restorable]:
    receiver = prov.receiver
    if receiver is None:
        raise ServiceUnavailable("The datacenter", "no repository is configured on this "
                                 "laptop (provd's [repository])")
    remote, me = receiver.remote, prov.keys.device
    dev = me.device_id()
    vms_dir = f"{layout.device_dir(dev)}/vms"
    listed = await remote.list(vms_dir)
    here = {v.name for v in await prov.list()}
    out = []
    for vm in candidates((e.path for e in listed), vms_dir, me.wrapping_id()):
        if vm in here or prov.vm_dir(vm).exists():
            continue
        try:
            signers = await vm_signers(remote, receiver.admin, me, vm)
            floor = await asyncio.to_thread(accepted_min_seq, prov.cfg.manage_dir, vm)
            p = await get_pointer(remote, signers, dev, vm, floor)
        except (RemoteIntegrityError, ObjectNotFound) as exc:
            log.warning("VM %s in the datacenter is not offered for restore: %s", vm, exc)
            continue
        out.append(Restorable(vm, p.snapshot, p.time))
    return out

"""IT's fleet view behind ``vmclient-admin devices`` and ``show``: each enrolled device's
orders, reports, heartbeat (with the uses of its recovery key), lease and synchronised
VMs, every object verified; one bad object marks its device (``problem``) and hides
nothing else."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..store import crypto, layout
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.format import shown
from ..store.orders import DEVICE_ID_RE, DeviceRecord
from ..store.remote import RemoteStore
from ..store.repo import get_pointer, get_signed, writers
from .admin import device_record, orders_of, reports_of, revocation
from .keyuse import MAX_SENT, KeyUse
from .status import DeviceStatus, status_path


async def device_status(remote: RemoteStore, rec: DeviceRecord) -> DeviceStatus | None:
    """The device's last heartbeat, verified with its key; None if it never sent one."""
    path = status_path(rec.device)
    try:
        _s, body, _raw = await get_signed(
            remote, path, {rec.device: crypto.ed25519_public(rec.signing_key)}, "status",
            rec.device)
    except ObjectNotFound:
        return None
    return DeviceStatus.parse(body, rec.device, path)


@dataclass(frozen=True)
class VMView:
    vm: str
    seq: int  # latest snapshot
    time: int  # when it was taken


async def vms_of(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                 rec: DeviceRecord) -> list[VMView]:
    """The device's synchronised VMs and their last sync (verified ``latest`` pointers)."""
    out = []
    prefix = f"{layout.device_dir(rec.device)}/vms"
    for entry in await remote.list(prefix):
        parts = entry.path[len(prefix) + 1:].split("/")
        if len(parts) != 2 or parts[1] != "latest":
            continue
        vm = parts[0]
        signers = {rec.device: crypto.ed25519_public(rec.signing_key)}
        try:
            signers |= {d: crypto.ed25519_public(r.signing_key)
                        for d, r in (await writers(remote, admin, rec.device, vm)).items()}
            p = await get_pointer(remote, signers, rec.device, vm)
        except (RemoteIntegrityError, ObjectNotFound):
            continue
        out.append(VMView(vm, p.seq, p.time))
    return out


@dataclass
class DeviceView:
    device: str
    name: str
    enrolled: int
    last_contact: int = 0  # time of its newest report
    last_order: int = 0  # newest order it reported on
    lease_until: int = 0  # from the newest renew-lease order
    wiped: bool = False
    pending: list[int] = field(default_factory=list)  # orders without a report yet
    wipe_pending: int = 0  # the number of a pending wipe order (0: none)
    refused: int = 0  # refused objects it reported (forgeries, replays…)
    revoked: int = 0  # when IT revoked it (0: not revoked)
    release: str = ""  # from its last status (heartbeat)
    host: dict[str, str] = field(default_factory=dict)  # host update: slot, release, result
    # uses of the data partition's recovery key (its status; keyuse.KeyUse), oldest first
    recovery_key_used: list[KeyUse] = field(default_factory=list)
    problem: str = ""  # an object of this device that did not verify (view incomplete)
    vms: list[VMView] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k not in ("vms", "recovery_key_used")},
                "vms": [vars(v) for v in self.vms],
                "recovery_key_used": [u.to_json() for u in self.recovery_key_used]}


async def devices(remote: RemoteStore, admin: crypto.Ed25519PublicKey) -> list[DeviceView]:
    """The fleet view behind ``vmclient-admin devices``."""
    out = []
    ids = sorted({e.path.split("/")[1] for e in await remote.list("devices")
                  if len(e.path.split("/")) > 2 and DEVICE_ID_RE.fullmatch(e.path.split("/")[1])})
    for device in ids:
        try:
            rec = await device_record(remote, admin, device)
        except (UsageError, RemoteIntegrityError):
            continue
        view = DeviceView(device, rec.name, rec.enrolled)
        try:
            await _fill(view, remote, admin, rec)
        except RemoteIntegrityError as exc:  # one bad object must not hide the fleet
            view.problem = str(exc)
        out.append(view)
    return out


async def _fill(view: DeviceView, remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                rec: DeviceRecord) -> None:
    device = rec.device
    orders = await orders_of(remote, admin, device)
    reports = await reports_of(remote, admin, device)
    done = {r.order for r in reports if r.order}
    view.last_contact = max((r.time for r in reports), default=0)
    view.last_order = max(done, default=0)
    view.refused = sum(1 for r in reports if r.outcome == "refused" and not r.order)
    view.pending = [o.seq for o in orders if o.seq not in done]
    view.wipe_pending = max((o.seq for o in orders if o.seq not in done and o.action == "wipe"),
                            default=0)
    leases = [o for o in orders if o.action == "renew-lease"]
    view.lease_until = int(leases[-1].args["lease_until"]) if leases else 0
    view.wiped = any(r.order and r.outcome == "done" and o.seq == r.order
                     and o.action == "wipe" for r in reports for o in orders)
    rev = await revocation(remote, admin, device)
    view.revoked = rev.revoked if rev else 0
    st = await device_status(remote, rec)
    if st is not None:
        view.last_contact = max(view.last_contact, st.time)
        view.release = st.release
        view.host = dict(st.host or {})
        view.recovery_key_used = list(st.recovery_key_used)
        view.lease_until = st.lease_until  # the device's own view, when it has told us
    view.vms = await vms_of(remote, admin, rec)


def render_devices(views: list[DeviceView], now: int) -> str:
    """The table of ``vmclient-admin devices``."""
    def when(t: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "never"

    rows = ["NAME                 DEVICE                            LAST CONTACT UTC  "
            "LEASE               STATE         PENDING  REFUSED  RELEASE                  "
            "VMS (LAST SYNC)"]
    for v in views:
        lease = (f"{(v.lease_until - now) // 86400:+d}d" if v.lease_until else "enrolment")
        state = ("SUSPECT" if v.problem else "WIPE PENDING" if v.wipe_pending
                 else "revoked" if v.revoked else "wiped" if v.wiped else "ok")
        pending = ",".join(map(str, v.pending)) or "-"
        vms = ", ".join(f"{m.vm} #{m.seq} {when(m.time)}" for m in v.vms) or "-"
        rows.append(f"{shown(v.name)[:20]:<20} {v.device}  {when(v.last_contact):<16}  "
                    f"{lease:<18}  {state:<12}  {pending:<7}  {v.refused:<7}  "
                    f"{shown(v.release or '-')[:24]:<24} {vms}")
    rows += [f"{shown(v.name)}: host slot {shown(v.host.get('slot') or '-')}, release "
             f"{shown(v.host.get('release') or '-')}: {shown(v.host.get('result') or '-')}"
             for v in views if v.host]
    rows += [recovery_line(v) for v in views if v.recovery_key_used]
    rows += [f"{shown(v.name)}: {shown(v.problem)}" for v in views if v.problem]
    return "\n".join(rows)


def recovery_line(v: DeviceView) -> str:
    """``NAME: recovery key used N time(s), last …`` (the data partition did not unlock by
    its TPM; its escrowed key is replaced by a new one: threat-model.md §6a)."""
    uses = v.recovery_key_used
    shown_uses = f"{len(uses)} time{'s' if len(uses) > 1 else ''}"
    if len(uses) >= MAX_SENT:
        shown_uses = f"{MAX_SENT} or more times"
    return f"{shown(v.name)}: recovery key used {shown_uses}, last {uses[-1].describe()}"

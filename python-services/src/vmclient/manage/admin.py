"""IT's side: issue signed orders, read device reports, a fleet overview (issue 7 §2, §5).

A function-level API for ``vmclient-admin order …`` and ``vmclient-admin
devices`` (the CLI lives with the admin tool of branch ``sftp``).

Order numbers come from the admin, not from the server's listing: the next
number is one more than the highest *admin-signed* order of the device (a
forged object at that number is replaced: the orders directory is the admin's),
so a server cannot make the admin skip or reuse a number.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..store import crypto, layout
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.format import open_envelope, signed_envelope
from ..store.orders import DEVICE_ID_RE, ORDER_ACTIONS, DeviceRecord, Order, Report
from ..store.remote import RemoteStore
from ..store.repo import get_signed

_SEQ_RE = re.compile(r"^[0-9]{12}$")


def _signers(key: crypto.Ed25519PublicKey) -> dict[str, crypto.Ed25519PublicKey]:
    return {crypto.key_id(key): key}


async def device_record(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                        device: str) -> DeviceRecord:
    path = layout.device_record(device)
    try:
        _s, body, _raw = await get_signed(remote, path, _signers(admin), "device", device)
    except ObjectNotFound:
        raise UsageError(f"no enrolled device {device}") from None
    return DeviceRecord.parse(body, device, path)


async def orders_of(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                    device: str) -> list[Order]:
    """The device's orders that carry a valid admin signature (forgeries are skipped)."""
    out = []
    for path, seq in await _numbered(remote, f"{layout.device_dir(device)}/orders"):
        try:
            _s, body, _raw = await get_signed(remote, path, _signers(admin), "order",
                                              f"{device}/{seq}")
            out.append(Order.parse(body, device, seq, path))
        except (RemoteIntegrityError, ObjectNotFound):
            continue
    return out


async def _numbered(remote: RemoteStore, prefix: str) -> list[tuple[str, int]]:
    """(path, number) of the objects named by 12 digits under ``prefix``."""
    out = []
    for entry in await remote.list(prefix):
        name = entry.path.rsplit("/", 1)[-1]
        if _SEQ_RE.fullmatch(name):
            out.append((entry.path, int(name)))
    return out


async def issue_order(remote: RemoteStore, admin: crypto.Ed25519PrivateKey, device: str,
                      action: str, args: dict[str, Any], now: int) -> Order:
    """Sign and store the device's next order."""
    if action not in ORDER_ACTIONS:
        raise UsageError(f"unknown order {action!r} (one of {', '.join(ORDER_ACTIONS)})")
    if set(args) != set(ORDER_ACTIONS[action]):
        raise UsageError(f"order {action} takes {', '.join(ORDER_ACTIONS[action]) or 'nothing'}")
    await device_record(remote, admin.public_key(), device)
    previous = await orders_of(remote, admin.public_key(), device)
    seq = max((o.seq for o in previous), default=0) + 1
    order = Order(device, seq, now, action, dict(args))
    Order.parse(order.to_bytes(), device, seq, "(new order)")  # what the laptop will check
    await remote.put_atomic(layout.order(device, seq),
                            signed_envelope(admin, "order", order.object_id, order.to_bytes()))
    return order


async def reports_of(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                     device: str) -> list[Report]:
    """The device's reports, verified with the key of its admin-signed device record."""
    rec = await device_record(remote, admin, device)
    key = crypto.ed25519_public(rec.signing_key)
    out = []
    for path, seq in await _numbered(remote, f"{layout.device_dir(device)}/reports"):
        untrusted = await remote.get(path)
        _s, body = open_envelope(_signers(key), untrusted, "report", f"{device}/{seq}", path)
        out.append(Report.parse(body, device, seq, path))
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
    refused: int = 0  # refused objects it reported (forgeries, replays…)


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
        orders = await orders_of(remote, admin, device)
        reports = await reports_of(remote, admin, device)
        done = {r.order for r in reports if r.order}
        view.last_contact = max((r.time for r in reports), default=0)
        view.last_order = max(done, default=0)
        view.refused = sum(1 for r in reports if r.outcome == "refused" and not r.order)
        view.pending = [o.seq for o in orders if o.seq not in done]
        leases = [o for o in orders if o.action == "renew-lease"]
        view.lease_until = int(leases[-1].args["lease_until"]) if leases else 0
        view.wiped = any(r.order and r.outcome == "done" and o.seq == r.order
                         and o.action == "wipe" for r in reports for o in orders)
        out.append(view)
    return out


def order_args(action: str, untrusted_values: list[str], now: int) -> dict[str, Any]:
    """``key=value`` words of ``vmclient-admin order DEVICE ACTION …`` as typed arguments.

    ``lease_until`` also takes ``+<days>d`` (from now); flags take yes/no.
    """
    spec = ORDER_ACTIONS.get(action)
    if spec is None:
        raise UsageError(f"unknown order {action!r} (one of {', '.join(ORDER_ACTIONS)})")
    out: dict[str, Any] = {}
    for word in untrusted_values:
        key, sep, value = word.partition("=")
        if not sep or key not in spec:
            wanted = ", ".join(f"{k}=…" for k in spec) or "no arguments"
            raise UsageError(f"order {action}: expected {wanted}, got {word!r}")
        if spec[key] is bool:
            if value not in ("yes", "no"):
                raise UsageError(f"{key}: yes or no, not {value!r}")
            out[key] = value == "yes"
        elif spec[key] is int:
            days = re.fullmatch(r"\+([0-9]{1,4})d", value)
            if days:
                out[key] = now + int(days.group(1)) * 86400
            elif value.isdigit():
                out[key] = int(value)
            else:
                raise UsageError(f"{key}: a Unix time or +<days>d, not {value!r}")
        else:
            out[key] = value
    return out


def render_devices(views: list[DeviceView], now: int) -> str:
    """The table of ``vmclient-admin devices``."""
    def when(t: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "never"

    rows = ["NAME                 DEVICE                            LAST CONTACT      "
            "LEASE               STATE     PENDING  REFUSED"]
    for v in views:
        lease = (f"{(v.lease_until - now) // 86400:+d}d" if v.lease_until else "enrolment")
        state = "wiped" if v.wiped else "ok"
        pending = ",".join(map(str, v.pending)) or "-"
        rows.append(f"{v.name[:20]:<20} {v.device}  {when(v.last_contact):<16}  "
                    f"{lease:<18}  {state:<8}  {pending:<7}  {v.refused}")
    return "\n".join(rows)

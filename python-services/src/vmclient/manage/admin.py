"""IT's side: issue signed orders, read device reports and revocations.

A function-level API for ``vmclient-admin order …``; the fleet view of ``vmclient-admin
devices`` is :mod:`.fleetview`.

Order numbers come from the admin, not from the server's listing: the next
number is one more than the highest of the last number this admin issued to the
device (:class:`OrderNumbers`, ``orders.json`` in the admin's key directory, as
``serials.json`` is for catalogs) and the highest *admin-signed* order listed.
A server that hides executed orders therefore cannot make the admin reuse a
number (the laptop would refuse the new order, a wipe included, as a replay).
The order is written with an exclusive put: a valid order already at that
number (another admin machine, a record lost) moves the number on; a forged
object there is replaced (the orders directory is the admin's).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..host.files import write_private
from ..provision import spec
from ..store import crypto, layout
from ..store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from ..store.format import Reader, canonical_json, open_envelope, signed_envelope
from ..store.orders import ORDER_ACTIONS, ORDER_FLAGS, ORDER_OPTIONS, DeviceRecord, Order, Report
from ..store.remote import RemoteStore, get_object
from ..store.repo import get_signed

_SEQ_RE = re.compile(r"^[0-9]{12}$")
_PUT_ATTEMPTS = 8  # collisions tolerated before the server is taken to be playing games


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
    for _path, seq in await _numbered(remote, f"{layout.device_dir(device)}/orders"):
        order = await signed_order(remote, admin, device, seq)
        if order is not None:
            out.append(order)
    return out


async def _numbered(remote: RemoteStore, prefix: str) -> list[tuple[str, int]]:
    """(path, number) of the objects named by 12 digits under ``prefix``."""
    out = []
    for entry in await remote.list(prefix):
        name = entry.path.rsplit("/", 1)[-1]
        if _SEQ_RE.fullmatch(name):
            out.append((entry.path, int(name)))
    return out


class OrderNumbers:
    """The last order number this admin issued per device (``orders.json``, 0600, atomic).

    Recorded after the order is stored: a failed write leaves no gap (the
    laptop accepts exactly ``last + 1``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, int]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.path}: unreadable order numbers ({exc}): restore it "
                             "from a backup of the admin's key directory") from exc
        return {str(k): int(v) for k, v in doc.items()}

    def last(self, device: str) -> int:
        return self._load().get(device, 0)

    def record(self, device: str, seq: int) -> None:
        doc = self._load()
        if seq > doc.get(device, 0):
            doc[device] = seq
            write_private(self.path, json.dumps(doc, sort_keys=True, indent=1).encode())


def assign_recipe(untrusted_text: str, where: str, vm: str | None = None,
                  image: str | None = None) -> spec.Recipe:
    """An ``assign`` order's recipe, checked as the laptop will check it before it is
    signed: the laptop's recipe parser, a business VM from the catalog, named ``vm``
    (the order's ``vm``) and installing ``image`` when given."""
    recipe = spec.parse(untrusted_text, where)
    if recipe.kind != "business" or not recipe.image.catalog:
        raise UsageError(f"{where}: an assign order installs a business VM from the catalog "
                         f"(kind = \"business\", [image] catalog = …)")
    if vm is not None and recipe.name != vm:
        raise UsageError(f"{where}: the recipe installs {recipe.name!r}, the order names {vm!r}")
    if image is not None and recipe.image.catalog != image:
        raise UsageError(f"{where}: the recipe installs image {recipe.image.catalog!r}, "
                         f"not {image!r}")
    return recipe


async def issue_order(remote: RemoteStore, admin: crypto.Ed25519PrivateKey, device: str,
                      action: str, args: dict[str, Any], now: int, *,
                      numbers: OrderNumbers) -> Order:
    """Sign and store the device's next order (numbering: see the module docstring)."""
    if action not in ORDER_ACTIONS:
        raise UsageError(f"unknown order {action!r} (one of {', '.join(ORDER_ACTIONS)})")
    required = set(ORDER_ACTIONS[action])
    flags = set(ORDER_FLAGS.get(action, {})) | set(ORDER_OPTIONS.get(action, {}))
    if not required <= set(args) <= required | flags:
        raise UsageError(f"order {action} takes "
                         f"{', '.join([*ORDER_ACTIONS[action], *flags]) or 'nothing'}")
    if action == "assign":  # a recipe the laptop would refuse is not signed
        assign_recipe(str(args["recipe"]), "(the order's recipe)", str(args["vm"]))
    rec = await device_record(remote, admin.public_key(), device)
    revoked = await revocation(remote, admin.public_key(), device)
    if revoked is not None:
        raise UsageError(f"device {rec.name} ({device}) was revoked on "
                         f"{_iso(revoked.revoked)}: no further orders")
    listed = max((o.seq for o in await orders_of(remote, admin.public_key(), device)),
                 default=0)
    seq = max(listed, numbers.last(device)) + 1
    for _attempt in range(_PUT_ATTEMPTS):
        order = Order(device, seq, now, action, dict(args))
        Order.parse(order.to_bytes(), device, seq, "(new order)")  # what the laptop will check
        path = layout.order(device, seq)
        try:
            await remote.put_atomic(path, signed_envelope(admin, "order", order.object_id,
                                                          order.to_bytes()), exclusive=True)
        except LocalSyncError:
            if not await _exists(remote, path):
                raise
            if await signed_order(remote, admin.public_key(), device, seq) is not None:
                numbers.record(device, seq)  # issued already (another admin machine?)
                seq += 1
            else:
                await remote.delete(path)  # a forgery in the admin's directory: replaced
            continue
        numbers.record(device, seq)
        return order
    raise RemoteIntegrityError("order", f"{device}/{seq}", layout.order(device, seq),
                               f"{_PUT_ATTEMPTS} attempts to store the order collided with "
                               "objects the server put there: check the server")


async def _exists(remote: RemoteStore, path: str) -> bool:
    try:
        await remote.get(path, 0, 1)
    except ObjectNotFound:
        return False
    return True


async def signed_order(remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: str,
                       seq: int) -> Order | None:
    """Order ``seq`` of the device if it carries a valid admin signature, else None."""
    path = layout.order(device, seq)
    try:
        _s, body, _raw = await get_signed(remote, path, _signers(admin), "order",
                                          f"{device}/{seq}")
        return Order.parse(body, device, seq, path)
    except (RemoteIntegrityError, ObjectNotFound):
        return None


async def reports_of(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                     device: str) -> list[Report]:
    """The device's reports, verified with the key of its admin-signed device record."""
    rec = await device_record(remote, admin, device)
    key = crypto.ed25519_public(rec.signing_key)
    out = []
    for path, seq in await _numbered(remote, f"{layout.device_dir(device)}/reports"):
        untrusted = await get_object(remote, path, "report", f"{device}/{seq}")
        _s, body = open_envelope(_signers(key), untrusted, "report", f"{device}/{seq}", path)
        out.append(Report.parse(body, device, seq, path))
    return out


# --- revocation ------------------------------------------------------------------------------

def revocation_path(device: str) -> str:
    return f"{layout.device_dir(device)}/revoked"


@dataclass(frozen=True)
class Revocation:
    """``devices/<id>/revoked`` (admin-signed): no orders, no rekey to it, no SSH access."""

    device: str
    revoked: int
    reason: str

    def to_bytes(self) -> bytes:
        return canonical_json({"version": 1, "device": self.device, "revoked": self.revoked,
                               "reason": self.reason})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> Revocation:
        r = Reader.parse(untrusted_body, "revocation", device, path)
        r.version({1})
        rev = cls(r.const("device", device), r.integer("revoked", lo=0), r.text("reason"))
        r.done()
        return rev


async def revocation(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                     device: str) -> Revocation | None:
    path = revocation_path(device)
    try:
        _s, body, _raw = await get_signed(remote, path, _signers(admin), "revocation", device)
    except ObjectNotFound:
        return None
    return Revocation.parse(body, device, path)


async def revoke(remote: RemoteStore, admin: crypto.Ed25519PrivateKey, device: str,
                 reason: str, now: int) -> tuple[DeviceRecord, Revocation]:
    """Record the revocation (idempotent: an earlier one is kept)."""
    rec = await device_record(remote, admin.public_key(), device)
    old = await revocation(remote, admin.public_key(), device)
    if old is not None:
        return rec, old
    rev = Revocation(device, now, reason)
    await remote.put_atomic(revocation_path(device),
                            signed_envelope(admin, "revocation", device, rev.to_bytes()))
    return rec, rev


async def wipe_report(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                      device: str) -> Report | None:
    """The device's verified report that it executed a wipe order, if there is one."""
    wipes = {o.seq for o in await orders_of(remote, admin, device) if o.action == "wipe"}
    done = [r for r in await reports_of(remote, admin, device)
            if r.order in wipes and r.outcome == "done"]
    return done[-1] if done else None


def order_args(action: str, untrusted_values: list[str], now: int) -> dict[str, Any]:
    """``key=value`` words of ``vmclient-admin order DEVICE ACTION …`` as typed arguments.

    ``lease_until`` also takes ``+<days>d`` (from now); flags take yes/no.
    """
    spec: dict[str, type] | None = ORDER_ACTIONS.get(action)
    if spec is not None:
        spec = {**spec, **{k: bool for k in ORDER_FLAGS.get(action, {})},
                **{k: str for k in ORDER_OPTIONS.get(action, {})}}
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


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))

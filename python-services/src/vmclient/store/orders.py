"""Enrolment records, orders, reports and the trusted clock.

* A **device record** (``devices/<id>/device``, signed by the admin) binds a
  device id to its Ed25519 signing key and X25519 wrapping key.  The device id
  is the key id of its signing key, so it cannot be claimed by another key.
* An **order** (``devices/<id>/orders/<seq>``, signed by the admin) is addressed
  to one device and numbered; the device accepts exactly ``last + 1``.
* A **report** (``devices/<id>/reports/<seq>``, signed by the device) says what
  became of an order (or of a refused attempt).
* The **trusted time** never goes back: the newest of the wall clock, the last
  trusted time recorded locally and every signed ``issued`` time seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .errors import RemoteIntegrityError
from .format import DEVICE_NAME_RE, NAME_RE, Reader, b64, canonical_json, shown

FORMAT_VERSION = 1
DEVICE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# action -> {argument: type}; every argument is required, no others allowed
ORDER_ACTIONS: dict[str, dict[str, type]] = {
    "assign": {"vm": str, "recipe": str},
    "unassign": {"vm": str},
    "renew-lease": {"lease_until": int},
    "lock": {},
    "unlock": {},
    "wipe": {"include_private": bool},
    "rekey": {"vm": str, "from_device": str, "min_seq": int},
    # the admin replaced a pending order in place (``vmclient-admin order DEVICE cancel N``):
    # nothing to do but advance; ``cancelled`` names the action it replaced
    "cancel": {"cancelled": str},
    # install host update bundle ``release`` (repository-format.md, host updates)
    "host-update": {"release": str},
}
# action -> {optional flag: its value when absent}
# (an order without them reads as before: a ``rekey`` order that only installs the key)
ORDER_FLAGS: dict[str, dict[str, bool]] = {"assign": {"start": False},
                                           "rekey": {"restore": False, "start": False},
                                           # an older release than the running one
                                           "host-update": {"downgrade": False}}
# action -> {optional text argument: its pattern} (absent: not in ``args`` at all)
ORDER_OPTIONS: dict[str, dict[str, re.Pattern[str]]] = {}
OUTCOMES = ("done", "failed", "refused")
# a host update's release string (the catalog's host section, a host-update order)
RELEASE_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,3}([-+~][0-9A-Za-z.-]{1,32})?$")
# a maintenance window (host channel, host-update order): HH:MM-HH:MM, the laptop's
# local time, the end excluded
MAINTENANCE_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")
ORDER_OPTIONS["host-update"] = {"maintenance": MAINTENANCE_RE}


def window_problem(text: str) -> str:
    """What is wrong with a maintenance window ``HH:MM-HH:MM`` ("" nothing)."""
    m = MAINTENANCE_RE.fullmatch(text)
    if m is None:
        return ("expected HH:MM-HH:MM (24-hour, the laptop's local time), e.g. 02:00-04:30 "
                "or 22:30-05:00")
    if m.group(1, 2) == m.group(3, 4):
        return "start and end are equal: an empty window"
    return ""


@dataclass(frozen=True)
class DeviceRecord:
    device: str
    name: str
    signing_key: bytes
    wrapping_key: bytes
    enrolled: int

    def to_bytes(self) -> bytes:
        check_device_name(self.name)
        return canonical_json({
            "version": FORMAT_VERSION, "device": self.device, "name": self.name,
            "signing_key": b64(self.signing_key), "wrapping_key": b64(self.wrapping_key),
            "enrolled": self.enrolled})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> DeviceRecord:
        from .crypto import ed25519_public, key_id
        r = Reader.parse(untrusted_body, "device", device, path)
        r.version({FORMAT_VERSION})
        rec = cls(r.const("device", device), r.text("name", pattern=DEVICE_NAME_RE),
                  r.b64("signing_key", size=32),
                  r.b64("wrapping_key", size=32), r.integer("enrolled", lo=0))
        if key_id(ed25519_public(rec.signing_key)) != device:
            r.fail("signing_key", "is not the key the device id names")
        r.done()
        return rec


@dataclass(frozen=True)
class Order:
    device: str
    seq: int
    issued: int
    action: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def object_id(self) -> str:
        return order_id(self.device, self.seq)

    def to_bytes(self) -> bytes:
        return canonical_json({"version": FORMAT_VERSION, "device": self.device,
                               "seq": self.seq, "issued": self.issued, "action": self.action,
                               "args": self.args})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, seq: int, path: str) -> Order:
        r = Reader.parse(untrusted_body, "order", order_id(device, seq), path)
        r.version({FORMAT_VERSION})
        r.const("device", device)
        if r.integer("seq", lo=1) != seq:
            r.fail("seq", f"does not match the object name (seq {seq})")
        issued = r.integer("issued", lo=0)
        action = r.text("action", choices=tuple(ORDER_ACTIONS))
        a = r.table("args")
        args: dict[str, Any] = {}
        for name, kind in ORDER_ACTIONS[action].items():
            if kind is str:
                args[name] = a.text(name, pattern=NAME_RE if name == "vm" else
                                    RELEASE_RE if name == "release" else None)
            elif kind is int:
                args[name] = a.integer(name, lo=0)
            else:
                args[name] = a.flag(name)
        for name, default in ORDER_FLAGS.get(action, {}).items():
            args[name] = a.flag(name) if name in a.names() else default
        for name, pattern in ORDER_OPTIONS.get(action, {}).items():
            if name in a.names():
                args[name] = a.text(name, pattern=pattern)
                if name == "maintenance" and window_problem(args[name]):
                    a.fail(name, window_problem(args[name]))
        a.done()
        r.done()
        return cls(device, seq, issued, action, args)


def check_device_name(name: str) -> str:
    """A device name as given by a person (CLI, code book): refused unless it is plain."""
    if not DEVICE_NAME_RE.fullmatch(name):
        raise UsageError(f"device name {shown(name)!r}: letters, digits and . _ @ + - only "
                         "(at most 64, no spaces), starting with a letter or digit")
    return name


def order_id(device: str, seq: int) -> str:
    return f"{device}/{seq}"


@dataclass(frozen=True)
class Report:
    device: str
    seq: int
    time: int
    order: int  # the order's seq, 0 for a report not about an accepted order
    outcome: str
    detail: str

    def to_bytes(self) -> bytes:
        return canonical_json({"version": FORMAT_VERSION, **vars(self)})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, seq: int, path: str) -> Report:
        r = Reader.parse(untrusted_body, "report", order_id(device, seq), path)
        r.version({FORMAT_VERSION})
        rep = cls(r.const("device", device), r.integer("seq", lo=1), r.integer("time", lo=0),
                  r.integer("order", lo=0), r.text("outcome", choices=OUTCOMES), r.text("detail"))
        if rep.seq != seq:
            r.fail("seq", f"does not match the object name (seq {seq})")
        r.done()
        return rep


@dataclass(frozen=True)
class OrderState:
    """What a device remembers (root-only, locally): the last order it executed."""

    device: str
    last_seq: int = 0
    trusted_time: int = 0

    def check(self, order: Order, path: str) -> None:
        """Refuse a misaddressed, replayed or out-of-sequence order."""
        if order.device != self.device:
            raise RemoteIntegrityError("order", order.object_id, path,
                                       f"addressed to device {order.device}, not {self.device}")
        if order.seq <= self.last_seq:
            raise RemoteIntegrityError("order", order.object_id, path,
                                       f"seq {order.seq} already executed (replayed)")
        if order.seq != self.last_seq + 1:
            raise RemoteIntegrityError(
                "order", order.object_id, path,
                f"seq {order.seq} out of sequence (expected {self.last_seq + 1})")

    def executed(self, order: Order) -> OrderState:
        return OrderState(self.device, order.seq, max(self.trusted_time, order.issued))


def trusted_now(wall_clock: int, last_trusted: int, signed_times: tuple[int, ...] = ()) -> int:
    """The time leases are judged by: setting the clock back never extends a lease."""
    return max(wall_clock, last_trusted, *signed_times)


def lease_remaining(lease_until: int, now_trusted: int) -> int:
    """Seconds left on a lease (0 = expired: business VMs are saved, stopped, locked)."""
    return max(0, lease_until - now_trusted)

"""The lease: what the laptop remembers about its management (root-only), and the time rules.

``<manage>/state.json`` (0600, replaced atomically; the manage agent is its
only writer) holds the order sequence, the
trusted time, the lease, the lock and wipe flags, the reports not yet
uploaded and the digests of refused objects already reported.

Trusted time (repository-format.md §9): the newest of the wall clock, every
signed time seen (order ``issued``, the device record's ``enrolled``) and the
device's own record.  The record is ``(time, boot id, CLOCK_BOOTTIME)``:
within one boot the time since the record is taken from ``CLOCK_BOOTTIME``,
which ``date -s`` does not move and which, unlike ``CLOCK_MONOTONIC``, also
runs while the laptop is suspended, so setting the clock back does not even
stop the lease from running down, awake or asleep; across reboots the
persisted time is a floor.  :func:`advance` is pure; the clocks are injected
(:func:`boottime` by default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import EXIT_UNAVAILABLE, ConfigError
from ..store.errors import StoreError
from ..store.layout import account_name
from ..store.orders import trusted_now
from .files import write_private

DAY = 86400
DEFAULT_LEASE_DAYS = 14
STATE_FILE = "state.json"
WIPE_JOURNAL = "wipe.json"  # manage/wipe.py's journal: present while a wipe runs


@dataclass(frozen=True)
class TimeRecord:
    time: int = 0  # the trusted time when recorded
    boot: str = ""  # kernel boot id at that moment
    mono: float = 0.0  # CLOCK_BOOTTIME at that moment (the name predates the clock)


def advance(rec: TimeRecord, wall: int, mono: float, boot: str,
            signed: tuple[int, ...] = ()) -> TimeRecord:
    """The new trusted-time record: never earlier than ``rec`` (pure)."""
    floor = rec.time
    if boot == rec.boot and mono >= rec.mono:
        floor = rec.time + int(mono - rec.mono)
    return TimeRecord(trusted_now(wall, floor, signed), boot, mono)


@dataclass(frozen=True)
class Lease:
    until: int
    now: int
    locked: bool
    wiped: bool

    @property
    def remaining(self) -> int:
        return max(0, self.until - self.now)

    @property
    def business_allowed(self) -> bool:
        return self.remaining > 0 and not self.locked and not self.wiped

    @property
    def reason(self) -> str:
        if self.wiped:
            return "this laptop was wiped by IT: re-enrol it"
        if self.locked:
            return "IT locked business work on this laptop"
        if not self.remaining:
            return "the lease has expired: connect to the datacenter to renew it"
        return f"lease valid for {self.remaining // 3600} h {self.remaining % 3600 // 60} min"


@dataclass(frozen=True)
class DeviceState:
    device: str = ""
    enrolled: bool = False
    last_seq: int = 0
    clock: TimeRecord = TimeRecord()
    lease_until: int = 0
    locked: bool = False
    wiped: bool = False
    report_seq: int = 0
    outbox: tuple[dict[str, Any], ...] = ()  # reports signed later, written when online
    reported: tuple[str, ...] = ()  # digests of refused objects already reported
    executed: dict[str, str] = field(default_factory=dict)  # seq -> digest of executed orders
    requested: int = 0  # the pending enrolment request's time (the request names it)
    refused: str = ""  # IT's reason for refusing the last request (until the next one)

    def lease(self, *, wipe_pending: bool = False) -> Lease:
        """The lease as of the recorded trusted time (none before enrolment completed).

        ``wipe_pending``: a wipe journal exists, so the laptop counts as wiped.
        """
        return Lease(self.lease_until if self.enrolled else 0, self.clock.time, self.locked,
                     self.wiped or wipe_pending)

    def to_json(self) -> bytes:
        doc = asdict(self)
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> DeviceState:
        try:
            doc = json.loads(raw)
            doc["clock"] = TimeRecord(**doc["clock"])
            doc["outbox"] = tuple(doc["outbox"])
            doc["reported"] = tuple(doc["reported"])
            return cls(**doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(path, "", f"unreadable management state: {exc}") from exc


def boottime() -> float:
    """Seconds since boot, suspend included: the lease runs down while the laptop sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """The kernel's id of this boot (trusted time within one boot runs on CLOCK_BOOTTIME)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


class StateFile:
    """``state.json``: read at start, replaced atomically (fsync) on every change."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE

    def load(self) -> DeviceState:
        try:
            return DeviceState.from_json(self.path.read_bytes(), self.path)
        except FileNotFoundError:
            return DeviceState()

    def save(self, state: DeviceState) -> DeviceState:
        write_private(self.path, state.to_json())
        return state

    def update(self, **changes: Any) -> DeviceState:
        return self.save(replace(self.load(), **changes))


def read_lease(manage_dir: Path, *, wall: Callable[[], float] = time.time,
               mono: Callable[[], float] = boottime,
               boot: Callable[[], str] = boot_id) -> Lease:
    """The lease by trusted time, read-only: the trusted time is advanced in memory
    from the persisted record, never written back (the manage agent is the only
    writer of ``state.json``; a second writer could lose a renewal it had just
    recorded)."""
    s = StateFile(manage_dir).load()
    s = replace(s, clock=advance(s.clock, int(wall()), mono(), boot()))
    return s.lease(wipe_pending=(manage_dir / WIPE_JOURNAL).exists())


class NotEnrolled(StoreError):
    """not enrolled yet, so no account of its own on {}: run vmclientctl enrol …"""

    exit_code = EXIT_UNAVAILABLE


def device_account(state_dir: Path, server: str = "the datacenter") -> Callable[[], str]:
    """The laptop's own SFTP account (``vmc-<device id>``, :func:`layout.account_name`), read
    from the management state at each call: the device id is made by ``vmclientctl enrol``
    (or syncd's ``Enrol``) after the daemons started.  :class:`NotEnrolled` before that."""
    state = StateFile(state_dir)

    def account() -> str:
        device = state.load().device
        if not device:
            raise NotEnrolled(server)
        return account_name(device)
    return account

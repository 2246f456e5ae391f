"""Uses of the data partition's recovery key, reported to IT in the heartbeat
(repository-format.md, "Status"; meta-vmclient/PLAN-encryption.md §3, §5).

When the TPM2 does not unlock the laptop's data partition, a person types the recovery
key at the console (meta-vmclient's ``vmclient-data-recovery``), and
``vmclient-recovery-key-used.service`` appends one line per use to
``/var/lib/vmclient/recovery-key-used`` on the partition::

    2026-12-07T04:12:33Z recovery key used: keyslot 1; sealed to this TPM2 again: yes

The agent's status carries the newest :data:`MAX_SENT` of them as
``recovery_key_used``: when, which LUKS2 keyslot opened the partition (IT compares it
with the escrowed key's ``keyslot``), whether the volume key was sealed to the TPM2
again.  A line that cannot be read still counts as a use (``time`` 0, ``keyslot`` -1):
the record is a security signal, and a garbled line must not hide one.

Pure core: :func:`parse_record`, :class:`KeyUse`.  Adapter: :func:`read_record`.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.format import Reader

log = logging.getLogger(__name__)

RECORD = Path("/var/lib/vmclient/recovery-key-used")  # meta-vmclient's VMCLIENT_DATA_DIR
MAX_SENT = 16  # the newest uses the heartbeat carries
MAX_READ = 64 * 1024  # the record's tail that is read (one line is ~80 bytes)
# what vmclient-data-recovery writes; older images wrote no keyslot
_LINE_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) recovery key used"
                      r"(?:: keyslot (\d{1,2}|unknown))?; sealed to this TPM2 again: (yes|no)")
MAX_KEYSLOT = 31  # LUKS2 has 32 keyslots


@dataclass(frozen=True)
class KeyUse:
    time: int  # UTC seconds; 0: the line did not say (unreadable)
    keyslot: int  # the LUKS2 keyslot that opened the partition; -1: not named
    resealed: bool  # the volume key was sealed to the TPM2 again

    def to_json(self) -> dict[str, Any]:
        return {"keyslot": self.keyslot, "resealed": self.resealed, "time": self.time}

    @classmethod
    def read(cls, r: Reader) -> KeyUse:
        use = cls(r.integer("time", lo=0), r.integer("keyslot", lo=-1, hi=MAX_KEYSLOT),
                  r.flag("resealed"))
        r.done()
        return use

    def describe(self) -> str:
        """One phrase for IT: when, which keyslot, sealed again or not."""
        when = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.time)) if self.time
                else "at an unknown time")
        slot = f"keyslot {self.keyslot}" if self.keyslot >= 0 else "keyslot unknown"
        sealed = "sealed to the TPM again" if self.resealed else "NOT sealed to the TPM again"
        return f"{when} ({slot}, {sealed})"


UNREADABLE = KeyUse(0, -1, False)


def parse_line(untrusted_line: str) -> KeyUse:
    """One line of the record; :data:`UNREADABLE` for one it cannot read."""
    m = _LINE_RE.fullmatch(untrusted_line.strip())
    if m is None:
        return UNREADABLE
    try:
        t = calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:  # 2026-13-45T…: the shape, not a date
        return UNREADABLE
    slot = int(m[2]) if m[2] and m[2] != "unknown" else -1
    if slot > MAX_KEYSLOT:
        slot = -1
    return KeyUse(t, slot, m[3] == "yes")


def parse_record(untrusted_text: str) -> list[KeyUse]:
    """Every use the record notes, oldest first (blank lines are none)."""
    return [parse_line(line) for line in untrusted_text.splitlines() if line.strip()]


def newest(uses: list[KeyUse]) -> tuple[KeyUse, ...]:
    """What the heartbeat carries: the newest :data:`MAX_SENT`, oldest first."""
    return tuple(uses[-MAX_SENT:])


def read_record(path: Path = RECORD) -> list[KeyUse]:
    """The record's uses; none if there is no record (the key was never used).  Only its
    last :data:`MAX_READ` bytes are read (hundreds of uses, more than are sent)."""
    try:
        with path.open("rb") as f:
            start = max(0, f.seek(0, 2) - MAX_READ)
            f.seek(start)
            raw = f.read(MAX_READ)
    except FileNotFoundError:
        return []
    except OSError as exc:  # unreadable: a use may be hidden, so say so
        log.warning("recovery key uses: cannot read %s: %s", path, exc)
        return [UNREADABLE]
    if start:  # the first line read is the end of an older one
        raw = raw.partition(b"\n")[2]
    uses = parse_record(raw.decode("utf-8", errors="replace"))
    bad = uses.count(UNREADABLE)
    if bad:
        log.warning("recovery key uses: %d line(s) of %s not understood; reported as uses "
                    "at an unknown time", bad, path)
    return uses

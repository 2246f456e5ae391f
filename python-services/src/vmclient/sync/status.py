"""The Sync interface's enums (docs/dbus-api.md): pure, for vmclient-syncd and its clients.

Each is ``u`` on the bus, 0 = unknown (a value a client does not know yet reads as
unknown); :attr:`label` is the word the CLI shows.
"""

from __future__ import annotations

import enum
from typing import Any


class SyncState(enum.IntEnum):
    """A VM's sync (``VMs`` … ``State``) and the daemon's (``State``)."""

    UNKNOWN = 0
    IDLE = 1
    RUNNING = 2  # syncing now
    PAUSED = 3  # stopped at a safe point for sleep; it continues after the resume
    WAITING = 4  # held back (battery, metered link, offline...): ``Reason`` says why

    @property
    def label(self) -> str:
        return self.name.lower()


class SyncOutcome(enum.IntEnum):
    """How ``SyncNow`` ended for one VM: its row's ``outcome``."""

    UNKNOWN = 0
    SYNCED = 1  # detail: the snapshot
    SKIPPED = 2  # detail: why
    FAILED = 3  # detail: the error

    @property
    def label(self) -> str:
        return self.name.lower()


# The daemon's State: the first of these some VM is in, else idle.
_PRECEDENCE = (SyncState.RUNNING, SyncState.PAUSED, SyncState.WAITING)


def daemon_state(states: set[SyncState]) -> SyncState:
    """The daemon's ``State`` from its VMs' states."""
    for st in _PRECEDENCE:
        if st in states:
            return st
    return SyncState.IDLE


def label_of(enum_cls: type[SyncState] | type[SyncOutcome], untrusted_value: Any) -> str:
    """The word for a value read from the bus ("unknown" for one not known here)."""
    try:
        return enum_cls(int(untrusted_value)).name.lower()
    except (TypeError, ValueError):
        return "unknown"

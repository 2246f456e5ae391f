"""The power policy: a pure table from (state, event) to actions.

No I/O here.  The adapters (logind, udev/evdev, libvirt) turn what happens into
:class:`Event` values; :func:`decide` answers with the :class:`Action` list the
daemon carries out, in order.  The table :data:`TABLE` is meant to be read:

================  =====================================  ==============================
event             condition                              actions
================  =====================================  ==============================
SLEEP             (always)                               pause, release sleep lock
WOKE              paused for sleep or the lid            take sleep lock, resume, clocks
WOKE              otherwise (paused by PauseAll)         take sleep lock
LID_CLOSED        we own the lid, lid action "suspend"   pause, suspend host
LID_CLOSED        we own the lid, lid action "pause"     pause
LID_CLOSED        lid action "ignore" / not owned        (nothing: logind decides)
LID_OPENED        VMs paused for the lid, host awake     resume, clocks
BATTERY_CRITICAL  on battery                             save
AC_ONLINE         VMs saved for a critical battery       restore
SHUTDOWN          (always)                               save
STARTED           VMs saved at shutdown/critical         restore (if configured)
PAUSE_REQUESTED   (always)                               pause
RESUME_REQUESTED  (always)                               resume, clocks
================  =====================================  ==============================

"pause" applies each VM's own policy (pause, s3, save, ignore); "resume"
touches only VMs this daemon paused (and restores those its ``save`` policy
saved, through the key gate); "save" is a managed save of every running
VM whatever its sleep policy (except ``ignore``), so no VM state is lost.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace


class LidState(enum.IntEnum):
    UNKNOWN = 0
    ABSENT = 1
    OPEN = 2
    CLOSED = 3


class PowerSource(enum.IntEnum):
    UNKNOWN = 0
    AC = 1
    BATTERY = 2


class LidAction(enum.IntEnum):
    UNKNOWN = 0
    IGNORE = 1
    PAUSE = 2
    SUSPEND = 3


class Phase(enum.IntEnum):
    """What the daemon is doing with the VMs (the D-Bus ``State`` property)."""

    UNKNOWN = 0
    RUNNING = 1
    PAUSING = 2
    PAUSED = 3
    RESUMING = 4
    SAVING = 5


class VMPolicy(enum.StrEnum):
    """What a VM gets when the host sleeps (domain metadata or config)."""

    PAUSE = "pause"  # virDomainSuspend: instant, RAM stays allocated
    S3 = "s3"  # guest suspend-to-RAM through the guest agent; falls back to pause
    SAVE = "save"  # managed save: RAM to disk, VM stopped; started again on resume
    IGNORE = "ignore"  # left alone


class Event(enum.Enum):
    SLEEP = "sleep"  # logind PrepareForSleep(true)
    WOKE = "woke"  # logind PrepareForSleep(false)
    LID_CLOSED = "lid-closed"
    LID_OPENED = "lid-opened"
    AC_ONLINE = "ac-online"
    AC_OFFLINE = "ac-offline"
    BATTERY_CRITICAL = "battery-critical"
    DOCKED = "docked"
    UNDOCKED = "undocked"
    SHUTDOWN = "shutdown"
    STARTED = "started"
    PAUSE_REQUESTED = "pause-requested"
    RESUME_REQUESTED = "resume-requested"


class Action(enum.Enum):
    PAUSE_VMS = "pause-vms"
    RESUME_VMS = "resume-vms"
    SYNC_CLOCKS = "sync-clocks"
    SAVE_VMS = "save-vms"
    RESTORE_VMS = "restore-vms"
    SUSPEND_HOST = "suspend-host"
    TAKE_SLEEP_LOCK = "take-sleep-lock"
    RELEASE_SLEEP_LOCK = "release-sleep-lock"


class Cause(enum.Enum):
    """Why VMs are paused or saved; decides what may undo it."""

    NONE = "none"
    SLEEP = "sleep"
    LID = "lid"
    USER = "user"
    BATTERY = "battery"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class LidPolicy:
    """What closing the lid does, per situation (like XenClient's lid settings)."""

    own_lid: bool = True
    on_ac: LidAction = LidAction.SUSPEND
    on_battery: LidAction = LidAction.SUSPEND
    docked: LidAction = LidAction.IGNORE


@dataclass(frozen=True)
class State:
    lid: LidState = LidState.UNKNOWN
    source: PowerSource = PowerSource.UNKNOWN
    battery_present: bool = False
    battery_percent: float = 0.0
    docked: bool = False
    paused_for: Cause = Cause.NONE  # why the VMs we hold are paused
    saved_for: Cause = Cause.NONE  # why the VMs we hold are saved
    lid_policy: LidPolicy = LidPolicy()
    restore_on_start: bool = True
    restore_on_ac: bool = True

    def lid_action(self) -> LidAction:
        if not self.lid_policy.own_lid or self.lid == LidState.ABSENT:
            return LidAction.IGNORE
        if self.docked:
            return self.lid_policy.docked
        if self.source == PowerSource.BATTERY:
            return self.lid_policy.on_battery
        return self.lid_policy.on_ac


Rule = tuple[Event, Callable[[State], bool], tuple[Action, ...], Callable[[State], State]]


def _always(_: State) -> bool:
    return True


def _keep(s: State) -> State:
    return s


def _paused(cause: Cause) -> Callable[[State], State]:
    return lambda s: replace(s, paused_for=cause if s.paused_for == Cause.NONE else s.paused_for)


def _saved(cause: Cause) -> Callable[[State], State]:
    return lambda s: replace(s, saved_for=cause)


def _resumed(s: State) -> State:
    return replace(s, paused_for=Cause.NONE)


def _restored(s: State) -> State:
    return replace(s, saved_for=Cause.NONE)


P, R, C = Action.PAUSE_VMS, Action.RESUME_VMS, Action.SYNC_CLOCKS

# First matching rule wins.  (event, condition, actions, next state)
TABLE: tuple[Rule, ...] = (
    (Event.SLEEP, _always, (P, Action.RELEASE_SLEEP_LOCK), _paused(Cause.SLEEP)),
    (Event.WOKE, lambda s: s.paused_for in (Cause.SLEEP, Cause.LID),
     (Action.TAKE_SLEEP_LOCK, R, C), _resumed),
    (Event.WOKE, _always, (Action.TAKE_SLEEP_LOCK,), _keep),
    (Event.LID_CLOSED, lambda s: s.lid_action() == LidAction.SUSPEND,
     (P, Action.SUSPEND_HOST), _paused(Cause.LID)),
    (Event.LID_CLOSED, lambda s: s.lid_action() == LidAction.PAUSE, (P,), _paused(Cause.LID)),
    (Event.LID_OPENED, lambda s: s.paused_for == Cause.LID, (R, C), _resumed),
    (Event.BATTERY_CRITICAL, lambda s: s.source == PowerSource.BATTERY,
     (Action.SAVE_VMS,), _saved(Cause.BATTERY)),
    (Event.AC_ONLINE, lambda s: s.saved_for == Cause.BATTERY and s.restore_on_ac,
     (Action.RESTORE_VMS,), _restored),
    (Event.SHUTDOWN, _always, (Action.SAVE_VMS,), _saved(Cause.SHUTDOWN)),
    (Event.STARTED, lambda s: s.saved_for != Cause.NONE and s.restore_on_start,
     (Action.RESTORE_VMS,), _restored),
    (Event.PAUSE_REQUESTED, _always, (P,), _paused(Cause.USER)),
    (Event.RESUME_REQUESTED, _always, (R, C), _resumed),
)


def decide(state: State, event: Event) -> tuple[State, list[Action]]:
    """The new state and the actions for ``event``; unknown combinations do nothing."""
    for ev, cond, actions, nxt in TABLE:
        if ev == event and cond(state):
            return nxt(state), list(actions)
    return state, []


def lid_action_from_name(name: str) -> LidAction:
    return {"ignore": LidAction.IGNORE, "pause": LidAction.PAUSE,
            "suspend": LidAction.SUSPEND}[name]

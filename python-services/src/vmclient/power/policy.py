"""The power policy: pure tables from (state, event, what is held) to actions, and what
each VM is held for.

No I/O here.  The adapters (logind, udev/evdev, libvirt) turn what happens into
:class:`Event` values; :func:`decide` reads them with the host's :class:`State`
and the :data:`Holds` table (the one record of what is held, and why) and
answers with the :class:`Action` list the daemon carries out, in order, and the
causes the event adds or ends.  The table :data:`TABLE` is meant to be read:

================  =====================================  ================================
event             condition                              actions (cause added / ended)
================  =====================================  ================================
SLEEP             (always)                               pause, release sleep lock (+sleep)
WOKE              (always)                               take sleep lock, resume, clocks
                                                         (-sleep; -lid unless it is closed)
LID_CLOSED        lid closed, we own it, action suspend  pause, suspend host (+lid)
LID_CLOSED        lid closed, we own it, action pause    pause (+lid)
LID_CLOSED        otherwise (reopened, ignore, not ours) (nothing: logind decides)
LID_OPENED        some VM held for the lid               resume, clocks (-lid)
BATTERY_CRITICAL  on battery                             save (+battery)
AC_ONLINE         some VM saved for the battery (or one  restore (-battery)
                  whose restore was refused),
                  restore_on_ac
SHUTDOWN          (always)                               save (+shutdown)
STARTED           (always)                               resume, clocks (-sleep; -lid unless
                                                         closed; -shutdown -battery if
                                                         restore_on_start)
RECONNECTED       a VM whose undo failed is left         resume, clocks (nothing ended)
PAUSE_REQUESTED   (always)                               pause (+user)
RESUME_REQUESTED  (always)                               resume, clocks (-user -sleep -lid)
================  =====================================  ================================

Each VM this daemon paused or saved is *held* (:class:`Hold`) for a set of
causes: a pause adds its cause to every VM it pauses and to every VM already
held; an event that ends a cause takes it off every VM; "resume"/"restore"
undo every VM left with no cause (resume a pause, wake a guest S3, start a
managed save), so a VM paused by ``PauseAll`` stays paused when the lid that
paused another one opens.  A VM whose undo fails keeps no cause and is undone
again on the next resume, at start and when libvirtd is back.

"pause" applies each VM's own policy (pause, s3, save, ignore); "save" is a
managed save of every running VM whatever its sleep policy (except
``ignore``), so no VM state is lost.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
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


class HoldAction(enum.IntEnum):
    """What this daemon did to a VM it holds; the D-Bus ``PausedByUs`` enum (0 = unknown)."""

    UNKNOWN = 0
    PAUSE = 1  # paused (virDomainSuspend)
    S3 = 2  # suspended to RAM by the guest
    SAVE = 3  # managed save

    @property
    def label(self) -> str:
        """The word for it (the state file's, and the :class:`VMPolicy` value)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> HoldAction:
        """The action named ``label``; ValueError if none (or ``unknown``)."""
        try:
            action = cls[label.upper()]
        except KeyError:
            action = cls.UNKNOWN
        if action == cls.UNKNOWN:
            raise ValueError(f"unknown action {label!r}")
        return action

    @classmethod
    def of(cls, policy: VMPolicy) -> HoldAction:
        """The action a VM of ``policy`` is held by (``ignore``: none, ValueError)."""
        return cls.from_label(policy.value)


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
    RECONNECTED = "reconnected"  # libvirtd answers again
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


class Cause(enum.IntEnum):
    """Why a VM is held paused or saved; the D-Bus ``HeldFor`` enum (0 = unknown)."""

    UNKNOWN = 0
    SLEEP = 1
    LID = 2
    USER = 3  # PauseAll, PauseVM
    BATTERY = 4
    SHUTDOWN = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Cause:
        """The cause named ``label`` (as the state file writes it); ValueError if none."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown cause {label!r}") from None


Causes = frozenset[Cause]
NO_CAUSE: Causes = frozenset()


@dataclass(frozen=True)
class Hold:
    """One VM this daemon paused (``pause``/``s3``) or saved (``save``), and why.

    ``causes`` empty: every cause has ended and the VM is to be undone (its last
    undo failed, or has not run yet).  ``paused`` (a ``save`` only): the VM was
    held paused when it was saved, so it comes back paused and is resumed after
    its start.
    """

    name: str
    action: HoldAction
    causes: Causes
    paused: bool = False

    @property
    def due(self) -> bool:
        return not self.causes


Holds = Mapping[str, Hold]  # by domain UUID


def held(holds: Holds, uuid: str, name: str, action: HoldAction, cause: Cause,
         paused: bool = False) -> dict[str, Hold]:
    """``holds`` with ``uuid`` held by ``action`` for ``cause`` (and what it was held for)."""
    out = dict(holds)
    before = out.get(uuid)
    out[uuid] = Hold(name, action, (before.causes if before else NO_CAUSE) | {cause}, paused)
    return out


def add_cause(holds: Holds, cause: Cause, only: str | None = None) -> dict[str, Hold]:
    """Every VM already held (or only the one named ``only``) is held for ``cause`` too
    (PauseAll over a lid pause: the lid opening alone no longer resumes it)."""
    return {u: replace(h, causes=h.causes | {cause}) if only in (None, h.name) else h
            for u, h in holds.items()}


def release(holds: Holds, ended: Iterable[Cause], only: str | None = None) -> dict[str, Hold]:
    """``holds`` with the ``ended`` causes taken off every VM (or only the one named
    ``only``: PauseVM/ResumeVM)."""
    gone = frozenset(ended)
    return {u: replace(h, causes=h.causes - gone) if only in (None, h.name) else h
            for u, h in holds.items()}


def due(holds: Holds) -> list[str]:
    """The VMs to undo: held for no cause any more."""
    return [u for u, h in holds.items() if h.due]


def causes_of(holds: Holds, saved: bool) -> Causes:
    """Every cause the paused (``saved`` False) or saved VMs are held for."""
    out: set[Cause] = set()
    for h in holds.values():
        if (h.action == HoldAction.SAVE) == saved:
            out |= h.causes
    return frozenset(out)


def held_for(holds: Holds) -> Causes:
    """Every cause of every VM held."""
    return causes_of(holds, saved=False) | causes_of(holds, saved=True)


def undo_pending(holds: Holds) -> bool:
    """Some VM held for no cause any more (its undo failed, or has not run yet)."""
    return any(h.due for h in holds.values())


@dataclass(frozen=True)
class LidPolicy:
    """What closing the lid does, per situation (like XenClient's lid settings)."""

    own_lid: bool = True
    on_ac: LidAction = LidAction.SUSPEND
    on_battery: LidAction = LidAction.SUSPEND
    docked: LidAction = LidAction.IGNORE


@dataclass(frozen=True)
class State:
    """What the host's sensors say, and the configuration.  What the VMs are held for
    is not here: the :data:`Holds` table is its one copy (:func:`decide` reads it)."""

    lid: LidState = LidState.UNKNOWN
    source: PowerSource = PowerSource.UNKNOWN
    battery_present: bool = False
    battery_percent: float = 0.0
    docked: bool = False
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


def suspend_wanted(s: State) -> bool:
    """Still suspend the host for a lid closed?  Asked again, with the lid read again, just
    before the call: a lid reopened meanwhile (a bounce) keeps the laptop awake."""
    return s.lid == LidState.CLOSED and s.lid_action() == LidAction.SUSPEND


def _lid_unless_closed(s: State) -> Causes:
    return NO_CAUSE if s.lid == LidState.CLOSED else frozenset({Cause.LID})


def _ends_at_start(s: State) -> Causes:
    saved = frozenset({Cause.SHUTDOWN, Cause.BATTERY}) if s.restore_on_start else NO_CAUSE
    return frozenset({Cause.SLEEP}) | _lid_unless_closed(s) | saved


Ends = Callable[[State], Causes]
When = Callable[[State, Holds], bool]


def _const(*causes: Cause) -> Ends:
    return lambda _s: frozenset(causes)


def _nothing(_s: State) -> Causes:
    return NO_CAUSE


@dataclass(frozen=True)
class Rule:
    event: Event
    when: When
    actions: tuple[Action, ...]
    adds: Cause | None = None
    ends: Ends = _nothing


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    adds: Cause | None = None  # the cause of this event's pause or save
    ends: Causes = NO_CAUSE  # the causes this event ends (then undo what has none left)


def _always(_s: State, _h: Holds) -> bool:
    return True


def _ends_any(ends: Ends) -> When:
    """Some VM is held for a cause ``ends`` ends, or for none any more."""
    return lambda s, h: bool(held_for(h) & ends(s)) or undo_pending(h)


def _lid(action: LidAction) -> When:
    return lambda s, _h: s.lid == LidState.CLOSED and s.lid_action() == action


def _woke(s: State) -> Causes:
    return frozenset({Cause.SLEEP}) | _lid_unless_closed(s)


P, R, C = Action.PAUSE_VMS, Action.RESUME_VMS, Action.SYNC_CLOCKS
_USER_ENDS = _const(Cause.USER, Cause.SLEEP, Cause.LID)

# First matching rule wins.
TABLE: tuple[Rule, ...] = (
    Rule(Event.SLEEP, _always, (P, Action.RELEASE_SLEEP_LOCK), adds=Cause.SLEEP),
    Rule(Event.WOKE, _ends_any(_woke), (Action.TAKE_SLEEP_LOCK, R, C), ends=_woke),
    Rule(Event.WOKE, _always, (Action.TAKE_SLEEP_LOCK,)),
    Rule(Event.LID_CLOSED, _lid(LidAction.SUSPEND), (P, Action.SUSPEND_HOST), adds=Cause.LID),
    Rule(Event.LID_CLOSED, _lid(LidAction.PAUSE), (P,), adds=Cause.LID),
    Rule(Event.LID_OPENED, _ends_any(_const(Cause.LID)), (R, C), ends=_const(Cause.LID)),
    Rule(Event.BATTERY_CRITICAL, lambda s, _h: s.source == PowerSource.BATTERY,
         (Action.SAVE_VMS,), adds=Cause.BATTERY),
    Rule(Event.AC_ONLINE, lambda s, h: (Cause.BATTERY in causes_of(h, saved=True)
                                        or undo_pending(h)) and s.restore_on_ac,
         (Action.RESTORE_VMS,), ends=_const(Cause.BATTERY)),
    Rule(Event.SHUTDOWN, _always, (Action.SAVE_VMS,), adds=Cause.SHUTDOWN),
    Rule(Event.STARTED, _ends_any(_ends_at_start), (R, C), ends=_ends_at_start),
    Rule(Event.RECONNECTED, lambda _s, h: undo_pending(h), (R, C)),
    Rule(Event.PAUSE_REQUESTED, _always, (P,), adds=Cause.USER),
    Rule(Event.RESUME_REQUESTED, _always, (R, C), ends=_USER_ENDS),
)


def decide(state: State, event: Event, holds: Holds) -> Decision:
    """What to do for ``event``, the host in ``state`` and the VMs held as ``holds`` say;
    unknown combinations do nothing."""
    for rule in TABLE:
        if rule.event == event and rule.when(state, holds):
            return Decision(list(rule.actions), rule.adds, rule.ends(state))
    return Decision([])


def lid_action_from_name(name: str) -> LidAction:
    return {"ignore": LidAction.IGNORE, "pause": LidAction.PAUSE,
            "suspend": LidAction.SUSPEND}[name]

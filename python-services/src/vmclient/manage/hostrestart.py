"""When does a laptop with an installed host update restart by itself?  A pure function.

IT sets a *maintenance window* in the catalog's host channel (repository-format.md §8.9):
``HH:MM-HH:MM``, the laptop's local wall-clock time, the end excluded; a window whose
end is before its start crosses midnight (``22:30-05:00``).  No window: the laptop never
restarts by itself, the status bar asks the user.  Times are naive local wall-clock
datetimes and days are added on the calendar (``date + 1 day`` at ``HH:MM``), so a DST
change never moves the window.

The restart itself is logind's ``Reboot`` (:mod:`vmclient.sync.hosting`): systemd stops
vmclient-powerd, which saves every running VM as on any shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from ..errors import UsageError, VMClientError
from ..store.hostformat import window_problem

NOW, LATER, NEVER = "now", "later", "never"
WAIT_AC, WAIT_IDLE = "AC power", "idle"  # RestartPlan.waiting (the Sync HostRestartWaiting)
MAX_POSTPONE_S = 7 * 86400  # the longest a user may put the restart off at once


class BadWindow(VMClientError):
    """Maintenance window {!r}: {}"""


@dataclass(frozen=True)
class Window:
    start: time
    end: time

    @classmethod
    def parse(cls, untrusted_text: str) -> Window:
        problem = window_problem(untrusted_text)
        if problem:
            raise BadWindow(untrusted_text, problem)
        a, b = untrusted_text.split("-")
        return cls(time.fromisoformat(a), time.fromisoformat(b))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def current(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence (start, end) that contains ``now``, or None."""
        t, day = now.time().replace(second=0, microsecond=0), now.date()
        if self.start < self.end:
            if self.start <= t < self.end:
                return _at(day, self.start), _at(day, self.end)
            return None
        if t >= self.start:  # before midnight
            return _at(day, self.start), _at(day + timedelta(days=1), self.end)
        if t < self.end:  # after midnight: it began yesterday
            return _at(day - timedelta(days=1), self.start), _at(day, self.end)
        return None

    def next_start(self, after: datetime) -> datetime:
        """The first start of the window later than ``after``."""
        start = _at(after.date(), self.start)
        return start if start > after else _at(after.date() + timedelta(days=1), self.start)

    def opening(self, at: datetime) -> tuple[datetime, datetime]:
        """The occurrence containing ``at``, else the next one."""
        cur = self.current(at)
        if cur is not None:
            return cur
        start = self.next_start(at)
        return start, self.current(start)[1]  # type: ignore[index]  # it contains its start


def _at(day: object, t: time) -> datetime:
    return datetime.combine(day, t)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RestartPlan:
    action: str  # now | later | never
    at: datetime | None = None  # later: the earliest time it may happen (start of a window)
    until: datetime | None = None  # the end of that window
    reason: str = ""
    waiting: str = ""  # later, inside the window: what it waits for ("AC power", "idle")


def plan(now: datetime, window: Window | None, *, pending: bool, user_active: bool,
         on_ac: bool, postponed_until: datetime | None = None) -> RestartPlan:
    """Restart now, at the next chance (the window's occurrence it falls in), or never.

    ``pending``: an update is installed into the other slot and waits for a restart.
    ``user_active``: someone uses the laptop (logind's ``IdleHint`` false): not now.
    ``on_ac``: on battery the laptop waits (a restart then managed saves drain it).
    ``postponed_until``: the user asked not before this time.
    """
    if not pending:
        return RestartPlan(NEVER, reason="no host update waits for a restart")
    if window is None:
        return RestartPlan(NEVER, reason="IT set no maintenance window: the user restarts")
    earliest = now if postponed_until is None or postponed_until <= now else postponed_until
    start, end = window.opening(earliest)
    if start <= now < end and earliest == now:
        if not on_ac:
            return RestartPlan(LATER, start, end, "in the maintenance window, on battery: "
                               "waiting for AC", WAIT_AC)
        if user_active:
            return RestartPlan(LATER, start, end, "in the maintenance window, the laptop "
                               "is in use: waiting until it is idle", WAIT_IDLE)
        return RestartPlan(NOW, start, end, f"in the maintenance window {window}")
    why = "postponed by the user" if earliest != now else "outside the maintenance window"
    return RestartPlan(LATER, max(start, earliest), end, f"{why}: at {window}")


def postponed(now: datetime, window: Window, seconds: int,
              already: datetime | None = None) -> datetime:
    """Until when a user's "later" puts the restart off: ``seconds`` from now, or with 0
    past the window's occurrence the restart is planned in (the one ``now`` is in or
    that opens next; after an earlier postponement ``already``, the one after it): each
    "later" skips one more night.  Never more than :data:`MAX_POSTPONE_S` from now."""
    if seconds:
        until = now + timedelta(seconds=seconds)
    else:
        until = window.opening(already if already is not None and already > now else now)[1]
    if seconds < 0 or until - now > timedelta(seconds=MAX_POSTPONE_S):
        raise BadPostponement(f"by {seconds} seconds" if seconds else
                              f"past another window, to {until:%Y-%m-%d %H:%M}", MAX_POSTPONE_S)
    return until


class NothingToPostpone(UsageError):
    """Postponing the host restart: {}"""


class BadPostponement(UsageError):
    """Postponing the host restart {}: it may wait at most {} seconds (7 days) from now"""

"""What vmclient-powerd holds paused or saved, and why: :class:`HeldTable`, its one copy,
kept in ``state.json`` files (:class:`~vmclient.power.statefile.HoldsFile`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from .policy import Hold
from .statefile import HoldsFile

log = logging.getLogger(__name__)


class HeldTable:
    """The VMs this daemon holds (by UUID) and why restoring some was refused: powerd's one
    copy of them.  The policy decides from it, the controller changes it, D-Bus shows it.

    Every change is written to the state files at once, or once at the end of the
    :meth:`batch` in progress; ``on_change`` is told after each write.
    """

    def __init__(self, file: HoldsFile, on_change: Callable[[], None] = lambda: None) -> None:
        self.file = file
        self.on_change = on_change
        self.holds: dict[str, Hold] = file.load()
        self.refused: dict[str, str] = {}  # VM name -> why its restore was refused
        self._batch = False
        self._dirty = False

    def set(self, holds: dict[str, Hold]) -> None:
        """The new table, written at once (or at the end of the batch running now)."""
        if holds == self.holds:
            return
        self.holds = holds
        if self._batch:
            self._dirty = True
        else:
            self._persist()

    def forget(self, uuids: Iterable[str]) -> None:
        """No longer held (nor refused)."""
        gone = set(uuids)
        for u in gone:
            h = self.holds.get(u)
            if h is not None:
                self.refused.pop(h.name, None)
        self.set({u: h for u, h in self.holds.items() if u not in gone})

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made in the block are written once, at its end."""
        self._batch = True
        try:
            yield
        finally:
            self._batch = False
            if self._dirty:
                self._persist()

    def flush(self) -> None:
        """Write what changed now, also inside a :meth:`batch`."""
        if self._dirty:
            self._persist()

    def _persist(self) -> None:
        self._dirty = False
        try:
            self.file.save(self.holds)
        except OSError as exc:
            log.error("cannot record what is held: %s (kept in memory only)", exc)
        self.on_change()

"""Progress of long work (download, assembly): bytes, rate, ETA.  Pure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    phase: str = "idle"  # catalog | download | assemble | define | idle
    vm: str = ""
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total, self.started = phase, 0, total, self.clock()

    @property
    def rate(self) -> float:
        """Bytes per second since the phase began."""
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (-1: unknown)."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 and self.total else -1.0

    def line(self) -> str:
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = f"{self.eta:4.0f} s" if self.eta >= 0 else "   ? s"
        return (f"{self.vm}: {self.phase:<9} {pct:5.1f}%  {_mib(self.done)}/{_mib(self.total)} MiB"
                f"  {self.rate / 2**20:7.1f} MiB/s  ETA {eta}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


ProgressFn = Callable[[Progress], None]


def ignore(_p: Progress) -> None:
    """A progress sink that shows nothing."""

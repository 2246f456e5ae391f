"""Progress of long work (download, assembly): bytes, rate, ETA.  Pure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The D-Bus ``Phase`` enum: the index of the phase's name (0 = unknown).
PHASES = ("unknown", "idle", "catalog", "download", "assemble", "define", "stream", "fill",
          "copy")


@dataclass
class Progress:
    phase: str = "idle"  # catalog | download | assemble | define | stream | fill | copy | idle
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
        return line(self.vm, self.phase, self.done, self.total, self.rate, self.eta)


# Phases that count no bytes: what they do, instead of "100.0%  0.0/0.0 MiB  ETA ? s"
STEPS = {"catalog": "asking the datacenter (catalog, data key, snapshot)",
         "define": "defining the VM",
         "stream": "starting the VM; its disks then stream in from the datacenter"}


def line(vm: str, phase: str, done: int, total: int, rate: float, eta: float) -> str:
    """``office: download   42.0%  42.0/100.0 MiB     25.0 MiB/s  ETA    2 s``"""
    if phase in STEPS and not total:
        return f"{vm}: {phase:<9} {STEPS[phase]}"
    pct = 100 * done / total if total else 100.0
    eta_s = f"{eta:4.0f} s" if eta >= 0 else "   ? s"
    return (f"{vm}: {phase:<9} {pct:5.1f}%  {_mib(done)}/{_mib(total)} MiB"
            f"  {rate / 2**20:7.1f} MiB/s  ETA {eta_s}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


ProgressFn = Callable[[Progress], None]


def ignore(_p: Progress) -> None:
    """A progress sink that shows nothing."""

"""The progress line of a long command on stderr (``vm install``, ``vm restore``,
``sync now``): phase, bytes, rate and ETA, rewritten in place on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..provision.progress import Progress
from ..provision.progress import line as progress_line


class ProgressPrinter:
    """One status line: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out, self.tty = out, out.isatty()
        self.last, self.phase, self.vm = 0.0, "", ""

    def __call__(self, p: Progress) -> None:
        self.show(p.vm, p.phase, p.done, p.total, p.rate, p.eta)

    def show(self, vm: str, phase: str, done: int, total: int, rate: float,
             eta: float) -> None:
        now = time.monotonic()
        changed = phase != self.phase
        finished = total and done >= total
        if not changed and not finished and now - self.last < (0.2 if self.tty else 5.0):
            return
        if changed and self.phase and self.tty:
            self.out.write("\n")
        self.last, self.phase, self.vm = now, phase, vm
        text = progress_line(vm, phase, done, total, rate, eta)
        self.out.write(("\r" if self.tty else "") + text + ("" if self.tty else "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.phase:
            self.out.write("\n")
        self.phase = ""

    def interrupted(self) -> None:
        """Ctrl-C while vmclient-provd works: this command stops watching, the work goes
        on there (a D-Bus call is not taken back)."""
        what = f" ({self.phase} of {self.vm})" if self.vm and self.phase else ""
        self.close()
        self.out.write(f"vmclientctl: interrupted: vmclient-provd goes on with the work"
                       f"{what}; `vmclientctl vm list` shows the VM once it is done\n")
        self.out.flush()

"""One call of a kind in flight (pure): the shell's polls never pile calls up on a daemon
that is slow to answer.

The shell asks vmclient-provd for its VMs every 2 s, and a call may wait up to 30 s
for an answer.  A provd slow to answer (a loaded host) then had fifteen ListVMs
pending, with ListAssigned and the rest, until the system bus refused the shell's
connection more calls (``LimitsExceeded``: "The maximum number of pending replies
per connection has been reached"); the calls that then failed included the sleep
delay lock and powerd's pause delay, which keep the VMs visible until the screen
is locked.  Seen on the booted test host under load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class InFlight:
    """``run(start, done)``: ``start(finish)`` unless a call started here has not finished;
    ``finish(*answer)`` calls ``done(*answer)``."""

    def __init__(self) -> None:
        self.busy = False

    def run(self, start: Callable[[Callable[..., None]], None],
            done: Callable[..., None]) -> bool:
        """True if the call started, False if the previous one is still pending."""
        if self.busy:
            return False
        self.busy = True

        def finish(*answer: Any) -> None:
            self.busy = False
            done(*answer)
        try:
            start(finish)
        except BaseException:
            self.busy = False
            raise
        return True

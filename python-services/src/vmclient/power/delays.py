"""Pause delays: what must happen before the VMs pause for the lid or for sleep.

The shell locks the screen on the same events that make vmclient-powerd pause
the VMs; a VM must not be paused while it is still on the screen.  logind's
delay inhibitors hold the host's sleep, not powerd, so the order comes from
here: ``Power.DelayPause() → h`` hands the caller one end of a socket pair and
powerd keeps the other.  Before pausing for the lid or sleep, powerd waits,
bounded, until every such delay is released: its holder closed its end (or
exited).  As with logind, the holder signals by closing; anything it writes is
read and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from ..tasks import at_most

log = logging.getLogger(__name__)


class PauseDelays:
    """The delays handed out and not yet released (used from the event loop's thread)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[socket.socket, str]] = {}
        self._none = asyncio.Event()
        self._none.set()

    @property
    def held(self) -> list[str]:
        """Who holds one (as given to :meth:`take`), oldest first."""
        return [who for _sock, who in self._held.values()]

    def take(self, who: str) -> int:
        """A new delay for ``who``: the file descriptor to hand out (the caller's to
        close once it is sent)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._held[ours.fileno()] = (ours, who)
        self._none.clear()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, ours)
        log.debug("pause delay taken by %s", who)
        return theirs.detach()

    def _readable(self, sock: socket.socket) -> None:
        try:
            if sock.recv(4096):
                return  # written to: not a release
        except BlockingIOError:
            return
        except OSError:
            pass  # a reset: released too
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        _, who = self._held.pop(fd)
        asyncio.get_running_loop().remove_reader(fd)
        sock.close()
        log.debug("pause delay of %s released", who)
        if not self._held:
            self._none.set()

    async def released(self, bound: float) -> bool:
        """Wait until no delay is held, at most ``bound`` seconds; False if one still was."""
        if not self._held:
            return True
        holders = ", ".join(self.held)
        log.info("waiting for %s before pausing (at most %.1f s)", holders, bound)
        try:
            await at_most(self._none.wait(), bound)
        except TimeoutError:
            log.warning("%s did not release the pause delay within %.1f s: pausing anyway",
                        ", ".join(self.held), bound)
            return False
        return True

    def close(self) -> None:
        for sock, _who in list(self._held.values()):
            with contextlib.suppress(ValueError, OSError):
                self._drop(sock)

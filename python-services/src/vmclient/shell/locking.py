"""The lock on screen before any VM pauses: the shell's side of the ordering.

vmclient-powerd pauses the VMs when the lid closes or the host goes to sleep;
the shell locks on the same events.  So that no VM is paused while it is still
on the screen, powerd waits (bounded: ``sleep.lock_screen_s``, docs/dbus-api.md)
before it pauses for as long as anyone holds a *pause delay*
(``Power.DelayPause() → h``, the same idea as logind's delay inhibitors): the
shell holds one whenever the screen may show a VM (unlocked), and closes it
once the lock page is on the screen.  After an unlock it takes a new one.

"On the screen" is the compositor's word, not GTK's: :func:`when_on_screen`
waits for the frame after the lock page's, which GDK starts only once the
compositor has answered the lock page's frame callback (it has shown it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names
from .bus import reply_fd

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

log = logging.getLogger(__name__)

ON_SCREEN_BOUND_MS = 1000  # the most the lock page may hold the sleep or the pause back


def when_on_screen(window: Any, done: Callable[[], None],
                   bound_ms: int = ON_SCREEN_BOUND_MS) -> None:
    """Call ``done()`` once what ``window`` shows now is on the screen (the compositor
    has shown the next frame GTK paints), or after ``bound_ms`` whatever happened."""
    clock = window.get_frame_clock()
    handler = 0
    paints = 0
    finished = False

    def finish() -> bool:
        nonlocal finished
        if not finished:
            finished = True
            if clock is not None and handler:
                clock.disconnect(handler)
            done()
        return False

    def after_paint(_clock: Any) -> None:
        nonlocal paints
        paints += 1
        if paints == 1:
            # This frame holds what was asked for; GDK paints the next one only when
            # the compositor has sent this one's frame callback, i.e. has shown it.
            window.queue_draw()
        else:
            finish()
    if clock is not None:
        handler = clock.connect("after-paint", after_paint)
    GLib.timeout_add(bound_ms, finish)
    window.queue_draw()


class PauseDelay:
    """vmclient-powerd's pause delay, held while :attr:`wanted` and powerd is on the bus."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.fd: int | None = None
        self.wanted = True
        self._present = False
        self._asking = False
        self._watch: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def start(self) -> None:
        self._watch = Gio.bus_watch_name_on_connection(
            self.conn, names.BUS_NAME, Gio.BusNameWatcherFlags.NONE,
            lambda *_a: self._appeared(), lambda *_a: self._vanished())

    def stop(self) -> None:
        if self._watch is not None:
            Gio.bus_unwatch_name(self._watch)
            self._watch = None
        self.want(False)

    def want(self, wanted: bool) -> None:
        """Hold the delay (the screen may show a VM) or let it go (the lock is shown)."""
        self.wanted = wanted
        if wanted:
            self._take()
        else:
            self._release()

    def _appeared(self) -> None:
        self._present = True
        self._take()

    def _vanished(self) -> None:
        self._present = False
        self._release()  # powerd's end is gone with it

    def _release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
            log.debug("released powerd's pause delay")

    def _take(self) -> None:
        if self.fd is not None or self._asking or not self._present or not self.wanted:
            return
        self._asking = True

        def done(c: Any, res: Any) -> None:
            self._asking = False
            try:
                result, fdlist = c.call_with_unix_fd_list_finish(res)
            except GLib.Error as err:
                log.warning("no pause delay from vmclient-powerd (a VM may pause before the "
                            "screen is locked): %s", err.message)
                return
            fd = reply_fd(result, fdlist)
            if fd is None:
                log.warning("vmclient-powerd sent no file descriptor with DelayPause")
            elif not self.wanted or self.fd is not None:  # locked meanwhile, or raced
                os.close(fd)
            else:
                self.fd = fd
                log.debug("holding powerd's pause delay")

        self.conn.call_with_unix_fd_list(
            names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE, "DelayPause", None,
            GLib.VariantType.new("(h)"), Gio.DBusCallFlags.NONE, 10_000, None, None, done)

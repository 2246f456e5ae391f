"""The shell tells logind whether someone uses the laptop: its session's ``IdleHint``.

logind counts a graphical session as in use until it says otherwise
(``SetIdleHint``), so without this the seat is never idle and vmclient-syncd's
``[host_updates] wait_for_idle`` could never restart the laptop.  Every input event
GTK sees (keys, pointer, scroll, touch: also those a VM's display takes) counts as
use; :data:`IDLE_AFTER_S` without any makes the session idle.  The hint is sent only
when it changes, to the caller's own session (logind's ``session/auto``: the shell
runs in Weston's session, ``PAMName`` in weston.service).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gdk, Gio, GLib, Gtk  # noqa: E402

log = logging.getLogger(__name__)

IDLE_AFTER_S = 15 * 60  # no input for this long: no one uses the laptop
CHECK_S = 30
SESSION_PATH = "/org/freedesktop/login1/session/auto"  # the caller's session
SESSION_IFACE = "org.freedesktop.login1.Session"


class IdleClock:
    """When the last input was, and the hint to send when it changes (pure)."""

    def __init__(self, now: float, idle_after: float = IDLE_AFTER_S) -> None:
        self.last, self.idle_after = now, idle_after
        self.hint: bool | None = None  # the last one sent (None: none yet)

    def input(self, now: float) -> bool | None:
        """Someone used the laptop at ``now``: ``False`` to send if it was idle."""
        self.last = max(self.last, now)
        return self._changed(False)

    def check(self, now: float) -> bool | None:
        """The hint to send at ``now``, or None when it did not change."""
        return self._changed(now - self.last >= self.idle_after)

    def _changed(self, idle: bool) -> bool | None:
        if idle == self.hint:
            return None
        self.hint = idle
        return idle


_INPUT = frozenset({Gdk.EventType.KEY_PRESS, Gdk.EventType.BUTTON_PRESS,
                    Gdk.EventType.MOTION_NOTIFY, Gdk.EventType.SCROLL,
                    Gdk.EventType.TOUCH_BEGIN, Gdk.EventType.TOUCH_UPDATE})


class IdleHint:
    """Watches GTK's input (GDK's event handler, in front of GTK's own dispatch) and
    sets the session's ``IdleHint`` on ``conn`` (the system bus)."""

    def __init__(self, conn: Any, clock: Callable[[], float] = time.monotonic,
                 idle_after: float = IDLE_AFTER_S, check_s: int = CHECK_S) -> None:
        self.conn, self.clock, self.check_s = conn, clock, check_s
        self.idle = IdleClock(clock(), idle_after)
        self._timer: int | None = None
        self._warned = False

    def start(self) -> None:
        Gdk.event_handler_set(self._event)
        self._timer = GLib.timeout_add_seconds(self.check_s, self._tick)
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            GLib.source_remove(self._timer)
            self._timer = None

    def _event(self, event: Any, *_data: Any) -> None:
        if event.type in _INPUT:
            self._send(self.idle.input(self.clock()))
        Gtk.main_do_event(event)

    def _tick(self) -> bool:
        self._send(self.idle.check(self.clock()))
        return True

    def _send(self, hint: bool | None) -> None:
        if hint is None:
            return

        def done(c: Any, res: Any) -> None:
            try:
                c.call_finish(res)
            except GLib.Error as err:
                if not self._warned:  # once: an unchanged cause every half hour is noise
                    self._warned = True
                    log.warning("logind's IdleHint not set (a maintenance restart that "
                                "waits for an idle laptop waits): %s", err.message)
        log.debug("session idle hint: %s", hint)
        self.conn.call(names.LOGIND_BUS, SESSION_PATH, SESSION_IFACE, "SetIdleHint",
                       GLib.Variant("(b)", (hint,)), None, Gio.DBusCallFlags.NONE, 10_000,
                       None, done)

"""The shell's own logind delay lock on sleep: the screen is locked before the host sleeps.

The shell holds a *delay* inhibitor on ``sleep`` (as vmclient-powerd does for
pausing the VMs).  On ``PrepareForSleep(true)`` it shows the lock page, waits
until GTK has painted it, then closes the inhibitor's fd so the host may go to
sleep; on ``PrepareForSleep(false)`` it takes a new one.  Nothing of a VM is
on the screen while the laptop sleeps or when its lid opens again.
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

WHO = "vmclient-shell"
WHY = "Locking the screen before the host sleeps"


class SleepLock:
    def __init__(self, conn: Any, on_sleep: Callable[[Callable[[], None]], None],
                 on_wake: Callable[[], None]) -> None:
        """``on_sleep(done)`` locks the screen and calls ``done()`` once that is painted."""
        self.conn, self.on_sleep, self.on_wake = conn, on_sleep, on_wake
        self.fd: int | None = None
        self._sub: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def start(self) -> None:
        self._sub = self.conn.signal_subscribe(
            names.LOGIND_BUS, names.LOGIND_MANAGER, "PrepareForSleep", names.LOGIND_PATH,
            None, Gio.DBusSignalFlags.NONE, self._prepare_for_sleep)
        self.take()

    def stop(self) -> None:
        if self._sub is not None:
            self.conn.signal_unsubscribe(self._sub)
            self._sub = None
        self.release()

    def take(self) -> None:
        if self.fd is not None:
            return

        def done(c: Any, res: Any) -> None:
            try:
                result, fdlist = c.call_with_unix_fd_list_finish(res)
            except GLib.Error as err:
                log.warning("no delay lock on sleep (the screen may not lock before the host "
                            "sleeps): %s", err.message)
                return
            fd = reply_fd(result, fdlist)
            if fd is None:
                return
            if self.fd is not None:  # raced
                os.close(fd)
                return
            self.fd = fd
            log.debug("holding logind's delay lock on sleep")

        self.conn.call_with_unix_fd_list(
            names.LOGIND_BUS, names.LOGIND_PATH, names.LOGIND_MANAGER, "Inhibit",
            GLib.Variant("(ssss)", ("sleep", WHO, WHY, "delay")),
            GLib.VariantType.new("(h)"), Gio.DBusCallFlags.NONE, 10_000, None, None, done)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
            log.debug("released logind's delay lock on sleep")

    def _prepare_for_sleep(self, _conn: Any, _sender: Any, _path: Any, _iface: Any,
                           _signal: Any, params: Any) -> None:
        (start,) = params.unpack()
        if start:
            log.info("the host is going to sleep: locking the screen")
            self.on_sleep(self.release)
        else:
            log.info("the host woke up")
            self.take()
            self.on_wake()

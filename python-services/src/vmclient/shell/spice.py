"""One VM's display: a SPICE session over sockets vmclient-provd hands out.

spice-gtk with a client-provided socket asks for one socket per channel (its
``open-fd`` signal): each comes from ``OpenDisplay`` (:mod:`.bus`), so the
shell never sees libvirt or a SPICE address.  The session stays connected
while the VM runs, shown or not: switching only changes which widget is
visible (the next frame is already there).

Policy set here: no clipboard sharing (no copy and paste between a business
and a private VM, or with the host), the guest resized to the widget where it
has a SPICE agent, the picture scaled to fit with its aspect kept.  Audio:
:mod:`.sound`; USB: :mod:`.usbredir`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import gi

from ..errors import RemoteError
from . import bus
from .sound import VMSound

gi.require_version("Gtk", "3.0")
gi.require_version("SpiceClientGLib", "2.0")
gi.require_version("SpiceClientGtk", "3.0")
from gi.repository import GObject, Gtk, SpiceClientGLib, SpiceClientGtk  # noqa: E402

log = logging.getLogger(__name__)


class VMDisplay:
    """The SPICE session of one VM and the widget that shows it (a Gtk.Stack page)."""

    def __init__(self, conn: Any, vm: str, on_error: Callable[[str, str], None],
                 on_display: Callable[[], None] = lambda: None) -> None:
        """``on_display()``: the display widget is there (the shell gives it the keyboard
        if its VM is shown)."""
        self.conn, self.vm, self.on_error, self.on_display = conn, vm, on_error, on_display
        self.widget = Gtk.Overlay()
        self.placeholder = Gtk.Label(label=f"Connecting to {vm}\u2026")
        self.placeholder.set_line_wrap(True)  # an error's text must not widen the window
        self.placeholder.set_max_width_chars(80)
        self.widget.add(self.placeholder)
        self.display: Any = None
        self.session = SpiceClientGLib.Session()
        gtk_session = SpiceClientGtk.GtkSession.get(self.session)
        gtk_session.props.auto_clipboard = False
        GObject.Object.connect(self.session, "channel-new", self._channel_new)
        self.sound = VMSound(vm, self.session)  # before the channels come
        self.closed = False

    def connect(self) -> None:
        bus.open_display(self.conn, self.vm, self._main_fd)

    def _main_fd(self, fd: int | None, err: RemoteError | None) -> None:
        if fd is None:
            self._failed(err)
            return
        if self.closed:
            os.close(fd)
        elif not self.session.open_fd(fd):
            log.warning("%s: the SPICE session did not take the connection", self.vm)

    def _failed(self, err: RemoteError | None) -> None:
        message = str(err) if err is not None else "no connection"
        log.warning("%s: cannot open the display: %s", self.vm, message)
        self.placeholder.set_text(f"{self.vm}: {message}")
        self.on_error(self.vm, message)

    def _channel_new(self, _session: Any, channel: Any) -> None:
        GObject.Object.connect(channel, "open-fd", self._open_fd)
        if isinstance(channel, SpiceClientGLib.DisplayChannel) and self.display is None:
            self.display = SpiceClientGtk.Display.new(self.session,
                                                      channel.props.channel_id)
            self.display.props.scaling = True
            self.display.props.resize_guest = True
            self.display.set_can_focus(True)
            self.widget.remove(self.placeholder)
            self.widget.add(self.display)
            self.display.show()
            self.on_display()

    def _open_fd(self, channel: Any, _with_tls: bool) -> None:
        def done(fd: int | None, err: RemoteError | None) -> None:
            if fd is None:
                self._failed(err)
            elif self.closed:
                os.close(fd)
            else:
                channel.open_fd(fd)  # the channel owns the socket from here
        bus.open_display(self.conn, self.vm, done)

    def focus(self) -> None:
        if self.display is not None:
            self.display.grab_focus()

    def close(self) -> None:
        self.closed = True
        self.session.disconnect()

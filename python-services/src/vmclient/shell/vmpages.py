"""The VMs' pages (GTK): one SPICE display per VM that can be shown, inside the zone frame.

A ``Gtk.Stack`` with a page per VM (:class:`.spice.VMDisplay`, connected while
the VM runs, shown or not) and a "none" page (no VM to show, or why the list
failed), framed by :data:`.barview.FRAME_PX` of the zone's colour on the left,
right and bottom (the bar is the top).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import gi

from . import audio
from .barview import FRAME_PX, label
from .spice import VMDisplay
from .usbredir import UsbRedirect

gi.require_version("Gtk", "3.0")
from gi.repository import Gtk  # noqa: E402

log = logging.getLogger(__name__)

CSS = """
#none { background-color: rgb(40, 40, 40); }
#none label { color: white; }
"""


class VMPages:
    def __init__(self, conn: Any, changed: Callable[[], None], usb: UsbRedirect) -> None:
        """``changed()``: a display came or went (the shell renders again); ``usb``: the
        VMs' USB redirection (each session's device manager)."""
        self.conn, self.changed, self.usb = conn, changed, usb
        self.displays: dict[str, VMDisplay] = {}
        self.widget = Gtk.EventBox()
        self.widget.set_name("frame")
        self.stack = Gtk.Stack()
        for side in ("start", "end", "bottom"):
            getattr(self.stack, f"set_margin_{side}")(FRAME_PX)
        none = Gtk.EventBox()
        none.set_name("none")
        self.none_label = label("No VM running", wrap=True)
        none.add(self.none_label)
        self.stack.add_named(none, "none")
        self.widget.add(self.stack)

    def update(self, showable: Iterable[str]) -> None:
        """A session for every VM in ``showable``, none for any other."""
        wanted = set(showable)
        for name in sorted(set(self.displays) - wanted):
            self._drop(name)
        for name in sorted(wanted - set(self.displays)):
            d = VMDisplay(self.conn, name, self._failed, self.changed)
            self.displays[name] = d
            self.stack.add_named(d.widget, name)
            d.widget.show_all()
            self.usb.add(name, d.session)
            d.connect()

    def show(self, vm: str | None, focus: bool) -> bool:
        """``vm``'s page (the "none" page without its display), and with ``focus`` the
        keyboard to its display: True if it took it."""
        d = self.displays.get(vm or "")
        self.stack.set_visible_child_name(vm if d is not None and vm else "none")
        if d is not None and focus:
            d.focus()
            return True
        return False

    def apply(self, shown: str | None, locked: bool, first_start: bool,
              muted: frozenset[str]) -> None:
        """The audio and USB policies for what is shown now."""
        for vm, d in self.displays.items():
            d.sound.allow_recording(audio.may_record(vm, shown, locked, first_start))
            d.sound.mute(vm in muted)
        self.usb.apply(shown, locked, first_start)

    def display_of(self, vm: str | None) -> Any:
        """``vm``'s SPICE widget (None: none yet)."""
        d = self.displays.get(vm or "")
        return d.display if d is not None else None

    def close(self) -> None:
        for name in list(self.displays):
            self._drop(name)

    def _drop(self, name: str) -> None:
        d = self.displays.pop(name)
        self.usb.remove(name)
        self.stack.remove(d.widget)
        d.close()

    def _failed(self, vm: str, message: str) -> None:
        log.info("%s: display failed (%s); trying again with the next VM list", vm, message)
        if vm in self.displays:
            self._drop(vm)
        self.changed()

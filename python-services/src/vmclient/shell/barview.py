"""The bar's widgets (GTK): what :mod:`.bar` words, laid out along the top of the screen.

Left to right: the VM and its zone; the actions (sync now, pause, resume, shut
down: :mod:`.actions`; install a private VM from media: :mod:`.installpage`; restore one
from the datacenter: :mod:`.restorepage`; the shown
VM's pause or resume, sound and USB), their answer; then from the right end: power, sync,
IT's pending orders, an install in progress, Wi-Fi.  Every label ellipsizes:
no text widens the window (a full-screen window larger than the screen is a
protocol error the compositor disconnects the shell for).  No widget of the
bar takes the keyboard focus: keys go to the VM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gi

from . import actions

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("Pango", "1.0")
from gi.repository import Gdk, Gtk, Pango  # noqa: E402

BAR_PX = 28
FRAME_PX = 6


def css(colour: tuple[int, int, int]) -> str:
    """The bar's and the frame's style, in the zone's colour."""
    r, g, b = colour
    return (f"#bar, #frame {{ background-color: rgb({r}, {g}, {b}); }}\n"
            "#bar label { color: white; font-weight: bold; }\n"
            # narrow buttons: a 1024-px screen holds the bar with a VM shown
            "#bar button { padding-left: 4px; padding-right: 4px; }\n")


def label(text: str = "", xalign: float = 0.5, wrap: bool = False) -> Any:
    """A label that never widens the window."""
    lbl = Gtk.Label(label=text, xalign=xalign)
    if wrap:
        lbl.set_line_wrap(True)
        lbl.set_max_width_chars(80)
    else:
        lbl.set_ellipsize(Pango.EllipsizeMode.END)
    return lbl


def flat_button(text: str, clicked: Callable[[], None]) -> Any:
    """A bar button: no relief, never the keyboard focus (a key goes to a VM only)."""
    button = Gtk.Button(label=text)
    button.set_relief(Gtk.ReliefStyle.NONE)
    button.set_can_focus(False)
    button.connect("clicked", lambda _b: clicked())
    return button


class Bar:
    """The bar: ``act(name)`` runs an action, pauses or resumes the shown VM (``"vm"``),
    mutes it (``"sound"``), opens the USB menu (``"usb"``), the install page
    (``"install"``) or the restore page (``"restore"``); ``networks()`` opens the Wi-Fi
    page."""

    def __init__(self, act: Callable[[str], None], networks: Callable[[], None]) -> None:
        self.widget = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.widget.set_name("bar")
        self.widget.set_size_request(-1, BAR_PX)
        self.title = label(xalign=0)
        self.title.set_margin_start(FRAME_PX)
        self.widget.pack_start(self.title, True, True, 0)
        self.buttons: dict[str, Any] = {}
        for name, spec in actions.ACTIONS.items():
            self.buttons[name] = flat_button(spec[0], functools.partial(act, name))
            if name != "later":  # beside the sync field's "restart to update"
                self.widget.pack_start(self.buttons[name], False, False, 0)
        self.buttons["later"].set_no_show_all(True)  # shown while a restart is planned
        for name, text in (("install", "Install\u2026"),  # a private VM from media
                           ("restore", "Restore\u2026"),  # a VM from the datacenter
                           ("vm", "Pause"), ("sound", ""), ("usb", "USB")):  # the shown VM's
            self.buttons[name] = flat_button(text, functools.partial(act, name))
            self.widget.pack_start(self.buttons[name], False, False, 0)
        self.action_message = label(xalign=0)
        self.widget.pack_start(self.action_message, False, False, 0)
        self.power = label(xalign=1)
        self.power.set_margin_end(4 * FRAME_PX)  # the bar's last pixels stay its colour
        self.widget.pack_end(self.power, False, False, 0)
        self.widget.pack_end(self.buttons["later"], False, False, 0)
        self.sync = label(xalign=1)
        self.widget.pack_end(self.sync, False, False, 0)
        self.pending = label(xalign=1)
        self.widget.pack_end(self.pending, False, False, 0)
        self.install = label(xalign=1)
        self.widget.pack_end(self.install, False, False, 0)
        self.wifi = label(xalign=1)
        wifi_button = Gtk.EventBox()  # a click opens the Wi-Fi page
        wifi_button.add(self.wifi)
        wifi_button.connect("button-press-event", lambda *_a: networks())
        self.widget.pack_end(wifi_button, False, False, 0)
        self.menu: Any = None

    def set_button(self, name: str, text: str) -> None:
        """A button's text (only when it changes: a new label re-lays the bar out)."""
        if self.buttons[name].get_label() != text:
            self.buttons[name].set_label(text)

    def vm_button(self, action: str | None) -> None:
        """The shown VM's "Pause" or "Resume" (:func:`.actions.vm_action`); greyed: none."""
        self.set_button("vm", actions.VM_ACTIONS[action or "pause-vm"][0])
        self.buttons["vm"].set_sensitive(action is not None)

    def popup(self, button: str, rows: list[tuple[str, str, bool]],
              chosen: Callable[[str], None]) -> None:
        """A menu under ``button``: rows of (key, text, clickable); a click: chosen(key)."""
        self.menu = Gtk.Menu()
        for key, text, clickable in rows or [("", "(none)", False)]:
            item = Gtk.MenuItem(label=text)
            item.set_sensitive(clickable)
            item.connect("activate", lambda _i, key=key: chosen(key))
            self.menu.append(item)
        self.menu.show_all()
        self.menu.popup_at_widget(self.buttons[button], Gdk.Gravity.SOUTH_WEST,
                                  Gdk.Gravity.NORTH_WEST, None)

    def close_menu(self) -> None:
        if self.menu is not None:
            self.menu.popdown()
            self.menu = None

"""The Wi-Fi page (``Super+N``, or a click on the bar's Wi-Fi field): NetworkManager's
networks in range, strongest first; choose one, type its password if it has one,
Return or "Connect".  While it is open every key is the shell's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gi

from .wifi import WifiState

gi.require_version("Gtk", "3.0")
from gi.repository import Gtk  # noqa: E402

CSS = """
#networks { background-color: rgb(40, 40, 40); }
#networks label { color: white; }
"""


class NetworksPage:
    def __init__(self, connect: Callable[[str, str], None]) -> None:
        self.connect = connect
        self.widget = Gtk.EventBox()
        self.widget.set_name("networks")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        box.set_halign(Gtk.Align.CENTER)
        box.set_valign(Gtk.Align.CENTER)
        self.heading = Gtk.Label(label="Wi-Fi")
        self.list = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self.password = Gtk.Entry()
        self.password.set_visibility(False)
        self.password.set_width_chars(24)
        self.password.connect("activate", lambda _e: self._connect())
        button = Gtk.Button(label="Connect")
        button.connect("clicked", lambda _b: self._connect())
        self.message = Gtk.Label(label="")
        self.message.set_line_wrap(True)
        self.message.set_max_width_chars(60)
        for w in (self.heading, self.list, self.password, button, self.message):
            box.pack_start(w, False, False, 0)
        self.widget.add(box)
        self.selected: str | None = None
        self.shown: WifiState | None = None

    def show(self, state: WifiState) -> None:
        if state == self.shown:
            return
        self.shown = state
        for child in self.list.get_children():
            self.list.remove(child)
        if state.device is None:
            self.heading.set_text("No Wi-Fi device")
        else:
            self.heading.set_text("Wi-Fi networks" if state.networks
                                  else "No Wi-Fi network in range")
        for n in state.networks:
            mark = " (connected)" if state.connected and state.connected.ssid == n.ssid else ""
            lock = ", password" if n.secured else ""
            row = Gtk.Button(label=f"{n.ssid}  {n.strength}%{lock}{mark}")
            row.connect("clicked", lambda _b, ssid=n.ssid: self.choose(ssid))
            self.list.pack_start(row, False, False, 0)
        if self.selected is None and state.networks:
            self.selected = state.networks[0].ssid
        self.list.show_all()

    def choose(self, ssid: str) -> None:
        self.selected = ssid
        self.message.set_text(f"Network {ssid}")
        self.focus()

    def focus(self) -> None:
        """The password field focused, what is typed so far kept."""
        if not self.password.has_focus():
            self.password.grab_focus_without_selecting()

    def _connect(self) -> None:
        if self.selected is None:
            self.message.set_text("Choose a network first")
            return
        password = self.password.get_text()
        self.password.set_text("")
        self.message.set_text(f"Connecting to {self.selected}\u2026")
        self.connect(self.selected, password)

    def answered(self, error: str | None) -> None:
        self.message.set_text(error or "Connected")

    def key(self, event: Any) -> None:
        """A key while the page is open: to the password field."""
        self.focus()
        self.password.event(event)

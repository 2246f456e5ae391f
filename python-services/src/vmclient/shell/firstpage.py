"""The first start's page (:mod:`.firststart` is its core): one step at a time,
full screen, every key the page's.  The Wi-Fi step holds a Wi-Fi page of its own
(:class:`.netpage.NetworksPage`, fed by the shell's NetworkManager client)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gi

from . import firstsave, setup
from . import firststart as fs
from .netpage import NetworksPage
from .wifi import WifiState

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402

RESTART_DELAY_MS = 1500  # long enough to read that the desktop starts again

CSS = """
#firststart { background-color: rgb(30, 30, 40); }
#firststart label { color: white; }
#firststart label#fstitle { font-size: 20px; }
"""


class FirstStartPage:
    def __init__(self, conn: Any, connect_wifi: Callable[[str, str], None],
                 finished: Callable[[], None], restart: Callable[[], None]) -> None:
        """``restart()``: start the session again (Weston takes the new layout then)."""
        self.conn, self.finished, self.restart = conn, finished, restart
        self.state = fs.FirstStart()
        self.enrolment = fs.ENROL_UNKNOWN
        self.install, self.pending, self.vms = "", "", 0
        self.busy = False
        self.widget = Gtk.EventBox()
        self.widget.set_name("firststart")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=10)
        box.set_halign(Gtk.Align.CENTER)
        box.set_valign(Gtk.Align.CENTER)
        self.title = Gtk.Label(label="")
        self.title.set_name("fstitle")
        self.title.set_line_wrap(True)
        self.title.set_max_width_chars(60)
        self.layouts = Gtk.Label(label="")
        self.entry = Gtk.Entry()
        self.entry.set_width_chars(28)
        self.entry.connect("activate", lambda _e: self._entered())
        self.networks = NetworksPage(connect_wifi)
        self.progress = Gtk.Label(label="")
        self.message = Gtk.Label(label="")
        self.message.set_line_wrap(True)
        self.message.set_max_width_chars(60)
        for w in (self.title, self.layouts, self.entry, self.networks.widget, self.progress,
                  self.message):
            box.pack_start(w, False, False, 0)
        self.widget.add(box)

    def open_at(self, step: fs.Step, saved: fs.FirstStart | None) -> None:
        """Open at ``step`` (:func:`.firststart.resume_at`), with the saved layout."""
        self.state = fs.FirstStart(step, saved.layout if saved is not None else 0)
        firstsave.save(self.state)
        self.render()

    # -- what the shell tells it ---------------------------------------------------

    def wifi(self, st: WifiState) -> None:
        self.networks.show(st)
        if self.state.step == fs.Step.WIFI and st.connected is not None:
            self._next()  # connected: on to the code

    def daemons(self, enrolment: int, install: str, pending: str, vms: int,
                refused: str = "") -> None:
        """syncd's enrolment (``refused``: IT's reason for refusing the code sent) and
        the bar's install and pending fields."""
        self.enrolment, self.install, self.pending, self.vms = enrolment, install, pending, vms
        back = None if self.busy else fs.refused(self.state, enrolment, refused)
        if back is not None:  # the code again, with IT's reason
            self.state, message = back
            firstsave.save(self.state)
            self.entry.set_text("")
            self.message.set_text(message)
            self.render()
            return
        if self.state.step == fs.Step.INSTALL:
            if fs.finished(enrolment, install, pending, vms):
                self._next()
            else:
                self.render()

    # -- keys ----------------------------------------------------------------------------

    def key(self, event: Any, name: str) -> None:
        step = self.state.step
        if self.busy:
            return
        if step == fs.Step.LAYOUT:
            if name in ("Down", "Up"):
                self.state = fs.move_layout(self.state, 1 if name == "Down" else -1)
                self.render()
            elif name in ("Return", "KP_Enter"):
                self._set_layout()
        elif step == fs.Step.WIFI:
            if name == "Escape":
                self._next()
            else:
                self.networks.key(event)
        elif step == fs.Step.CODE and name == "Escape":
            self.state = fs.back(self.state)
            firstsave.save(self.state)
            self.message.set_text("")
            self.entry.set_text("")
            self.render()
        elif step in (fs.Step.CODE, fs.Step.PASSWORD):
            self.focus()
            self.entry.event(event)
        elif step == fs.Step.INSTALL and name == "Escape":
            self._next()  # to the desktop; the bar goes on showing the installs

    # -- steps ---------------------------------------------------------------------------

    def _next(self, message: str = "") -> None:
        self.state = fs.advance(self.state, self.enrolment)
        firstsave.save(self.state)
        self.message.set_text(message)
        self.entry.set_text("")
        if self.state.step == fs.Step.DONE:
            self.finished()
            return
        self.render()

    def _set_layout(self) -> None:
        layout, shown = fs.LAYOUTS[self.state.layout]
        error = firstsave.save_keyboard(layout)  # what the next session's Weston takes
        if error is not None:
            self._next(f"Keyboard layout not saved: {error}")
            return
        # Weston takes its keymap only when it starts: the session starts again
        # now (nothing typed yet), the first start reopens at the next step.
        restart = fs.restart_needed(layout, os.environ.get(fs.KEYBOARD_VARIABLE))
        self._next(f"Keyboard: {shown}" + (" (starting the desktop again\u2026)"
                                            if restart else ""))
        if restart:
            GLib.timeout_add(RESTART_DELAY_MS, lambda: self.restart() and False)

    def _entered(self) -> None:
        typed = self.entry.get_text()
        self.entry.set_text("")
        if self.state.step == fs.Step.CODE:
            self.busy = True
            self.message.set_text("Enrolling\u2026")

            def enrolled(error: str | None) -> None:
                self.busy = False
                if error is None:
                    self._next("Enrolment requested")
                else:  # the code stays, to be corrected rather than typed again
                    self.message.set_text(error)
                    self.entry.set_text(typed)
                    self.entry.set_position(-1)
            setup.enrol(self.conn, typed, enrolled)
        elif self.state.step == fs.Step.PASSWORD:
            self.state, password, message = fs.password_typed(self.state, typed)
            self.message.set_text(message)
            self.render()
            if password is None:
                return
            self.busy = True

            def set_(error: str | None, name: str | None) -> None:
                self.busy = False
                if error is None:
                    self._next("Password set")
                elif name == fs.PASSWORD_SET_ALREADY:  # set some other way: that one
                    self._next("You have a password already: the lock screen asks for it")
                else:
                    self.state = fs.FirstStart(fs.Step.PASSWORD, self.state.layout)
                    self.message.set_text(error)
                    self.render()
            setup.set_password(self.conn, password, set_)

    # -- output --------------------------------------------------------------------------

    def render(self) -> None:
        step = self.state.step
        self.title.set_text(self.state.title)
        self.layouts.set_visible(step == fs.Step.LAYOUT)
        self.layouts.set_text("\n".join(("\u25b6 " if i == self.state.layout else "   ") + shown
                                        for i, (_code, shown) in enumerate(fs.LAYOUTS)))
        self.entry.set_visible(step in (fs.Step.CODE, fs.Step.PASSWORD))
        self.entry.set_visibility(step != fs.Step.PASSWORD)
        self.networks.widget.set_visible(step == fs.Step.WIFI)
        self.progress.set_visible(step == fs.Step.INSTALL)
        self.progress.set_text(fs.install_text(self.enrolment, self.install, self.pending))
        self.focus()

    def focus(self) -> None:
        if self.state.step in (fs.Step.CODE, fs.Step.PASSWORD) and not self.entry.has_focus():
            self.entry.grab_focus_without_selecting()
        elif self.state.step == fs.Step.WIFI:
            self.networks.focus()

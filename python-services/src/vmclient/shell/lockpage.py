"""The lock page: black, "Locked", the user's password field and, under it, what to do
(:data:`PROMPT`: GTK 3 hides a placeholder in the focused field) or PAM's answer.

Nothing of a VM is on it.  Return in the field has PAM check the password
(:mod:`.auth`, in a thread); the window decides whether it may unlock (never
while the host is going to sleep)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gi

from . import auth

gi.require_version("Gtk", "3.0")
gi.require_version("Pango", "1.0")
from gi.repository import Gtk, Pango  # noqa: E402

CSS = """
#lock { background-color: black; }
#lock label { color: white; font-size: 24px; }
#lock label#lockmsg { font-size: 16px; }
"""

log = logging.getLogger(__name__)

PROMPT = "Type your password and press Enter to unlock"


def _label(text: str) -> Any:
    lbl = Gtk.Label(label=text)
    lbl.set_ellipsize(Pango.EllipsizeMode.END)  # never widens the window
    return lbl


class LockPage:
    def __init__(self, may_check: Callable[[], bool], unlocked: Callable[[], None]) -> None:
        """``may_check()``: whether a password may be checked now; ``unlocked()`` when PAM
        accepted one (and checking is still allowed)."""
        self.may_check, self.unlocked = may_check, unlocked
        self.user = auth.user_name()
        self.checking = False
        self.widget = Gtk.EventBox()
        self.widget.set_name("lock")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=12)
        box.set_valign(Gtk.Align.CENTER)
        box.set_halign(Gtk.Align.CENTER)
        box.pack_start(_label("Locked"), False, False, 0)
        self.password = Gtk.Entry()
        self.password.set_visibility(False)
        self.password.set_width_chars(24)
        self.password.set_placeholder_text(f"{self.user}'s password")
        self.password.connect("activate", self._requested)
        box.pack_start(self.password, False, False, 0)
        self.message = _label(PROMPT)
        self.message.set_name("lockmsg")
        box.pack_start(self.message, False, False, 0)
        self.widget.add(box)

    def key(self, event: Any) -> None:
        """A key while locked (and awake): to the password field, never to a VM."""
        if self.checking:
            return
        self.focus()
        self.password.event(event)

    def focus(self) -> None:
        """The password field focused, what is typed so far kept (a plain grab_focus
        selects it all, and the next key would replace it)."""
        if not self.password.has_focus():
            self.password.grab_focus_without_selecting()

    def _requested(self, entry: Any) -> None:
        if self.checking or not self.may_check():
            return
        password = entry.get_text()
        entry.set_text("")
        self.checking = True
        entry.set_sensitive(False)
        self.message.set_text("Checking\u2026")
        auth.check_async(self.user, password, self._checked)

    def _checked(self, error: str | None) -> None:
        self.checking = False
        self.password.set_sensitive(True)
        if error is None and self.may_check():
            self.message.set_text(PROMPT)  # for the next lock
            self.unlocked()
        else:
            self.message.set_text(error or "Locked while the host sleeps")
        self.focus()

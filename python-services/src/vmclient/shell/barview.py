"""The bar's widgets (GTK): what :mod:`.bar` words, laid out along the top of the screen.

Two rows, each :data:`ROW_PX` high, so that a 1024-px screen (and a narrower one) can
read the two fields a person must always be able to read: which VM this is, and how
far a long operation is.

- The first row: the VM and its zone (``title``); the shown VM's pause or resume, its
  sound and its USB menu; "Menu" (the actions on every VM and the laptop: install a
  private VM from media, :mod:`.installpage`; restore one from the datacenter,
  :mod:`.restorepage`; sync now, pause and resume the VMs, shut down: :mod:`.actions`);
  then from the right end: power, Wi-Fi.
- The second row: an install or restore in progress (``install``), the answer of an
  action; then from the right end: "Later", sync, IT's pending orders.

The title and the progress are :class:`KeptLabel` s: the bar shortens every other
field before them (whose whole text is its tooltip).  Every label ellipsizes past some
width: no text widens the window (a full-screen window larger than the screen is a
protocol error the compositor disconnects the shell for).  No widget of the bar takes
the keyboard focus, keys go to the VM, but the menu's items while it is open
(``Super+M`` opens it from the keyboard: Down, Up, Return, Escape); the menu has a twin
of each button on the bar (:data:`TWINS`), so every action is the keyboard's too.
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
from gi.repository import Gdk, GObject, Gtk, Pango  # noqa: E402

ROW_PX = 28
BAR_PX = 2 * ROW_PX
FRAME_PX = 6
KEPT_PX = 360  # the title and the progress whole up to this: a row asks for < 800 px
# The menu's rows: (key, text); None a separator.  Sync, pause, resume and shut down
# are :data:`.actions.ACTIONS`'s.  A key of :data:`TWINS` is a button on the bar: its
# item is its twin for the keyboard (a click is the button's; "{}" its label).
MENU: tuple[tuple[str, str] | None, ...] = (
    ("install", "Install a private VM\u2026"),
    ("restore", "Restore a VM\u2026"),  # from the datacenter
    None, ("sync", actions.ACTIONS["sync"][0]), ("pause", actions.ACTIONS["pause"][0]),
    ("resume", actions.ACTIONS["resume"][0]), None,
    ("vm", "{} this VM"), ("sound", "{} (this VM)"), ("usb", "USB devices\u2026"),
    ("later", "Restart later (not at the planned time)"), None,
    ("shutdown", actions.ACTIONS["shutdown"][0]))
TWINS = frozenset({"vm", "sound", "usb", "later"})


def css(colour: tuple[int, int, int]) -> str:
    """The bar's and the frame's style, in the zone's colour."""
    r, g, b = colour
    return (f"#bar, #frame {{ background-color: rgb({r}, {g}, {b}); }}\n"
            "#bar label { color: white; font-weight: bold; }\n"
            # buttons no higher than a row, and narrow
            "#bar button { min-height: 0; padding: 1px 4px; }\n"
            "#bar button:checked { background: rgba(0, 0, 0, 0.3); }\n")  # "Menu" open


def label(text: str = "", xalign: float = 0.5, wrap: bool = False) -> Any:
    """A label that never widens the window."""
    lbl = Gtk.Label(label=text, xalign=xalign)
    if wrap:
        lbl.set_line_wrap(True)
        lbl.set_max_width_chars(80)
    else:
        lbl.set_ellipsize(Pango.EllipsizeMode.END)
    return lbl


class KeptLabel(Gtk.Label):  # type: ignore[misc]  # GTK has no types here
    """A label the bar shortens last: its least width is its whole text's, up to
    :data:`KEPT_PX` (past that it ellipsizes too)."""

    def __init__(self) -> None:
        super().__init__(xalign=0)
        self.set_ellipsize(Pango.EllipsizeMode.END)

    def do_get_preferred_width(self) -> tuple[int, int]:
        least, natural = Gtk.Label.do_get_preferred_width(self)
        return max(least, min(natural, KEPT_PX)), natural


def flat_button(text: str, clicked: Callable[[], None]) -> Any:
    """A bar button: no relief, never the keyboard focus (a key goes to a VM only)."""
    button = Gtk.Button(label=text)
    button.set_relief(Gtk.ReliefStyle.NONE)
    button.set_can_focus(False)
    button.connect("clicked", lambda _b: clicked())
    return button


_ARROWS = {"Down": 1, "KP_Down": 1, "Up": -1, "KP_Up": -1}


def _arrows(rows: Any, event: Any) -> bool:
    """Down and Up move between the menu's items, round at its ends (a popover leaves
    them to the window, which looks for the next item outside it)."""
    step = _ARROWS.get(Gdk.keyval_name(event.keyval) or "")
    if step is None:
        return False
    items = _items(rows)
    here = next((i for i, w in enumerate(items) if w.is_focus()), -step)
    items[(here + step) % len(items)].grab_focus()
    return True


def _items(rows: Any) -> list[Any]:
    """The menu's items that can be chosen now (not greyed, not hidden)."""
    return [w for w in rows.get_children()
            if w.get_can_focus() and w.is_visible() and w.is_sensitive()]


def _row() -> Any:
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=2 * FRAME_PX)
    row.set_size_request(-1, ROW_PX)
    row.set_margin_start(FRAME_PX)
    row.set_margin_end(4 * FRAME_PX)  # the bar's last pixels stay its colour
    return row


class Bar:
    """The bar: ``act(name)`` runs an action, pauses or resumes the shown VM (``"vm"``),
    mutes it (``"sound"``), opens the USB menu (``"usb"``), the install page
    (``"install"``) or the restore page (``"restore"``); ``networks()`` opens the Wi-Fi
    page.  ``buttons[name]`` clicks as a person's click does, on the bar or in the menu."""

    def __init__(self, act: Callable[[str], None], networks: Callable[[], None]) -> None:
        self.widget = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        self.widget.set_name("bar")
        top, status = _row(), _row()
        self.widget.pack_start(top, False, False, 0)
        self.widget.pack_start(status, False, False, 0)
        self.title = KeptLabel()
        top.pack_start(self.title, True, True, 0)
        self.buttons: dict[str, Any] = {}
        for name, text in (("vm", "Pause"), ("sound", ""), ("usb", "USB")):  # the shown VM's
            self.buttons[name] = flat_button(text, functools.partial(act, name))
            top.pack_start(self.buttons[name], False, False, 0)
        self.focus_before: Any = None  # the focus when Super+M opened "Menu"
        self.menu_button = Gtk.MenuButton(label="Menu")
        self.menu_button.set_relief(Gtk.ReliefStyle.NONE)
        self.menu_button.set_can_focus(False)
        top.pack_start(self.menu_button, False, False, 0)
        self.power = label(xalign=1)
        top.pack_end(self.power, False, False, 0)
        self.wifi = label(xalign=1)
        wifi_button = Gtk.EventBox()  # a click opens the Wi-Fi page
        wifi_button.add(self.wifi)
        wifi_button.connect("button-press-event", lambda *_a: networks())
        top.pack_end(wifi_button, False, False, 0)
        self.install = KeptLabel()
        status.pack_start(self.install, False, False, 0)
        self.action_message = label(xalign=0)
        status.pack_start(self.action_message, True, True, 0)
        self.buttons["later"] = flat_button(actions.ACTIONS["later"][0],
                                            functools.partial(act, "later"))
        self.buttons["later"].set_no_show_all(True)  # shown while a restart is planned
        status.pack_end(self.buttons["later"], False, False, 0)
        self.sync = label(xalign=1)  # beside "Later": "restart to update"
        status.pack_end(self.sync, False, False, 0)
        self.pending = label(xalign=1)
        status.pack_end(self.pending, False, False, 0)
        for field in (self.title, self.wifi, self.power, self.install, self.action_message,
                      self.pending, self.sync):  # what an ellipsis hides: on the pointer
            field.connect("notify::label", lambda lbl, _p: lbl.set_tooltip_text(
                lbl.get_text() or None))
        self.twins: dict[str, Any] = {}  # the bar's buttons' items in "Menu"
        self.rows = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)  # "Menu"'s
        self.menu_button.set_popover(self._menu(act))
        self.menu: Any = None  # the USB menu

    def _menu(self, act: Callable[[str], None]) -> Any:
        """The popover of "Menu": one item a row of :data:`MENU`."""
        self.rows.set_border_width(FRAME_PX)
        for row in MENU:
            if row is None:
                self.rows.pack_start(Gtk.Separator(), False, False, FRAME_PX // 2)
                continue
            name, text = row
            item = Gtk.ModelButton(text=text)
            if name in TWINS:
                self.twins[name] = item
                item.connect("clicked", lambda _b, name=name: self.buttons[name].clicked())
            else:
                self.buttons[name] = item
                item.connect("clicked", lambda _b, name=name: act(name))
            self.rows.pack_start(item, False, False, 0)
        self.rows.show_all()
        sync = GObject.BindingFlags.SYNC_CREATE
        texts = dict(r for r in MENU if r)
        for name, item in self.twins.items():  # each as its button is
            button, text = self.buttons[name], texts[name]
            button.bind_property("sensitive", item, "sensitive", sync)
            if "{}" in text:
                button.bind_property("label", item, "text", sync,
                                     lambda _b, v, text=text: text.format(v or ""))
        self.buttons["sound"].bind_property("label", self.twins["sound"], "visible", sync,
                                            lambda _b, v: bool(v))  # no VM shown: none
        self.buttons["later"].bind_property("visible", self.twins["later"], "visible", sync)
        popover = Gtk.Popover()
        popover.add(self.rows)
        popover.connect("key-press-event", lambda _p, event: _arrows(self.rows, event))
        popover.connect("unmap", self._closed)  # after GTK put back its focus
        return popover

    def menu_open(self) -> bool:
        """Whether "Menu" is open (its items have the keys: the shell leaves them there)."""
        return bool(self.menu_button.get_active()  # not while closing
                    and self.menu_button.get_popover().get_visible())  # nor closed

    def toggle_menu(self) -> None:
        """"Menu" opened, its first item with the keyboard focus; or closed."""
        if self.menu_open():
            self.menu_button.set_active(False)
            return
        self.focus_before = self.widget.get_toplevel().get_focus()  # the VM's, or none
        self.menu_button.set_active(True)
        # its popover focuses its first item when it maps, not while it is still closing
        _items(self.rows)[0].grab_focus()

    def _closed(self, popover: Any) -> None:
        """The keys back where they were before Super+M (the VM's, if still on the
        screen), never left with an item of the closed menu (a Return would choose it
        unseen); a page an item opened keeps them."""
        before, self.focus_before = self.focus_before, None
        # "Menu" up again: GTK leaves it down when the popover closes as the VM's
        # display takes the keys back (seen with a twin's click; not with a page's field)
        self.menu_button.set_active(False)
        window = self.widget.get_toplevel()
        focus = window.get_focus()
        if focus is not None and not focus.is_ancestor(popover):
            return
        if before is not None and before.get_toplevel() is window and before.is_drawable():
            before.grab_focus()
        else:
            window.set_focus(None)

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
        """The USB menu and "Menu" closed."""
        self.menu_button.set_active(False)
        if self.menu is not None:
            self.menu.popdown()
            self.menu = None

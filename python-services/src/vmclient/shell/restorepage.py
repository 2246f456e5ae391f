"""The page "restore a VM from the datacenter" (the bar menu's "Restore a VM…").

On a new laptop, after IT's ``vmclient-admin restore VM --to DEVICE`` (or ``rekey``),
the person sees here the VMs the datacenter keeps for this laptop, each with its
latest snapshot's time, as provd lists them (``ListRestorable``) less the VMs the shell
lists here (:mod:`.restoring`: a VM on the laptop is never replaced from here), and a
button per VM.  A button is provd's ``RestoreStreamed``: the VM runs within seconds
while its disk streams in, and it is shown as soon as it runs.  How far its disk is
(provd's ``Fills``) stays on this page and in the bar's install field until all of it is
here.  A refusal (no lease, the datacenter refusing, the link down) is said in words
(:func:`.restoring.failure_text`).  Escape goes back to the desktop; a restore goes on.

Who may: provd's ``ListRestorable`` and ``RestoreStreamed`` (polkit action
``org.vmclient.VMClient1.provision.manage``, as for the install page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gi

from ..dbus import names
from . import bar, bus, restoring

gi.require_version("Gio", "2.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gio, GLib, Gtk  # noqa: E402

LIST_TIMEOUT_MS = 120_000  # a listing of the device's directory in the datacenter
RESTORE_TIMEOUT_MS = 3600 * 1000  # replies once the VM runs (a memory image comes whole)
FLAGS = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION

CSS = """
#restore { background-color: rgb(40, 40, 40); }
#restore label { color: white; }
#restore button label { color: rgb(30, 30, 30); }
"""


def _label(text: str = "") -> Any:
    lbl = Gtk.Label(label=text)
    lbl.set_line_wrap(True)  # no text widens the window
    lbl.set_max_width_chars(80)
    return lbl


class RestorePage:
    def __init__(self, conn: Any, here: Callable[[], Iterable[str]],
                 started: Callable[[str], None], say: Callable[[str], None]) -> None:
        """``here()``: the VMs' names on the laptop now; ``started(vm)``: a restored VM
        runs (show it); ``say(text)``: the bar's action message."""
        self.conn, self.here, self.started, self.say = conn, here, started, say
        self.widget = Gtk.EventBox()
        self.widget.set_name("restore")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        box.set_halign(Gtk.Align.CENTER)
        box.set_valign(Gtk.Align.CENTER)
        self.list = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self.buttons: dict[str, Any] = {}  # vm → its button
        self.message, self.progress = _label(), _label()
        for w in (_label("Restore a VM from the datacenter"), _label(restoring.NOTE),
                  self.list, self.message, self.progress):
            box.pack_start(w, False, False, 0)
        self.widget.add(box)
        self.busy = ""  # the VM being restored
        self.listing = False  # ListRestorable asked, not answered yet
        self.restored: list[str] = []  # the VMs this page restored, in order
        self.seen: set[str] = set()  # of those, the ones seen filling
        self.fills: dict[str, int] = {}  # VM → percent of its disk here

    def open(self) -> None:
        """Before the page is shown: the list, asked of provd afresh (one listing at a
        time: each is a walk of the device's directory in the datacenter)."""
        if self.listing:
            return
        self.listing = True
        if not self.busy:
            self.message.set_text("Asking the datacenter which VMs it keeps for this "
                                  "laptop\u2026")
        self.conn.call(names.PROVISION_BUS_NAME, names.PROVISION_PATH, names.PROVISION_IFACE,
                       "ListRestorable", None, GLib.VariantType.new("(a(sst))"), FLAGS,
                       LIST_TIMEOUT_MS, None, self._listed)

    def _listed(self, conn: Any, res: Any) -> None:
        self.listing = False
        try:
            (rows,) = conn.call_finish(res).unpack()
        except GLib.Error as err:
            self.message.set_text(restoring.list_failure_text(*_words(err)))
            return
        self.show(restoring.offers(rows, self.here()))

    def show(self, offers: list[restoring.Offer]) -> None:
        for child in self.list.get_children():
            self.list.remove(child)
        self.buttons = {}
        for o in offers:
            button = Gtk.Button(label=restoring.offer_text(o))
            button.connect("clicked", lambda _b, vm=o.vm: self.restore(vm))
            self.list.pack_start(button, False, False, 0)
            self.buttons[o.vm] = button
        self.list.show_all()
        if not self.busy:
            self.message.set_text("" if offers else restoring.NOTHING)
        self.focus()

    def focus(self) -> None:
        """The first button focused (Return restores it), unless one has the focus."""
        top = self.widget.get_toplevel()
        focused = top.get_focus() if isinstance(top, Gtk.Window) else None
        if (focused is None or not focused.is_ancestor(self.widget)) and self.buttons:
            next(iter(self.buttons.values())).grab_focus()

    def _tell(self, text: str) -> None:
        self.message.set_text(text)
        self.say(text)

    def restore(self, vm: str) -> None:
        if self.busy:
            self.message.set_text(f"Restoring {self.busy}\u2026 (one at a time)")
            return
        self.busy = vm
        self._tell(f"Restoring {vm}: it runs in a few seconds\u2026")
        self.conn.call(names.PROVISION_BUS_NAME, names.PROVISION_PATH, names.PROVISION_IFACE,
                       "RestoreStreamed", GLib.Variant("(sss)", (vm, "", "")),
                       GLib.VariantType.new("(s)"), FLAGS, RESTORE_TIMEOUT_MS, None,
                       self._restored)

    def _restored(self, conn: Any, res: Any) -> None:
        vm, self.busy = self.busy, ""
        try:
            conn.call_finish(res)
        except GLib.Error as err:
            self._tell(restoring.failure_text(vm, *_words(err)))
            return
        button = self.buttons.pop(vm, None)
        if button is not None:
            self.list.remove(button)
        self.restored.append(vm)
        self._tell(f"{vm} runs while its disk streams in from the datacenter: keep the "
                   "network until all of it is here")
        self.progress.set_text(restoring.fill_text(self.restored, self.seen, self.fills))
        self.started(vm)

    def fills_changed(self, untrusted_fills: Any) -> None:
        """provd's ``Fills`` changed: how far the disks of the VMs restored here are."""
        self.fills = bar.fill_percents(untrusted_fills)
        self.seen |= set(self.fills) & set(self.restored)
        self.progress.set_text(restoring.fill_text(self.restored, self.seen, self.fills))


def _words(err: Any) -> tuple[str, str]:
    """A D-Bus error's name and message."""
    e = bus.remote_error(err)
    return e.remote_name, str(e)

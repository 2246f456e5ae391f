"""The page "install a private VM from media" (the bar menu's "Install a private VM…").

A name, the memory and the system disk's size, the firmware, and the installer (an
ISO) from the person's own files: GTK's file chooser, embedded in the page (the kiosk
shows one window).  Install, or Return in the name field: the values become a recipe
(:mod:`.privatevm`, checked as vmclient-provd checks it); the shell opens the file
itself, with the seat user's own rights (:func:`vmclient.provision.media.open_for_caller`,
as ``vmclientctl vm install`` does), and passes the descriptor to provd's
``InstallFromMedia``, which copies it into its own storage.  The page (and the bar's
install field) shows provd's progress meanwhile.  Once installed the VM is started (provd's
``Start``) and shown as soon as it runs: the installer's display.  A refusal is shown
as provd words it.  Escape goes back to the desktop; an install goes on, its outcome
then in the bar.

Who may: ``InstallFromMedia`` and ``Start`` are provd's (polkit action
``org.vmclient.VMClient1.provision.manage``, which the shipped rule grants the
``vmclient`` group the seat's user is in, as for the other calls of the bar).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names
from ..errors import VMClientError
from . import privatevm

gi.require_version("Gio", "2.0")
gi.require_version("Gtk", "3.0")
gi.require_version("Pango", "1.0")
from gi.repository import Gio, GLib, Gtk, Pango  # noqa: E402

INSTALL_TIMEOUT_MS = 6 * 3600 * 1000  # InstallFromMedia replies when the copy is done
START_TIMEOUT_MS = 120_000
FLAGS = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION

CSS = """
#install { background-color: rgb(40, 40, 40); }
#install label { color: white; }
"""


def _spin(lo: int, hi: int, value: int) -> Any:
    spin = Gtk.SpinButton.new_with_range(lo, hi, 1)
    spin.set_value(value)
    return spin


class InstallPage:
    def __init__(self, conn: Any, existing: Callable[[], list[str]],
                 started: Callable[[str], None], say: Callable[[str], None]) -> None:
        """``existing()``: the VMs' names now; ``started(vm)``: the new VM was started
        (show it); ``say(text)``: the bar's action message."""
        self.conn, self.existing, self.started, self.say = conn, existing, started, say
        self.widget = Gtk.EventBox()
        self.widget.set_name("install")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        box.set_halign(Gtk.Align.CENTER)
        box.set_valign(Gtk.Align.CENTER)
        grid = Gtk.Grid(column_spacing=12, row_spacing=6)
        self.name = Gtk.Entry()
        self.name.set_width_chars(32)
        self.name.set_placeholder_text("home")
        self.name.connect("activate", lambda _e: self.install())
        self.memory = _spin(*privatevm.MEMORY_GIB)
        self.disk = _spin(*privatevm.DISK_GIB)
        self.firmware = Gtk.ComboBoxText()
        for key, text in privatevm.FIRMWARE.items():
            self.firmware.append(key, text)
        self.firmware.set_active_id("uefi")
        for row, (text, w) in enumerate((("Name", self.name), ("Memory (GiB)", self.memory),
                                         ("Disk (GiB)", self.disk),
                                         ("Firmware", self.firmware))):
            grid.attach(Gtk.Label(label=text, xalign=1), 0, row, 1, 1)
            grid.attach(w, 1, row, 1, 1)
        self.chooser: Any = None  # made when the page first opens (:meth:`open`)
        self.chooser_box = Gtk.Box()
        button = Gtk.Button(label="Install")
        button.connect("clicked", lambda _b: self.install())
        self.message = Gtk.Label(label="Choose the installer (an ISO file) and a name")
        self.message.set_line_wrap(True)  # a long path too: no text widens the window
        self.message.set_line_wrap_mode(Pango.WrapMode.WORD_CHAR)
        self.message.set_max_width_chars(80)
        self.progress = Gtk.Label(label="")  # provd's install progress, as the bar's
        self.progress.set_ellipsize(Pango.EllipsizeMode.END)
        self.bar = Gtk.ProgressBar()  # of the phase that counts bytes (the ISO's copy)
        self.bar.set_no_show_all(True)
        for w in (Gtk.Label(label="Install a private VM from media"), grid,
                  Gtk.Label(label="The installer:", xalign=0), self.chooser_box, button,
                  self.message, self.progress, self.bar):
            box.pack_start(w, False, False, 0)
        self.widget.add(box)
        self.busy = ""  # the VM being installed

    def open(self) -> None:
        """Before the page is shown: its file chooser, made the first time (GTK's file
        chooser costs start-up time and memory an idle shell does without)."""
        if self.chooser is not None:
            return
        self.chooser = Gtk.FileChooserWidget(action=Gtk.FileChooserAction.OPEN)
        self.chooser.set_local_only(True)  # a file the shell can open itself
        if os.path.isdir(GLib.get_home_dir()):  # (the seat user's may not exist)
            self.chooser.set_current_folder(GLib.get_home_dir())
        for title, patterns in (("Installer images (ISO)", ("*.iso", "*.ISO")),
                                ("All files", ("*",))):
            f = Gtk.FileFilter()
            f.set_name(title)
            for p in patterns:
                f.add_pattern(p)
            self.chooser.add_filter(f)
        self.chooser.set_size_request(640, 320)
        self.chooser.connect("file-activated", lambda _c: self.install())
        self.chooser_box.pack_start(self.chooser, True, True, 0)
        self.chooser.show_all()

    def show_progress(self, text: str, fraction: float | None) -> None:
        """provd's progress (:func:`.bar.install_text`, :func:`.bar.install_fraction`):
        the line, and the bar while a phase counts bytes."""
        self.progress.set_text(text)
        if fraction is not None:
            self.bar.set_fraction(fraction)
        self.bar.set_visible(fraction is not None)

    def file(self) -> str:
        """The file chosen ("" none)."""
        return (self.chooser.get_filename() if self.chooser is not None else None) or ""

    def focus(self) -> None:
        """The name field focused, unless a field of the page has the focus already."""
        top = self.widget.get_toplevel()
        focused = top.get_focus() if isinstance(top, Gtk.Window) else None
        if focused is None or not focused.is_ancestor(self.widget):
            self.name.grab_focus_without_selecting()

    def values(self) -> privatevm.NewVM:
        return privatevm.NewVM(self.name.get_text().strip(), self.file(),
                               self.memory.get_value_as_int(), self.disk.get_value_as_int(),
                               self.firmware.get_active_id() or "uefi")

    def _tell(self, text: str) -> None:
        self.message.set_text(text)
        self.say(text)

    def install(self) -> None:
        if self.busy:
            self.message.set_text(f"Installing {self.busy}\u2026 (one at a time)")
            return
        from ..provision import media  # (not at start: privatevm's note)

        vm = self.values()
        try:
            recipe = privatevm.recipe_toml(vm, self.existing())
            fd = media.open_for_caller(vm.media)  # with the seat user's rights
        except (privatevm.PageError, VMClientError) as exc:
            self.message.set_text(str(exc))
            return
        fds = Gio.UnixFDList.new_from_array([fd])  # it owns the descriptor now
        self.busy = vm.name
        self._tell(f"Installing {vm.name}\u2026 (Escape: back to the desktop; the install "
                   "goes on)")
        self.conn.call_with_unix_fd_list(
            names.PROVISION_BUS_NAME, names.PROVISION_PATH, names.PROVISION_IFACE,
            "InstallFromMedia", GLib.Variant("(sh)", (recipe, 0)), GLib.VariantType.new("(s)"),
            FLAGS, INSTALL_TIMEOUT_MS, fds, None, self._installed)

    def _failed(self, what: str, err: Any) -> None:
        Gio.DBusError.strip_remote_error(err)
        self._tell(f"{what}: {err.message}")
        self.busy = ""

    def _installed(self, conn: Any, res: Any) -> None:
        try:
            reply, _fds = conn.call_with_unix_fd_list_finish(res)
        except GLib.Error as err:
            self._failed(f"{self.busy} not installed", err)
            return
        (vm,) = reply.unpack()
        self.busy = vm
        self._tell(f"{vm} installed; starting it\u2026")
        conn.call(names.PROVISION_BUS_NAME, names.PROVISION_PATH, names.PROVISION_IFACE,
                  "Start", GLib.Variant("(s)", (vm,)), None, FLAGS, START_TIMEOUT_MS, None,
                  self._started)

    def _started(self, conn: Any, res: Any) -> None:
        vm = self.busy
        try:
            conn.call_finish(res)
        except GLib.Error as err:
            self._failed(f"{vm} installed, but it did not start", err)
            return
        self.busy = ""
        self.name.set_text("")
        self._tell(f"{vm} started: its installer is on the screen")
        self.started(vm)

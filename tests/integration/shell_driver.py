"""vmclient-shell under test, with a control line on stdin/stdout (test-only).

Commands, one a line; each answers one JSON line:
  state                 -> {"current", "locked", "vms", "display": [x, y, w, h] | null,
                            "bar": [title, power, sync], "none": the no-VM page's text,
                            "min_width": the least width the window asks for,
                            "fit": {title, install: the bar's labels as laid out},
                            "menu": the bar's "Menu" open?, "keys_to": who has the keys,
                            "overview": open?, "tiles": {vm: [x, y, w, h] of its thumbnail},
                            "first": the first start: open, step, title, message, ...}
  key CODE NAME [MOD..] -> a key press and release (evdev CODE, GDK key NAME, modifiers
                           super/shift/ctrl/alt) delivered to the shell's window as GTK
                           delivers the compositor's (Weston's headless backend has no
                           seat, so no keyboard of its own)
  press|release CODE NAME [MOD..]
                        -> that key's press, or its release, alone (a modifier held)
  type TEXT             -> TEXT typed, one key press and release a character
  choose SSID           -> a click on SSID's row of the Wi-Fi page (the first start's while
                           it is open)
  click ACTION          -> a click on the bar's button ACTION (vm: the shown VM's
                           pause/resume; sound; usb; later), or on the item ACTION of the
                           bar's "Menu" (install: the install page; restore: the restore
                           page; sync, pause, resume, shutdown)
  restore VM            -> a click on the restore page's button of VM ({"ok": false}: none)
  media MEM DISK FIRMWARE PATH
                        -> the install page's memory and disk (GiB), firmware (uefi, bios)
                           and, in its file chooser, the file PATH (chosen once the chooser
                           has loaded its folder: "install"'s "file" in state)
  switch                -> Super+Tab, answered once GTK has painted the next frame:
                           {"ms": from the key press to that frame, "current": vm}
  poke                  -> a Shift press and release through GDK's event queue (the
                           path a compositor's input takes, which the idle hint watches)
  lock | unlock         -> the lock page on / off
The product has no such channel: this file is not part of it.  The shell here shows
only the VMs whose names start with $VMCLIENT_TEST_PREFIX: the libvirtd is shared
with other tests, and their vmclient VMs are not this test's business.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import gi

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gdk, GLib, Gtk

from vmclient import log as vlog
from vmclient.shell import bus, state
from vmclient.shell.idle import IdleHint
from vmclient.shell.window import Shell

MODS = {"super": Gdk.ModifierType.SUPER_MASK | Gdk.ModifierType.MOD4_MASK,
        "shift": Gdk.ModifierType.SHIFT_MASK, "ctrl": Gdk.ModifierType.CONTROL_MASK,
        "alt": Gdk.ModifierType.MOD1_MASK}


class ShellUnderTest(Shell):
    prefix = os.environ["VMCLIENT_TEST_PREFIX"]

    def set_vms(self, entries: list[state.VMEntry]) -> None:
        super().set_vms([e for e in entries if e.name.startswith(self.prefix)])


def main() -> int:
    vlog.setup(debug=True)
    shell = ShellUnderTest(bus.system_bus())
    installs: list[str] = []  # every text the bar's install field showed, in order
    shell.statusbar.install.connect("notify::label",
                                    lambda lbl, _p: installs.append(lbl.get_text()))
    fractions: list[float] = []  # every fraction the install page's progress bar showed
    shell.install.bar.connect("notify::fraction",
                              lambda b, _p: fractions.append(round(b.get_fraction(), 4)))
    syncs: list[str] = []  # and its sync field
    shell.statusbar.sync.connect("notify::label", lambda lbl, _p: syncs.append(lbl.get_text()))
    first_progress: list[str] = []  # and the first start's progress line
    shell.first.progress.connect("notify::label",
                                 lambda lbl, _p: first_progress.append(lbl.get_text()))
    restore_progress: list[str] = []  # and the restore page's progress
    shell.restore.progress.connect("notify::label",
                                   lambda lbl, _p: restore_progress.append(lbl.get_text()))
    shell.start()
    idle = IdleHint(shell.conn, idle_after=float(os.environ.get("VMCLIENT_TEST_IDLE_S", "900")),
                    check_s=1)  # as main() starts it, sooner
    idle.start()

    def reply(obj: Any) -> None:
        print(json.dumps(obj), flush=True)

    def rect_of(w: Any) -> list[int] | None:
        if w is None or not w.get_mapped():
            return None
        x, y = w.translate_coordinates(shell.window, 0, 0)
        a = w.get_allocation()
        return [x, y, a.width, a.height]

    def thumbnail(image: Any) -> list[int] | None:
        """Where the image's pixbuf is drawn: centred in the widget."""
        r, pix = rect_of(image), image.get_pixbuf()
        if r is None or pix is None:
            return None
        w, h = pix.get_width(), pix.get_height()
        return [r[0] + (r[2] - w) // 2, r[1] + (r[3] - h) // 2, w, h]

    def whole(lbl: Any) -> list[Any]:
        """A bar label as laid out: [ellipsized, its allocated width, its text's width]."""
        text = lbl.create_pango_layout(lbl.get_text()).get_pixel_size()[0]
        return [lbl.get_layout().is_ellipsized(), lbl.get_allocation().width, text]

    def keys_to() -> str | None:
        """Who has the keyboard: "display" (the shown VM's), an item of the bar's menu (its
        key; "twin-vm": the item of the bar's button "vm"), "other"."""
        focus = shell.window.get_focus()
        if focus is None:
            return None
        if focus is shell.current_display():
            return "display"
        items = {**shell.statusbar.buttons,
                 **{f"twin-{k}": b for k, b in shell.statusbar.twins.items()}}
        return next((k for k, b in items.items() if b is focus), "other")

    def info() -> dict[str, Any]:
        rect = rect_of(shell.current_display())
        return {"current": shell.state.current, "locked": shell.state.locked,
                "vms": [[v.name, v.zone.value, v.state] for v in shell.state.vms],
                "display": rect,
                "bar": [shell.statusbar.title.get_text(), shell.statusbar.power.get_text(),
                        shell.statusbar.sync.get_text()],
                "none": shell.pages.none_label.get_text(),
                "min_width": shell.window.get_preferred_width()[0],
                "fit": {"title": whole(shell.statusbar.title),
                        "install": whole(shell.statusbar.install)},
                "menu": shell.statusbar.menu_open(), "keys_to": keys_to(),
                "overview": shell.state.overview, "asleep": shell.state.asleep,
                "pause_delay": shell.pause_delay.held,
                "sound": {n: [d.sound.recording_allowed, d.sound.muted]
                          for n, d in shell.displays.items()},
                "sound_button": shell.statusbar.buttons["sound"].get_label(),
                "later": shell.statusbar.buttons["later"].get_visible(),
                "usb": {n: bool(m.props.auto_connect) for n, m in shell.usb.managers.items()},
                "usb_unavailable": shell.usb.unavailable,
                "lock_message": shell.lock_page.message.get_text(),
                "checking": shell.lock_page.checking,
                "wifi": shell.statusbar.wifi.get_text(),
                "pending": shell.statusbar.pending.get_text(),
                "networks": shell.state.networks,
                "network_rows": [b.get_label() for b in shell.networks.list.get_children()],
                "network_message": shell.networks.message.get_text(),
                "installs": installs, "syncs": syncs,
                "action_message": shell.statusbar.action_message.get_text(),
                "vm_button": [shell.statusbar.buttons["vm"].get_label(),
                              shell.statusbar.buttons["vm"].get_sensitive()],
                "install": {"open": shell.state.install, "name": shell.install.name.get_text(),
                            "file": shell.install.file(),
                            "message": shell.install.message.get_text(),
                            "fractions": fractions,
                            "page": shell.top.get_visible_child_name()},
                "restore": {"open": shell.state.restore,
                            "offers": [b.get_label() for b in shell.restore.buttons.values()],
                            "message": shell.restore.message.get_text(),
                            "progress": shell.restore.progress.get_text(),
                            "page": shell.top.get_visible_child_name()},
                "restore_progresses": restore_progress,
                "tiles": {n: thumbnail(t[1]) for n, t in shell.overview.tiles.items()},
                "first": {"open": shell.first_open, "step": shell.first.state.step.value,
                          "title": shell.first.title.get_text(),
                          "message": shell.first.message.get_text(),
                          "progress": shell.first.progress.get_text(),
                          "entry": shell.first.entry.get_text(),
                          "progresses": first_progress,
                          "rows": [b.get_label()
                                   for b in shell.first.networks.list.get_children()],
                          "page": shell.top.get_visible_child_name()}}

    def key(code: int, name: str, mods: list[str],
            kinds: tuple[Gdk.EventType, ...] = (Gdk.EventType.KEY_PRESS,
                                                Gdk.EventType.KEY_RELEASE)) -> None:
        state = Gdk.ModifierType(0)
        for m in mods:
            state |= MODS[m]
        for kind in kinds:
            ev = Gdk.Event.new(kind)
            ev.key.window = shell.window.get_window()
            ev.key.send_event = True
            ev.key.hardware_keycode = code + 8  # evdev code -> Wayland/XKB keycode
            ev.key.keyval = Gdk.keyval_from_name(name)
            ev.key.state = state
            ev.key.time = Gtk.get_current_event_time()
            shell.window.event(ev)

    def typed(text: str) -> None:
        for ch in text:
            for kind in (Gdk.EventType.KEY_PRESS, Gdk.EventType.KEY_RELEASE):
                ev = Gdk.Event.new(kind)
                ev.key.window = shell.window.get_window()
                ev.key.send_event = True
                ev.key.keyval = Gdk.unicode_to_keyval(ord(ch))
                ev.key.string = ch
                ev.key.length = 1
                ev.key.time = Gtk.get_current_event_time()
                shell.window.event(ev)

    def on_line(_fd: int, _cond: Any) -> bool:
        line = sys.stdin.readline()
        if not line:
            Gtk.main_quit()
            return False
        cmd, *args = line.split(None, 1) if line.startswith("type ") else line.split()
        if cmd == "state":
            reply(info())
        elif cmd == "key":
            key(int(args[0]), args[1], args[2:])
            reply({"ok": True})
        elif cmd in ("press", "release"):
            key(int(args[0]), args[1], args[2:], (Gdk.EventType.KEY_PRESS if cmd == "press"
                                                  else Gdk.EventType.KEY_RELEASE,))
            reply({"ok": True})
        elif cmd == "type":
            typed(args[0].rstrip("\n"))
            reply({"ok": True})
        elif cmd == "click":
            shell.statusbar.buttons[args[0]].clicked()
            reply({"ok": True})
        elif cmd == "restore":
            button = shell.restore.buttons.get(args[0])
            if button is not None:
                button.clicked()
            reply({"ok": button is not None})
        elif cmd == "media":
            page = shell.install
            page.memory.set_value(int(args[0]))
            page.disk.set_value(int(args[1]))
            page.firmware.set_active_id(args[2])
            page.chooser.set_filename(args[3])
            reply({"ok": True})
        elif cmd == "choose":  # the first start's Wi-Fi page while it is open
            (shell.first.networks if shell.first_open else shell.networks).choose(args[0])
            reply({"ok": True})
        elif cmd == "switch":
            clock = shell.window.get_frame_clock()
            t0 = time.perf_counter()
            handler = 0

            def painted(_clock: Any) -> None:
                clock.disconnect(handler)
                reply({"ms": (time.perf_counter() - t0) * 1000,
                       "current": shell.state.current})
            handler = clock.connect("after-paint", painted)
            key(15, "Tab", ["super"])
        elif cmd == "poke":  # a Shift press and release through GDK's queue, as input comes
            for kind in (Gdk.EventType.KEY_PRESS, Gdk.EventType.KEY_RELEASE):
                ev = Gdk.Event.new(kind)
                ev.key.window = shell.window.get_window()
                ev.key.send_event = True
                ev.key.keyval = Gdk.keyval_from_name("Shift_L")
                ev.key.hardware_keycode = 42 + 8
                ev.key.time = Gtk.get_current_event_time()
                ev.put()
            reply({"ok": True})
        elif cmd == "lock":
            shell.lock()
            reply({"ok": True})
        elif cmd == "unlock":
            shell.unlock()
            reply({"ok": True})
        else:
            reply({"error": f"unknown command {cmd!r}"})
        return True

    GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, sys.stdin.fileno(),
                          GLib.IOCondition.IN | GLib.IOCondition.HUP, on_line)
    Gtk.main()
    shell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

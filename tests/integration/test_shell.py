"""vmclient-shell on a real (headless) Weston, against vmclient-provd and real QEMU guests
that paint known bands and echo keystrokes; assertions on the composited pixels."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dbus
import libvirt
import pytest
from echo_guest import EchoGuests, boot_sector, echo_guests
from fixtures_bus import PrivateSystemBus
from fixtures_virt import open_libvirt
from iso_media import el_torito_iso
from pixels import Image
from powerd_harness import Logind, PowerDaemon
from provd_harness import ProvDaemon
from shell_harness import (
    HEIGHT,
    USER,
    WIDTH,
    PasswordSandbox,
    ShellUnderTest,
    Weston,
    need_desktop,
    stop_desk,
    user_dir,
    wait_for,
)

from testlib import need
from vmclient.shell.barview import BAR_PX, FRAME_PX
from vmclient.shell.lockpage import PROMPT
from vmclient.shell.state import ZONE_COLOURS, Zone

ACTION = "org.vmclient.VMClient1.open-display"
KEY_TAB, KEY_H, KEY_I, KEY_SPACE, KEY_2, KEY_L, KEY_ENTER, KEY_A = 15, 35, 23, 57, 3, 38, 28, 30
KEY_E, KEY_SUPER, KEY_M = 18, 125, 50  # evdev's KEY_E, KEY_LEFTMETA, KEY_M
PASSWORD = "Correct horse-7"  # the shell's user's, in its PAM sandbox (shell_harness)
GUEST_W, GUEST_H = 720, 400  # the guests' 80x25 text mode


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_desktop("weston-screenshooter")


@dataclass
class Desk:
    guests: EchoGuests
    weston: Weston
    shell: ShellUnderTest
    business: str
    private: str


def seat_provd(system_bus: PrivateSystemBus, tmp_path: Path) -> ProvDaemon:
    """provd started, polkit allowing the shell (in the seat's active session) to open
    displays and pause."""
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.power.manage"])
    return ProvDaemon(system_bus, tmp_path).start()


@pytest.fixture
def desk(system_bus: PrivateSystemBus, logind: Logind, tmp_path: Path) -> Iterator[Desk]:
    provd = seat_provd(system_bus, tmp_path)
    weston = shell = None
    try:
        prefix = f"vmcs-{uuid.uuid4().hex[:6]}"
        with echo_guests(prefix) as guests:
            business = guests.create("work", "business", 0, "W")
            private = guests.create("home", "private", 1, "H")
            weston = Weston()
            shell = ShellUnderTest(weston, system_bus, tmp_path, prefix + "-",
                                   PasswordSandbox(tmp_path, "nobody", PASSWORD),
                                   groups=("vmclient",))
            yield Desk(guests, weston, shell, business, private)
            shell.stop()
            assert "Traceback" not in shell.log(), shell.log()
    finally:
        stop_desk(shell, weston, provd)
    assert "Traceback" not in provd.log(), provd.log()


def guest_area(rect: list[int]) -> tuple[int, int, int, int]:
    """Where the SPICE widget draws the guest: scaled to fit, aspect kept, centred."""
    x, y, w, h = rect
    scale = min(w / GUEST_W, h / GUEST_H)
    dw, dh = int(GUEST_W * scale), int(GUEST_H * scale)
    return x + (w - dw) // 2, y + (h - dh) // 2, dw, dh


def difference(screen: Image, area: tuple[int, int, int, int], guest: Image) -> float:
    """Mean difference of the shell's picture of a guest and QEMU's, inset from the edges
    (scaling filters differ there)."""
    x, y, w, h = area
    inset = 4
    shown = screen.crop(x + inset, y + inset, w - 2 * inset, h - 2 * inset)
    expected = guest.scaled(w, h).crop(inset, inset, w - 2 * inset, h - 2 * inset)
    return shown.reduced(6).mean_difference(expected.reduced(6))


MATCH = 8.0  # mean per-channel difference of the same picture through two scalers


def shows(d: Desk, vm: str, other: str | None) -> tuple[Image, float, float]:
    """Wait until the screen shows ``vm``'s current picture; returns (screen, diffs)."""
    mine = d.guests.screenshot(vm)
    theirs = d.guests.screenshot(other) if other is not None else None
    last: list[float] = []

    def check() -> tuple[Image, float, float] | None:
        st = d.shell.ask("state")
        if st["current"] != vm or st["display"] is None or min(st["display"][2:]) < 64:
            return None  # not shown yet, or not yet given its size
        screen = d.weston.screenshot()
        area = guest_area(st["display"])
        result = (screen, difference(screen, area, mine),
                  difference(screen, area, theirs) if theirs is not None else float("inf"))
        last[:] = [*result[1:], area]
        if result[1] >= MATCH:
            out = Path(tempfile.gettempdir())
            screen.save(out / f"{vm}-shell.png")
            mine.save(out / f"{vm}-qemu.png")
            return None
        return result
    try:
        return wait_for(check, 30, f"the shell to show {vm}")
    except AssertionError:
        raise AssertionError(f"{vm} not shown: differences and area {last} (the screen and "
                             f"QEMU's picture: {tempfile.gettempdir()}/{vm}-*.png)\n"
                             f"{d.shell.log()}") from None


def zone_marked(screen: Image, zone: Zone) -> bool:
    colour = ZONE_COLOURS[zone]
    return all(Image.near(screen.at(x, y), colour, 2) for x, y in (
        (WIDTH - 3, BAR_PX // 2),                    # the bar's right end (no text there)
        (FRAME_PX // 2, HEIGHT // 2),                # the frame's left side
        (WIDTH - 1 - FRAME_PX // 2, HEIGHT // 2),    # its right side
        (WIDTH // 2, HEIGHT - 1 - FRAME_PX // 2)))   # its bottom


def hidden(shot: Image) -> bool:
    """The lock page: black, but for its text and password field in the middle; no guest
    colour anywhere else."""
    return all(shot.at(x, y) in ((0, 0, 0), (255, 255, 255))
               for y in range(0, HEIGHT, 16) for x in range(0, WIDTH, 16)
               if abs(y - HEIGHT // 2) > 60 or abs(x - WIDTH // 2) > 200)


def answered(d: Desk) -> dict[str, Any]:
    """The shell's state once PAM has answered (a refusal takes pam_unix's ~2 s delay)."""
    def done() -> dict[str, Any] | None:
        st: dict[str, Any] = d.shell.ask("state")
        return None if st["checking"] else st
    return wait_for(done, 20, "PAM's answer")


def unlock_with(d: Desk, password: str) -> dict[str, Any]:
    assert d.shell.ask(f"type {password}") == {"ok": True}
    d.shell.key(KEY_ENTER, "Return")
    return answered(d)


def test_the_shell_shows_each_vm_as_qemu_does_switches_on_the_hotkey_and_types_into_it(desk):
    d = desk
    d.guests.wait_painted(d.business)
    d.guests.wait_painted(d.private)

    # Business VMs come first: the shell starts on "work", framed in the business colour.
    screen, same, other = shows(d, d.business, d.private)
    assert other > 3 * MATCH, (same, other)  # the comparison tells the two guests apart
    assert zone_marked(screen, Zone.BUSINESS)
    # Only the shown VM may have the microphone (test_shell_audio.py: what that does),
    # and only its session takes a USB device plugged in (spice-gtk's auto-connect).
    st = d.shell.ask("state")
    assert st["sound"] == {d.business: [True, False], d.private: [False, False]}, st
    assert st["sound_button"] == "Sound: on"
    assert st["usb"] == {d.business: True, d.private: False}, st
    # Its display has the keyboard as soon as it is there (not at the next VM list).
    d.shell.key(KEY_A, "a")
    wait_for(lambda: d.guests.echoed(d.business) == 1, 10, "the business guest's echo")

    # The hotkey switches to the private VM, and no guest sees any of it: Super held,
    # Tab, Super released.
    d.shell.key(KEY_SUPER, "Super_L", kind="press")
    d.shell.key(KEY_TAB, "Tab", "super")
    d.shell.key(KEY_SUPER, "Super_L", "super", kind="release")
    assert d.shell.ask("state")["current"] == d.private
    screen, _, _ = shows(d, d.private, d.business)
    assert zone_marked(screen, Zone.PRIVATE) and not zone_marked(screen, Zone.BUSINESS)
    # The microphone went with it; the bar mutes the shown VM only.
    assert d.shell.ask("click sound") == {"ok": True}
    st = d.shell.ask("state")
    assert st["sound"] == {d.business: [False, False], d.private: [True, True]}, st
    assert st["sound_button"] == "Sound: off"
    assert st["usb"] == {d.business: False, d.private: True}, st

    # Keys typed go to the shown guest: it echoes them, and the shell shows the echo.
    d.shell.key(KEY_H, "h")
    d.shell.key(KEY_I, "i")
    wait_for(lambda: d.guests.echoed(d.private) >= 2, 20, "the private guest's echo")
    shows(d, d.private, d.business)
    assert d.guests.echoed(d.business) == 1  # nothing reached the VM not shown
    assert d.guests.echoed(d.private) == 2  # the hotkey's Tab never reached the guest
    assert d.guests.supers(d.business) == 0 and d.guests.supers(d.private) == 0  # its Super
    # Super alone is the guest's (a tap: its Start menu), Super+E too (Super, then E).
    d.shell.key(KEY_SUPER, "Super_L", kind="press")
    d.shell.key(KEY_SUPER, "Super_L", "super", kind="release")
    wait_for(lambda: d.guests.supers(d.private) >= 1, 20, "the private guest's Super")
    d.shell.key(KEY_SUPER, "Super_L", kind="press")
    d.shell.key(KEY_E, "e", "super")
    d.shell.key(KEY_SUPER, "Super_L", "super", kind="release")
    wait_for(lambda: d.guests.echoed(d.private) >= 3, 20, "the private guest's echo of E")
    assert d.guests.supers(d.private) == 2 and d.guests.supers(d.business) == 0

    # And back: the hotkey cycles.
    d.shell.key(KEY_TAB, "Tab", "super")
    screen, _, _ = shows(d, d.business, d.private)
    assert zone_marked(screen, Zone.BUSINESS)

    # Super+L locks: the lock page hides every VM, no guest colour anywhere on the screen.
    d.shell.key(KEY_L, "l", "super")
    st = d.shell.ask("state")
    assert st["locked"] and not any(rec for rec, _muted in st["sound"].values()), st
    assert st["usb"] == {d.business: False, d.private: False}, st  # locked: no VM
    assert st["lock_message"] == PROMPT, st  # what to do (a placeholder hides when focused)
    wait_for(lambda: hidden(d.weston.screenshot()), 10, "the lock page")
    # Keys go to the password field, none to a VM; a wrong password (PAM) keeps it locked.
    st = unlock_with(d, "h")
    assert st["locked"] and st["lock_message"] == "Wrong password", st
    assert hidden(d.weston.screenshot())
    assert d.guests.echoed(d.business) == 1 and d.guests.echoed(d.private) == 3
    # The user's password unlocks (pam_unix through unix_chkpwd, the image's service file).
    st = unlock_with(d, PASSWORD)
    assert not st["locked"] and st["lock_message"] == PROMPT, st
    shows(d, d.business, d.private)
    assert d.guests.echoed(d.business) == 1  # the password never reached a VM

    # The shown VM stops: the shell closes its session and shows the one still running.
    d.guests.conn.lookupByName(d.business).destroy()
    try:
        wait_for(lambda: d.shell.ask("state")["current"] == d.private, 20,
                 "the other VM shown")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {d.shell.ask('state')['vms']}\n{d.shell.log()}") \
            from None
    screen, _, _ = shows(d, d.private, None)
    assert zone_marked(screen, Zone.PRIVATE)


def test_on_a_hidpi_panel_weston_scales_2_and_the_shell_fills_its_pixels(
        system_bus, logind, tmp_path):
    """The laptop's weston.ini as weston.service's drop-in makes it (shell.hidpi, from the
    panel's EDID: here a 13.3" 2560x1600 one, 227 ppi, on the headless output): Weston
    scales its output by 2, and the shell's bar, frame and text take twice the pixels
    while the VM's picture fills the same share of the screen, equal to QEMU's."""
    from testlib import edid_block
    from vmclient.shell import hidpi

    drm = tmp_path / "drm" / "card0-headless"
    drm.mkdir(parents=True)
    (drm / "status").write_text("connected\n")
    (drm / "edid").write_bytes(edid_block(2560, 1600, 286, 179))
    base, ini = tmp_path / "base.ini", tmp_path / "weston.ini"
    base.write_text("")
    assert hidpi.main([str(drm.parent), str(base), str(ini)]) == 0
    provd = seat_provd(system_bus, tmp_path)
    weston = shell = None
    try:
        prefix = f"vmcs-{uuid.uuid4().hex[:6]}"
        with echo_guests(prefix) as guests:
            vm = guests.create("work", "business", 0, "W")
            weston = Weston(ini=ini.read_text())
            shell = ShellUnderTest(weston, system_bus, tmp_path, prefix + "-",
                                   groups=("vmclient",))
            guests.wait_painted(vm)
            mine = guests.screenshot(vm)

            def shown() -> tuple[Image, tuple[int, int, int, int]] | None:
                st = shell.ask("state")
                if st["current"] != vm or st["display"] is None or \
                        min(st["display"][2:]) < 64:
                    return None
                screen = weston.screenshot()
                area = guest_area([2 * v for v in st["display"]])  # device pixels
                return (screen, area) if difference(screen, area, mine) < MATCH else None
            screen, area = wait_for(shown, 30, f"the shell to show {vm} at scale 2")
            assert (screen.width, screen.height) == (2 * WIDTH, 2 * HEIGHT)
            # the shell's logical layout is the scale-1 one: the display below the bar,
            # inside the frame, the whole width but the frame's
            st = shell.ask("state")
            # (the frame has no top edge: the bar is the top)
            assert st["display"][:3] == [FRAME_PX, BAR_PX, WIDTH - 2 * FRAME_PX], st
            colour = ZONE_COLOURS[Zone.BUSINESS]
            # the bar: 2 x BAR_PX rows of the zone's colour at its right end; the frame:
            # 2 x FRAME_PX columns on the left, mid-height
            assert all(Image.near(screen.at(2 * WIDTH - 3, y), colour, 2)
                       for y in range(0, 2 * BAR_PX, 4))
            assert all(Image.near(screen.at(x, HEIGHT), colour, 2)
                       for x in range(2 * FRAME_PX))
            assert not Image.near(screen.at(2 * FRAME_PX + 2, HEIGHT), colour, 2)
            # the VM's picture fills the display's width in device pixels (720x400 scaled
            # by more than 2.7, its aspect kept)
            assert abs(area[2] - 2 * (WIDTH - 2 * FRAME_PX)) <= 1 and area[2] > 2.7 * GUEST_W, \
                area
            shell.stop()
            assert "Traceback" not in shell.log(), shell.log()
    finally:
        stop_desk(shell, weston, provd)


def test_the_screen_locks_before_the_host_sleeps(desk, logind):
    d = desk

    def shell_lock() -> list[tuple[str, ...]]:
        return [i for i in logind.inhibitors() if i[1] == "vmclient-shell"]
    wait_for(shell_lock, 10, "the shell's delay lock on sleep")
    assert shell_lock()[0][0] == "sleep" and shell_lock()[0][3] == "delay"
    d.guests.wait_painted(d.business)
    shows(d, d.business, d.private)

    logind.prepare_for_sleep(True)
    wait_for(lambda: not shell_lock(), 10, "the shell to release its delay lock")
    # Released only once the lock page was painted: the screen shows no VM now.
    assert hidden(d.weston.screenshot())
    assert d.shell.ask("state")["locked"]
    # The host is asleep: even the password does not unlock (no key is taken).
    assert unlock_with(d, PASSWORD)["locked"]

    logind.prepare_for_sleep(False)
    wait_for(shell_lock, 10, "the delay lock taken again after the wake-up")
    assert d.shell.ask("state")["locked"] and hidden(d.weston.screenshot())
    # Awake, the lid open: the lock asks for the password, and it unlocks.
    assert unlock_with(d, "not it")["locked"]
    assert hidden(d.weston.screenshot())
    st = unlock_with(d, PASSWORD)
    assert not st["locked"], (st, d.shell.log()[-3000:])
    shows(d, d.business, d.private)
    assert d.guests.echoed(d.business) == 0


@pytest.fixture
def bare_shell(system_bus: PrivateSystemBus, logind: Logind, tmp_path: Path
               ) -> Iterator[ShellUnderTest]:
    """The shell without provd or VMs: for what the bar says."""
    weston = Weston()
    shell = ShellUnderTest(weston, system_bus, tmp_path, "none-")
    try:
        yield shell
    finally:
        try:
            shell.stop()
        finally:
            weston.stop()
    assert "Traceback" not in shell.log(), shell.log()


def test_the_bar_shows_what_powerd_reports_and_shuts_down(bare_shell, powerd, laptop, logind):
    powerd()  # on AC, the battery at 80% (the simulated laptop)

    def power() -> str:
        return str(bare_shell.ask("state")["bar"][1])
    wait_for(lambda: power() == "On AC, battery 80%", 20, "the bar's power field")
    # No provd here: the page says why there is no VM, and no text widens the window
    # beyond the screen (Weston disconnects a full-screen client that asks for that).
    st = bare_shell.ask("state")
    assert st["none"].startswith("Cannot list the VMs") and len(st["none"]) > 120, st
    assert st["bar"][0].startswith("Cannot list the VMs: "), st  # not "No VM running"
    assert st["min_width"] <= WIDTH, st
    assert st["later"] is False, st  # "Later" only while syncd plans a host restart
    laptop.set_ac(False)
    laptop.set_battery(42)
    wait_for(lambda: power() == "On battery, 42%", 20, "the bar following powerd")
    # "Shut down" asks logind to power off (interactively: polkit may ask).
    assert bare_shell.ask("click shutdown") == {"ok": True}
    wait_for(lambda: [list(c[1]) for c in logind.mock.GetMethodCalls("PowerOff")] == [[True]],
             10, "logind's PowerOff called")


def test_super_m_opens_the_bars_menu_and_its_items_work_from_the_keyboard(bare_shell):
    """The bar's buttons never take the keys (they go to the VM), but its "Menu" (install,
    restore, sync, pause and resume the VMs, shut down) opens on Super+M with its first
    item's keys, and Super+M again closes it.  Opened again, Return chooses "Install a
    private VM…": the menu closes and the install page keeps the keys once the menu is
    gone (a name typed is its name); Escape, then Super+M, Down and Return choose
    "Restore a VM…": the restore page; Escape goes back to the desktop, where no item of
    the closed menu keeps the keys."""
    def menu() -> bool:
        return bool(bare_shell.ask("state")["menu"])
    bare_shell.key(KEY_M, "m", "super")
    wait_for(menu, 10, "the menu open")
    bare_shell.key(KEY_M, "m", "super")
    wait_for(lambda: not menu(), 10, "the menu closed")
    bare_shell.key(KEY_M, "m", "super")
    wait_for(menu, 10, "the menu open again")
    assert bare_shell.ask("state")["keys_to"] == "install"  # its first item
    bare_shell.key(KEY_ENTER, "Return")
    st = wait_for(lambda: (s := bare_shell.ask("state"))["install"]["open"] and s, 10,
                  "the install page")
    assert st["install"]["page"] == "install" and not st["menu"], st
    time.sleep(1)  # the popover's closing transition is over: it gave no keys back
    assert bare_shell.ask("type notes") == {"ok": True}
    assert bare_shell.ask("state")["install"]["name"] == "notes"
    bare_shell.key(KEY_ESC, "Escape")
    wait_for(lambda: bare_shell.ask("state")["install"]["page"] == "desktop", 10,
             "the desktop again")
    bare_shell.key(KEY_M, "m", "super")
    wait_for(menu, 10, "the menu open a third time")
    bare_shell.key(KEY_DOWN, "Down")
    bare_shell.key(KEY_ENTER, "Return")
    st = wait_for(lambda: (s := bare_shell.ask("state"))["restore"]["open"] and s, 10,
                  "the restore page")
    assert st["restore"]["page"] == "restore" and not st["menu"], st
    bare_shell.key(KEY_ESC, "Escape")
    st = wait_for(lambda: (s := bare_shell.ask("state"))["restore"]["page"] == "desktop"
                  and s, 10, "the desktop again")
    assert not st["menu"] and st["keys_to"] is None and st["min_width"] <= WIDTH, st


def test_the_shell_tells_logind_when_no_one_uses_the_laptop(system_bus, logind, tmp_path):
    """SetIdleHint on the shell's own session (logind's session/auto): in use at the
    start and at the next input, idle after a while without any."""
    path = "/org/freedesktop/login1/session/auto"
    system_bus.connection().get_object("org.freedesktop.login1", "/org/freedesktop/login1"
                                       ).AddObject(
        path, "org.freedesktop.login1.Session", {"IdleHint": False},
        [("SetIdleHint", "b", "", "")], dbus_interface="org.freedesktop.DBus.Mock")
    session = dbus.Interface(system_bus.connection().get_object("org.freedesktop.login1", path),
                             "org.freedesktop.DBus.Mock")

    def hints() -> list[bool]:
        return [bool(c[1][0]) for c in session.GetMethodCalls("SetIdleHint")]
    weston = Weston()
    shell = ShellUnderTest(weston, system_bus, tmp_path, "none-",
                           env={"VMCLIENT_TEST_IDLE_S": "1"})
    try:
        wait_for(lambda: hints()[:2] == [False, True], 20, "idle after 1 s")
        assert shell.ask("poke") == {"ok": True}
        wait_for(lambda: hints()[:3] == [False, True, False], 10, "in use again")
    finally:
        try:
            shell.stop()
        finally:
            weston.stop()
    assert "Traceback" not in shell.log() and "IdleHint not set" not in shell.log(), \
        shell.log()


def test_the_overview_shows_every_vm_live_in_its_zone_and_one_key_switches(desk):
    d = desk
    d.guests.wait_painted(d.business)
    d.guests.wait_painted(d.private)
    shows(d, d.business, d.private)
    d.shell.key(KEY_SPACE, "space", "super")
    assert d.shell.ask("state")["overview"]
    pictures = {vm: d.guests.screenshot(vm) for vm in (d.business, d.private)}
    zones = {d.business: Zone.BUSINESS, d.private: Zone.PRIVATE}
    last: list[Any] = []

    def thumbnails_shown() -> bool:
        tiles = d.shell.ask("state")["tiles"]
        if any(tiles.get(vm) is None or min(tiles[vm][2:]) < 64 for vm in pictures):
            return False
        screen = d.weston.screenshot()
        ok = True
        for vm, (x, y, w, h) in tiles.items():
            diff = difference(screen, (x, y, w, h), pictures[vm])
            frame = screen.at(x - 3, y + h // 2)  # the tile's zone-coloured frame
            last[:] = [vm, diff, frame]
            ok = ok and diff < MATCH and Image.near(frame, ZONE_COLOURS[zones[vm]], 2)
        return ok
    try:
        wait_for(thumbnails_shown, 20, "a thumbnail of each VM in its zone's frame")
    except AssertionError:
        raise AssertionError(f"thumbnails: {last}") from None

    d.shell.key(KEY_2, "2")  # the second thumbnail: the private VM
    st = d.shell.ask("state")
    assert st["current"] == d.private and not st["overview"]
    shows(d, d.private, d.business)
    assert d.guests.echoed(d.business) == 0 and d.guests.echoed(d.private) == 0


def test_closing_the_lid_locks_before_any_vm_pauses_and_opening_it_asks_for_the_password(
        desk, system_bus, laptop, logind, tmp_path):
    """The real vmclient-powerd on an umockdev laptop owns the lid and pauses the VMs on
    it; the shell locks on powerd's LidState, and powerd pauses only once the lock page
    is on the screen (the shell's pause delay); the lid open shows the lock.  Then the
    bar's pause and resume: of every VM, and of the VM shown alone."""
    d = desk
    d.guests.wait_painted(d.business)
    shows(d, d.business, d.private)
    logind.set_inhibit_delay_max(60)  # room for the long bound below
    powerd = PowerDaemon(system_bus, laptop, tmp_path,
                         f'[vms]\nname_prefix = "{d.guests.prefix}-"\n'
                         '[lid]\non_ac = "pause"\n'
                         '[sleep]\nmax_delay_s = 40\nlock_screen_s = 20\n').start()
    try:
        def states() -> set[int]:
            return {d.guests.conn.lookupByName(vm).state()[0]
                    for vm in (d.business, d.private)}

        def paused() -> bool:
            return states() == {libvirt.VIR_DOMAIN_PAUSED}
        wait_for(lambda: d.shell.ask("state")["pause_delay"], 10, "the shell's pause delay")
        # The lid closes while the shell cannot lock (stopped): the VM stays on the
        # screen, and powerd does not pause a VM until the lock page has replaced it.
        os.kill(d.shell.proc.pid, signal.SIGSTOP)
        try:
            laptop.set_lid(True)
            wait_for(lambda: powerd.props()["State"] == 2, 10, "powerd about to pause")
            time.sleep(1)
            assert states() == {libvirt.VIR_DOMAIN_RUNNING}, "paused while on the screen"
            assert not hidden(d.weston.screenshot())
        finally:
            os.kill(d.shell.proc.pid, signal.SIGCONT)
        wait_for(paused, 30, "powerd pausing the VMs once the screen is locked")
        assert hidden(d.weston.screenshot())
        st = d.shell.ask("state")
        assert st["locked"] and not st["pause_delay"], st

        laptop.set_lid(False)
        wait_for(lambda: not paused(), 30, "powerd resuming the VMs")
        st = d.shell.ask("state")
        assert st["locked"] and hidden(d.weston.screenshot()), st
        assert st["lock_message"] == PROMPT, st  # what to do, under the field
        assert unlock_with(d, "h")["locked"]
        assert not unlock_with(d, PASSWORD)["locked"]
        assert d.shell.ask("state")["lock_message"] == PROMPT  # for the next lock
        wait_for(lambda: d.shell.ask("state")["pause_delay"], 10, "a new delay after the unlock")
        shows(d, d.business, d.private)
        assert d.guests.echoed(d.business) == 0

        # The bar's "Pause VMs": powerd pauses them, and the bar says why the VM is paused.
        assert d.shell.ask("click pause") == {"ok": True}
        wait_for(lambda: d.shell.ask("state")["action_message"] == "2 VMs paused", 30,
                 "powerd's answer in the bar")
        assert paused() and set(powerd.paused_by_us()) == {d.business, d.private}
        wait_for(lambda: d.shell.ask("state")["bar"][0]
                 == f"{d.business} \u2014 business (paused by you)", 20, "the VM's state")
        assert d.shell.ask("click resume") == {"ok": True}
        wait_for(lambda: d.shell.ask("state")["action_message"] == "2 VMs resumed", 30,
                 "powerd's answer in the bar")
        wait_for(lambda: d.shell.ask("state")["bar"][0] == f"{d.business} \u2014 business",
                 20, "the VM running again in the bar")

        # The shown VM alone: the bar's "Pause" has powerd pause it (PauseVM), the other
        # runs on; "Resume" resumes it, and it runs and is shown again.
        def bar() -> tuple[str, list[Any]]:
            st = d.shell.ask("state")
            return st["bar"][0], st["vm_button"]
        wait_for(lambda: bar()[1] == ["Pause", True], 20, "the shown VM's Pause")
        assert d.shell.ask("click vm") == {"ok": True}
        wait_for(lambda: d.shell.ask("state")["action_message"] == f"{d.business} paused", 30,
                 "powerd's answer to PauseVM in the bar")
        assert d.guests.conn.lookupByName(d.business).state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert d.guests.conn.lookupByName(d.private).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert powerd.paused_by_us() == {d.business: "pause"}
        wait_for(lambda: bar() == (f"{d.business} \u2014 business (paused by you)",
                                   ["Resume", True]), 20, "the VM paused by you, in the bar")
        assert d.shell.ask("state")["min_width"] <= WIDTH  # the bar at its widest
        assert d.shell.ask("click vm") == {"ok": True}
        wait_for(lambda: d.shell.ask("state")["action_message"] == f"{d.business} resumed", 30,
                 "powerd's answer to ResumeVM in the bar")
        assert states() == {libvirt.VIR_DOMAIN_RUNNING} and powerd.paused_by_us() == {}
        wait_for(lambda: bar() == (f"{d.business} \u2014 business", ["Pause", True]), 20,
                 "the VM running again in the bar")
        d.shell.key(KEY_H, "h")  # it runs: it echoes the key, and the shell shows the echo
        wait_for(lambda: d.guests.echoed(d.business) == 1, 20, "the resumed VM's echo")
        shows(d, d.business, d.private)
    finally:
        powerd.stop()
    assert "Traceback" not in powerd.log(), powerd.log()


def test_a_vm_whose_qemu_is_starting_is_shown_starting_without_a_resume(desk):
    """While QEMU starts a VM libvirt says it is paused (reason starting-up); the bar says
    it is starting, and offers no Resume: nobody paused it."""
    d = desk
    shows(d, d.business, d.private)
    with d.guests.starting("boot", "private", 2, "B") as boot:
        wait_for(lambda: boot in [v[0] for v in d.shell.ask("state")["vms"]], 20,
                 "the shell listing the VM being started")
        d.shell.key(KEY_TAB, "Tab", "super")  # work, then the private VMs by name: boot
        st = d.shell.ask("state")
        assert st["current"] == boot, st
        assert (st["bar"][0], st["vm_button"]) == (f"{boot} \u2014 private (starting)",
                                                   ["Pause", False]), st


KEY_N, KEY_ESC, KEY_DOWN = 49, 1, 108
NM_DEVICE_DISCONNECTED, AP_MODE_INFRA, AP_SEC_NONE, AP_SEC_PSK = 30, 2, 0, 0x100


def test_the_bar_shows_wifi_from_networkmanager_connects_and_shows_what_it_assigned(
        system_bus, logind, tmp_path):
    """Wi-Fi through NetworkManager's D-Bus API (dbusmock's networkmanager template), and
    IT's pending orders from the real vmclient-provd's ListAssigned."""
    from vmclient.host import assigned

    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.provision.manage"])
    nm = system_bus.spawn_mock("networkmanager")
    wlan = nm.AddWiFiDevice("wlan0", "wlan0", NM_DEVICE_DISCONNECTED)
    office = nm.AddAccessPoint(wlan, "office", "office", "00:11:22:33:44:01", AP_MODE_INFRA,
                               2437, 54000, 72, AP_SEC_PSK)
    nm.AddAccessPoint(wlan, "cafe", "cafe", "00:11:22:33:44:02", AP_MODE_INFRA, 2412, 54000,
                      40, AP_SEC_NONE)
    manage = tmp_path / "manage"
    manage.mkdir()
    assigned.record(manage, assigned.Assigned("crm", "crm-image", 4, "done", ""))
    assigned.record(manage, assigned.Assigned("erp", "erp-image", 5, "failed", "no such image"))
    provd = ProvDaemon(system_bus, tmp_path).start()
    weston = Weston()
    shell = ShellUnderTest(weston, system_bus, tmp_path, "none-", groups=("vmclient",))
    try:
        def st() -> dict[str, Any]:
            return shell.ask("state")  # type: ignore[no-any-return]
        wait_for(lambda: st()["wifi"] == "Wi-Fi: not connected", 20, "the bar's Wi-Fi field")
        wait_for(lambda: st()["pending"] == "From IT: 1 VM to install, 1 order failed", 20,
                 "IT's pending orders in the bar")

        shell.key(KEY_N, "n", "super")  # the Wi-Fi page: strongest first, secured marked
        wait_for(lambda: len(st()["network_rows"]) == 2, 10, "the Wi-Fi page's list")
        s = st()
        assert s["networks"] and s["network_rows"] == ["office  72%, password", "cafe  40%"], s
        assert shell.ask("choose office") == {"ok": True}
        assert shell.ask("type s3cret pass") == {"ok": True}
        shell.key(KEY_ENTER, "Return")
        wait_for(lambda: st()["network_message"] == "Connected", 20, "NetworkManager's answer")
        # NetworkManager has the connection, on the chosen access point; the bar follows.
        nm_obj = system_bus.connection().get_object("org.freedesktop.NetworkManager",
                                                    "/org/freedesktop/NetworkManager")
        (active,) = nm_obj.Get("org.freedesktop.NetworkManager", "ActiveConnections",
                               dbus_interface="org.freedesktop.DBus.Properties")
        ac = system_bus.connection().get_object("org.freedesktop.NetworkManager", active)
        assert str(ac.Get("org.freedesktop.NetworkManager.Connection.Active", "SpecificObject",
                          dbus_interface="org.freedesktop.DBus.Properties")) == office
        wait_for(lambda: st()["wifi"] == "Wi-Fi office 72%", 20, "the bar showing the network")
        shell.key(KEY_ESC, "Escape")
        assert not st()["networks"]
        # IT takes the failed order back: provd no longer reports it, the bar follows.
        assigned.forget(manage, "erp")
        wait_for(lambda: st()["pending"] == "From IT: 1 VM to install", 20, "the bar following")
        assert st()["min_width"] <= WIDTH
    finally:
        try:
            shell.stop()
        finally:
            weston.stop()
            provd.stop()
    assert "Traceback" not in shell.log(), shell.log()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_bar_shows_the_lease_the_real_syncd_reports(system_bus, tmp_path):
    """An enrolled laptop whose lease runs out in 90 minutes: IT's renew-lease order reaches
    the real vmclient-syncd (the management agent), which reports LeaseRemaining; the
    bar shows the time left."""
    from sync_env import world
    from syncd_env import Peers, SyncDaemon

    from vmclient.host.files import write_private
    from vmclient.host.inventory import ManageConfig
    from vmclient.manage import admin as it
    from vmclient.manage.agent import Agent
    from vmclient.manage.enrol import CodeBook, process_requests
    from vmclient.store import crypto

    Peers(system_bus)  # logind, UPower, NetworkManager for syncd (and the shell)
    async with world(tmp_path) as w:
        manage = tmp_path / "manage"
        write_private(tmp_path / "device" / "signing.key", crypto.raw_private(w.a.signing))
        write_private(tmp_path / "device" / "wrapping.key", crypto.raw_private(w.a.wrapping))
        agent = Agent(ManageConfig(state_dir=manage, vm_keys_dir=tmp_path / "provision" / "keys",
                                   images_dir=tmp_path / "images", name_prefix=f"{w.prefix}-",
                                   device_dir=tmp_path / "device"), w.remote, w.hv)
        book = CodeBook(tmp_path / "admin" / "codes.json")
        code = book.issue("laptop-s", int(time.time()))
        await agent.request_enrolment(crypto.raw_public(w.admin.public_key()), "laptop-s", code)
        [done] = await process_requests(w.remote, w.admin, book, int(time.time()))
        assert done.enrolled, done
        device = agent.state_file.load().device
        await it.issue_order(w.remote, w.admin, device, "renew-lease",
                             {"lease_until": int(time.time()) + 90 * 60}, int(time.time()),
                             numbers=it.OrderNumbers(tmp_path / "admin" / "orders.json"))
        syncd = SyncDaemon(system_bus, w, tmp_path, [], manage=manage).start()
        weston = Weston()
        shell = ShellUnderTest(weston, system_bus, tmp_path, "none-")
        try:
            wait_for(lambda: 0 < syncd.props()["LeaseRemaining"] <= 90 * 60, 60,
                     "syncd reporting the renewed lease")
            remaining = int(syncd.props()["LeaseRemaining"])
            minutes = {(remaining - d) // 60 for d in range(0, 30)}  # the bar may lag a poll

            def lease() -> str:
                return str(shell.ask("state")["bar"][2])
            wait_for(lambda: lease() in {f"lease 1 h {m - 60} min" for m in minutes}, 20,
                     "the bar's lease")
        finally:
            try:
                shell.stop()
            finally:
                weston.stop()
                syncd.stop()
        assert "Traceback" not in shell.log(), shell.log()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_bar_shows_an_install_with_its_progress(system_bus, tmp_path):
    """The real vmclient-provd installs a business VM from the sftp repository (the real
    sshd); the bar shows its phases as provd reports them, then nothing."""
    from dbus_fast.aio import MessageBus
    from fixtures_sshd import ssh_server
    from journey_env import PROVD, call, datacenter, laptop_enrolment_pending, ok, provd, wait_name
    from provision_env import need_tools, provision_env

    need_tools("dbus-daemon", vm=False)
    with ssh_server() as server:
        async with provision_env(tmp_path) as env:
            dc = await datacenter(server, env, tmp_path / "admin")
            laptop_enrolment_pending(env, dc)  # provd logs in as the device's own account
            with provd(system_bus, env, dc, tmp_path) as log:
                client = await MessageBus(bus_address=system_bus.address).connect()
                weston = Weston()
                shell = ShellUnderTest(weston, system_bus, tmp_path, "none-")
                try:
                    await wait_name(client, PROVD, log)
                    recipe = env.recipe(tmp_path, "sftp").read_text()
                    (vm,) = ok(await call(client, "Install", "s", [recipe]))
                    wait_for(lambda: shell.ask("state")["installs"][-1:] == [""], 20,
                             "the install field cleared")
                    shown = [t for t in shell.ask("state")["installs"] if t]
                    assert shown and all(t.startswith("Installing") for t in shown), shown
                    assert any(t.startswith(f"Installing {vm}: downloading") for t in shown), shown
                    ok(await call(client, "Remove", "s", [vm]))
                finally:
                    client.disconnect()
                    try:
                        shell.stop()
                    finally:
                        weston.stop()
                assert "Traceback" not in shell.log(), shell.log()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_bar_installs_a_private_vm_from_an_iso_of_the_users_and_shows_its_installer(
        system_bus, tmp_path):
    """The bar menu's "Install a private VM…": a name, the sizes, the firmware and an ISO of the user's own,
    chosen in the page's file chooser; the shell opens it as its unprivileged user and
    passes the descriptor to the real vmclient-provd's InstallFromMedia.  provd defines a
    private VM (the bar shows its install), the shell starts it and shows its installer:
    the ISO boots the echo guests' boot sector, which paints its bands."""
    from provision_env import need_tools, provision_env, write_config

    need_tools("dbus-daemon")
    polkit = system_bus.spawn_mock("polkitd")  # the seat's user: in the vmclient group
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.provision.manage"])
    home = user_dir(USER, "vmclient-home-")  # the user's own files (0700, theirs)
    iso = home / "installer.iso"
    # a larger installer (data after the ISO's own sectors, which the boot ignores): provd's
    # copy of it takes several steps of its progress
    iso.write_bytes(el_torito_iso(boot_sector(2, "I")) + os.urandom(40 << 20))
    os.chown(iso, USER, USER)
    iso.chmod(0o600)
    secret = home / "root-only.iso"  # root's, in the user's directory
    secret.write_bytes(el_torito_iso(boot_sector(3, "S")))
    secret.chmod(0o600)
    conn = open_libvirt()
    try:
        async with provision_env(tmp_path) as env:
            # TCG, as for the echo guests: SeaBIOS is slow under this machine's paravirtual KVM
            env.cfg = replace(env.cfg, domain_type="qemu", cpu_mode="maximum", cpu_disable=())
            provd = ProvDaemon(system_bus, tmp_path, write_config(env, tmp_path))
            weston = shell = None
            vm = env.name("inst")
            try:
                provd.start()
                weston = Weston()
                shell = ShellUnderTest(weston, system_bus, tmp_path, env.prefix + "-",
                                       groups=("vmclient",))
                assert shell.ask("click install") == {"ok": True}
                st = shell.ask("state")
                assert st["install"]["open"] and st["install"]["page"] == "install", st
                assert shell.ask(f"type {vm}") == {"ok": True}  # into the focused name field
                shell.key(KEY_ENTER, "Return")  # no installer chosen: said, nothing sent
                st = shell.ask("state")
                assert st["install"]["name"] == vm, st
                assert st["install"]["message"] == \
                    "Choose the installer (an ISO file) from your files", st
                # A file the user cannot read (root's, 0600): the shell opens it with the
                # user's rights, so the kernel refuses; provd (root) never gets it.
                def choose(path: Path) -> None:
                    def chosen() -> bool:  # (asked again: the chooser loads folders late)
                        assert shell.ask(f"media 1 1 bios {path}") == {"ok": True}
                        time.sleep(0.5)
                        return bool(shell.ask("state")["install"]["file"] == str(path))
                    wait_for(chosen, 10, f"{path.name} chosen in the file chooser")
                choose(secret)
                shell.key(KEY_ENTER, "Return")
                st = shell.ask("state")["install"]
                assert st["message"] == \
                    f"Install media {secret}: cannot open it: Permission denied", st
                assert vm not in [dom.name() for dom in conn.listAllDomains(0)]
                choose(iso)
                shell.key(KEY_ENTER, "Return")
                # shown once Start answers; the VM list's 2 s poll may have listed it
                # already while QEMU was starting (libvirt: paused, starting up), and says
                # "running" at the next listing
                def started_and_shown() -> bool:
                    st = shell.ask("state")
                    return bool(st["current"] == vm and st["action_message"] ==
                                f"{vm} started: its installer is on the screen" and
                                [vm, "private", "running"] in st["vms"])
                wait_for(started_and_shown, 60, "the new VM started and shown")
                dom = conn.lookupByName(vm)
                assert dom.isPersistent() and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                assert 'kind="private"' in dom.XMLDesc(), dom.XMLDesc()
                st = shell.ask("state")
                assert [vm, "private", "running"] in st["vms"] and not st["install"]["open"], st
                assert any(t.startswith(f"Installing {vm}") for t in st["installs"]), st
                # provd's copy of the ISO, in the bar and as the install page's progress
                # bar (provd signals its start and its end; between them every 0.2 s)
                copying = [t for t in st["installs"]
                           if t.startswith(f"Installing {vm}: copying the media ")]
                assert copying[0].endswith(" 0%") and copying[-1].endswith(" 100%"), copying
                fractions = st["install"]["fractions"]
                assert fractions and fractions[-1] == 1.0, fractions
                assert fractions == sorted(fractions), fractions
                guests = EchoGuests(conn, env.prefix)  # its pictures; it removes nothing
                guests.seeds[vm] = 2
                guests.wait_painted(vm)
                screen, _mine, _other = shows(Desk(guests, weston, shell, vm, vm), vm, None)
                assert zone_marked(screen, Zone.PRIVATE)
                assert st["min_width"] <= WIDTH, st
            finally:
                try:
                    if shell is not None:
                        shell.stop()
                finally:
                    if weston is not None:
                        weston.stop()
                    provd.stop()
            assert "Traceback" not in shell.log(), shell.log()
            assert "Traceback" not in provd.log(), provd.log()
    finally:
        conn.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_bar_shows_a_sync_with_its_progress_as_the_real_syncd_reports(system_bus,
                                                                               tmp_path):
    """vmclient-syncd syncs a real VM to the repository (SyncNow); every text of the bar's
    sync field comes from syncd's properties: the VM and its percent while it runs."""
    from sync_env import MIB, world
    from syncd_env import Peers, SyncDaemon

    Peers(system_bus)
    async with world(tmp_path) as w:
        vm = w.create("d", data=[(0x11, 0, 2 * MIB), (0x22, 20 * MIB, MIB)]).name()
        syncd = SyncDaemon(system_bus, w, tmp_path, [vm],
                           "[network]\non_demand_overrides = false\n").start()
        weston = Weston()
        shell = ShellUnderTest(weston, system_bus, tmp_path, "none-", groups=("vmclient",))
        try:
            wait_for(lambda: shell.ask("state")["bar"][2] == "" and syncd.props(), 20,
                     "the shell and syncd up")
            assert shell.ask("click sync") == {"ok": True}  # the bar's "Sync now"
            wait_for(lambda: shell.ask("state")["action_message"] == "1 VM synced", 60,
                     "syncd's answer in the bar")
            assert (await w.verify(vm)).seq == 1  # the snapshot is in the repository
            wait_for(lambda: shell.ask("state")["syncs"][-1:] == [""], 20,
                     "the sync field cleared after the sync")
            shown = [t for t in shell.ask("state")["syncs"] if t]
            assert shown and all(t.startswith(f"Syncing {vm}") for t in shown), shown
            assert any(t.endswith("%") for t in shown), shown
        finally:
            try:
                shell.stop()
            finally:
                weston.stop()
                syncd.stop()
        assert "Traceback" not in shell.log(), shell.log()


@pytest.mark.asyncio(loop_scope="session")
async def test_first_start_sets_the_layout_wifi_enrols_with_its_code_sets_the_password_and_installs(
        system_bus, tmp_path, capsys):
    """A laptop the real vmclient-syncd reports not enrolled opens the first start, driven
    by keys: the keyboard layout (kept in the user's state for the next session's Weston),
    Wi-Fi (dbusmock's NetworkManager), IT's one-time code from ``vmclient-admin enrol
    --code`` (syncd's Enrol: a malformed code is refused with syncd's message, one IT did
    not issue is sent), the password typed twice (syncd's SetPassword: chpasswd in the
    shell's /etc overlay), then the wait for IT.  IT refuses that code (``enrol
    --accept``): the page asks for it again with IT's reason, and the code IT issued is
    sent.  IT accepts (``enrol --accept``) and assigns a VM;
    syncd completes the enrolment, its agent has the real vmclient-provd install the VM
    from the repository that the real sshd serves: the laptop's ``[repository]`` is the
    one every laptop ships (``sftp://host/``, no account: the request goes through the
    drop box, then syncd and provd log in as the device's own), the page shows the
    install and closes once the VM is there.  The lock screen then takes the password
    the first start set (PAM)."""
    from fixtures_sshd import keygen, ssh_server
    from journey_env import Datacenter, provd, syncd
    from provision_env import need_tools, provision_env
    from sftp_repo import Repo, make_disk, qcow2
    from syncd_env import Peers

    from vmclient.admin.sshd import confinement
    from vmclient.host.keys import ssh_identity
    from vmclient.host.lease import DeviceState, StateFile
    from vmclient.store import crypto
    from vmclient.transport import Repository

    need_tools("dbus-daemon", vm=False)
    need(shutil.which("nsenter") is not None, "nsenter is not installed")
    need(shutil.which("chpasswd") is not None, "chpasswd is not installed")
    Peers(system_bus)  # logind, UPower, NetworkManager (connected: syncd is online)
    polkit = system_bus.spawn_mock("polkitd")  # as for the seat's active session
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.enrol",
                       "org.vmclient.VMClient1.first-password"])
    nm = dbus.Interface(system_bus.connection().get_object(
        "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager"),
        "org.freedesktop.DBus.Mock")
    wlan = nm.AddWiFiDevice("wlan0", "wlan0", NM_DEVICE_DISCONNECTED)
    nm.AddAccessPoint(wlan, "office", "office", "00:11:22:33:44:01", AP_MODE_INFRA, 2437,
                      54000, 72, AP_SEC_PSK)
    etc = PasswordSandbox(tmp_path, "nobody", None)  # nobody has no password yet
    first_password = "first-start 7"
    with ssh_server() as server:
        dropbox = server.add_dropbox()  # its key ships with the image
        async with provision_env(tmp_path) as env:
            # IT: a repository with an image, a one-time code for the laptop.
            work = tmp_path / "admin"
            work.mkdir()
            repo = Repo(server, work)

            async def admin(*argv: str) -> int:  # the CLI runs asyncio.run: not on this loop
                return await asyncio.to_thread(repo.admin, *argv)
            image = f"{env.prefix}-img"
            assert await admin("init") == 0
            assert await admin("publish", image, str(qcow2(make_disk(work / "disk.raw", 8)))) == 0
            capsys.readouterr()
            assert await admin("enrol", "--code", "laptop-f") == 0
            code = capsys.readouterr().out.splitlines()[1].strip()
            admin_key = work / "admin-key.pub"
            admin_key.write_bytes(crypto.raw_public(repo.admin_public))
            # The laptop's account, set up ahead (sshd restarts for its Match block, which
            # would race the laptop's logins): its device keys, hence its id, are there
            # already; the SSH key it logs in with comes with the request (below).
            device = env.device.device_id()
            server.confine(confinement(device, keygen(tmp_path / "placeholder"),
                                       str(server.repo), str(server.keys)))
            dc = Datacenter(repo, "laptop-f", image, Repository(
                f"sftp://127.0.0.1:{server.port}/", key_file=env.cfg.device_dir / "ssh_ed25519",
                known_hosts=server.known_hosts, admin_key=admin_key))
            StateFile(env.cfg.manage_dir).save(DeviceState())  # a new laptop: not enrolled
            namespace = etc.hold()  # the shell's /etc, also across its restarts
            home = user_dir(USER, "vmclient-state-")  # and its XDG_STATE_HOME
            saved = home / "vmclient-shell" / "first-start.json"
            weston = Weston()
            shell = ShellUnderTest(weston, system_bus, tmp_path, f"{env.prefix}-",
                                   passwords=etc, groups=("vmclient",), state_home=home)
            try:
                def st() -> dict[str, Any]:
                    return shell.ask("state")["first"]  # type: ignore[no-any-return]
                assert not st()["open"]  # the shell is up, its /etc overlay mounted
                # syncd (root) in the shell's mount namespace: chpasswd writes the shadow
                # the shell's PAM reads.
                with provd(system_bus, env, dc, tmp_path) as plog, \
                        syncd(system_bus, env, dc, tmp_path,
                              manage_extra='device_name = "laptop-f"\n'
                                           f'dropbox_user = "{dropbox.user}"\n'
                                           f'dropbox_key = "{dropbox.key_file}"\n',
                              wrap=lambda cmd: ["nsenter", f"--mount={namespace}",
                                                *cmd]) as slog:
                    def logs() -> str:
                        return plog.read_text() + slog.read_text()
                    wait_for(lambda: st()["open"] and st()["page"] == "firststart", 60,
                             "the first start on a laptop not enrolled")
                    assert st()["step"] == "layout" and "keyboard layout" in st()["title"]

                    # Keyboard: the third layout (German), Return: kept where the next
                    # session's Weston takes it (weston.service's drop-in: the host's /etc
                    # is read-only), and the shell quits for Weston to start again with it
                    # (Weston takes its keymap only when it starts); on to Wi-Fi.
                    shell.key(KEY_DOWN, "Down")
                    shell.key(KEY_DOWN, "Down")
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: shell.proc.poll() is not None, 20,
                             "the shell quitting for the desktop to start again")
                    assert shell.proc.returncode == 0, shell.log()
                    keyboard = home / "vmclient-shell" / "keyboard.env"
                    assert keyboard.read_text() == "XKB_DEFAULT_LAYOUT=de\n"
                    assert keyboard.stat().st_uid == USER
                    assert json.loads(saved.read_text()) == {"version": 1, "step": "wifi",
                                                             "layout": "de"}
                    weston.stop()  # what weston.service does: Weston and the shell again
                    weston = Weston(keyboard="de")
                    shell = ShellUnderTest(weston, system_bus, tmp_path, f"{env.prefix}-",
                                           passwords=etc, groups=("vmclient",),
                                           state_home=home)
                    wait_for(lambda: st()["open"] and st()["step"] == "wifi", 60,
                             "the first start again, at the Wi-Fi step")

                    # Wi-Fi: choose office, its password, Return: connected, on to the code.
                    wait_for(lambda: st()["rows"] == ["office  72%, password"], 20,
                             "the networks")
                    assert shell.ask("choose office") == {"ok": True}
                    assert shell.ask("type s3cret pass") == {"ok": True}
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: st()["step"] == "code", 20, "connected: the code step")

                    # The code: a malformed one is refused with syncd's message; IT's is sent.
                    assert shell.ask("type ABCD-EFGH-JKLM-NPQ0") == {"ok": True}
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: "Not an enrolment code from IT" in st()["message"], 20,
                             "syncd's InvalidCode")
                    assert st()["step"] == "code"
                    # the refused code stays, to be corrected (here: all of it replaced)
                    assert st()["entry"] == "ABCD-EFGH-JKLM-NPQ0", st()
                    # A code of the right form that IT did not issue (a typo) is sent.
                    shell.key(KEY_A, "a", "ctrl")
                    assert shell.ask("type ABCD-EFGH-JKLM-NPQR") == {"ok": True}
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: st()["step"] == "password", 30,
                             "the enrolment requested\n" + logs())
                    assert st()["message"] == "Enrolment requested"
                    # Interrupted there (the shell dies), it reopens where it was.
                    shell.proc.kill()
                    shell.proc.wait()
                    shell = ShellUnderTest(weston, system_bus, tmp_path, f"{env.prefix}-",
                                           passwords=etc, groups=("vmclient",),
                                           state_home=home)
                    wait_for(lambda: st()["open"] and st()["step"] == "password", 60,
                             "the first start again, at the password")

                    # The password, twice (a mismatch starts over), set by syncd's chpasswd.
                    for typed in (first_password, "something else"):
                        assert shell.ask(f"type {typed}") == {"ok": True}
                        shell.key(KEY_ENTER, "Return")
                    assert st()["message"] == "The two passwords differ: again", st()
                    for _ in range(2):
                        assert shell.ask(f"type {first_password}") == {"ok": True}
                        shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: st()["step"] == "install", 20, "the password set")
                    assert etc.entry("nobody").split(":")[1].startswith("$")
                    wait_for(lambda: st()["progress"] ==
                             "Waiting for IT to accept this laptop\u2026", 10, "waiting for IT")

                    # IT refuses that request; syncd reads IT's signed refusal through the
                    # drop box and the page asks for the code again with IT's reason; the
                    # right code then goes to the wait for IT (the password is set).
                    capsys.readouterr()
                    assert await admin("enrol", "--accept", "--server-keys", str(server.keys),
                                      "--server-script", str(work / "setup.sh")) != 0
                    assert f"refused laptop-f ({device}): wrong enrolment code" in \
                        capsys.readouterr().out
                    wait_for(lambda: st()["step"] == "code", 30,
                             "the code asked again\n" + logs())
                    assert st()["message"] == ("IT refused the code: wrong enrolment code. "
                                               "Type the code again, or ask IT for a new one")
                    assert st()["entry"] == "", st()
                    assert shell.ask(f"type {code}") == {"ok": True}
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: st()["step"] == "install", 30,
                             "the enrolment requested again\n" + logs())
                    assert st()["message"] == "Enrolment requested"
                    wait_for(lambda: st()["progress"] ==
                             "Waiting for IT to accept this laptop\u2026", 10, "waiting for IT")

                    # IT accepts and assigns a VM; syncd enrols, its agent has provd install
                    # it; the page shows the install, then closes on its own.
                    capsys.readouterr()
                    assert await admin("enrol", "--accept", "--server-keys", str(server.keys),
                                      "--server-script", str(work / "setup.sh")) == 0
                    assert f"enrolled laptop-f as device {device}" in capsys.readouterr().out
                    # the script's last line: the key the request carried (read per login)
                    _key, ssh_pub = ssh_identity(env.cfg.device_dir)
                    conf = confinement(device, ssh_pub, str(server.repo), str(server.keys))
                    assert conf.authorized_keys in (work / "setup.sh").read_text()
                    await asyncio.to_thread(Path(conf.authorized_keys_path).write_text,
                                            conf.authorized_keys + "\n")
                    recipe = env.recipe(tmp_path, "first")
                    assert await admin("assign", image, "laptop-f", "--recipe", str(recipe)) == 0
                    wait_for(lambda: not st()["open"] and st()["page"] == "desktop", 180,
                             "the first start done\n" + logs())
                    # every line the page showed, in order: IT, then provd's install phases
                    seen = list(dict.fromkeys(st()["progresses"]))
                    vm = env.name("first")
                    assert "Waiting for IT to accept this laptop\u2026" in seen, seen
                    installing = [t for t in seen if t.startswith(f"Installing {vm}: ")]
                    assert any("downloading" in t for t in installing), seen
                    assert seen.index(installing[0]) > seen.index(
                        "Waiting for IT to accept this laptop\u2026"), seen
                    assert [v[0] for v in shell.ask("state")["vms"]] == [vm]

                    # The lock screen takes the password the first start set.
                    shell.key(KEY_L, "l", "super")
                    wait_for(lambda: shell.ask("state")["locked"], 10, "locked")
                    assert shell.ask(f"type {first_password}") == {"ok": True}
                    shell.key(KEY_ENTER, "Return")
                    wait_for(lambda: not shell.ask("state")["locked"], 20,
                             "unlocked by the new password\n" + shell.log())
                    assert json.loads(saved.read_text())["step"] == "done"  # never again
            finally:
                try:
                    shell.stop()
                finally:
                    weston.stop()
                    etc.release()
                    shutil.rmtree(home, ignore_errors=True)
            assert "Traceback" not in shell.log(), shell.log()
            assert "Traceback" not in slog.read_text(), slog.read_text()

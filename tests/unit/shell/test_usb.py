"""USB redirection's policy (pure): auto-connect only to the shown VM, never while locked
or during the first start, never a keyboard or mouse; the menu's rows.

The adapter (shell/usbredir.py) cannot be tested with a device here: libusb needs
/dev/bus/usb and umockdev cannot give libusb a device; the booted test host's desktop
test plugs emulated devices into it (tests/system/test_system_desktop.py)."""

from __future__ import annotations

from vmclient.shell.usb import AUTO_CONNECT_FILTER, Device, Row, auto_connect, button_text, rows


def test_only_the_shown_vm_takes_a_device_plugged_in_by_itself():
    assert auto_connect("work", "work", locked=False, first_start=False)
    assert not auto_connect("home", "work", locked=False, first_start=False)
    assert not auto_connect("work", None, locked=False, first_start=False)


def test_a_locked_screen_or_the_first_start_sends_no_device_anywhere():
    assert not auto_connect("work", "work", locked=True, first_start=False)
    assert not auto_connect("work", "work", locked=False, first_start=True)


def _rules(flt: str) -> list[tuple[int, int, int, int, int]]:
    return [tuple(int(x, 0) for x in r.split(",")) for r in flt.split("|")]  # type: ignore[misc]


def test_the_auto_connect_filter_refuses_hid_first_and_leaves_the_rest_to_the_vm():
    rules = _rules(AUTO_CONNECT_FILTER)
    assert rules[0] == (0x03, -1, -1, -1, 0)  # keyboards and mice: never by themselves
    assert rules[-1] == (-1, -1, -1, -1, 1)  # the VM's own filter (the recipe) decides


def test_the_menu_says_where_each_device_is_and_what_a_click_does():
    devices = [
        Device("k-stick", "Acme Stick [0781:5567]"),
        Device("k-key", "Yubico YubiKey [1050:0407]", owner="work"),
        Device("k-cam", "Acme Cam [046d:0825]", owner="home"),
        Device("k-disk", "Big Disk [0bc2:2322]", refusal="blocked by host policy"),
    ]
    assert rows(devices, "work") == [
        Row("k-cam", "Acme Cam [046d:0825] \u2014 in home", ""),
        Row("k-stick", "Acme Stick [0781:5567] (click: into work)", "connect"),
        Row("k-disk", "Big Disk [0bc2:2322] \u2014 not for work: blocked by host policy", ""),
        Row("k-key", "Yubico YubiKey [1050:0407] \u2014 in work (click: take out)",
            "disconnect"),
    ]
    # a device in the other zone's VM is never taken from here by a click
    assert [r.action for r in rows(devices, "home") if r.key == "k-key"] == [""]
    assert all(r.action == "" for r in rows(devices, None))
    assert button_text(devices, "work") == "USB (1)" and button_text(devices, None) == "USB"

"""The booted test host shows the laptop's desktop on its screen, as ``make run`` shows
it to a person: Weston's kiosk shell on the seat, started by systemd as the
unprivileged user weston (in group vmclient, as on the Yocto image) in a logind
session, and vmclient-shell full screen in it.

The host boots with a screen (``harness.screen_args()``: std VGA, no VNC here) and an
empty USB port (``harness.usb_args()``: an xHCI controller); the picture is read back
with QMP ``screendump``.  A fresh host is not enrolled, so the shell opens its
first-start page (python-services/docs/shell.md): its background covers most of the
screen, where the text console was before.  Then, on the same boot, a first start that
finished: the shell shows a nested VM, and a USB stick plugged into the host goes into
it as its recipe allows, a device the recipe does not list does not.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pixels import Image
from test_system_journey import NESTED_PROFILE

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

FIRST_START_RGB = (30, 30, 40)  # vmclient.shell.firstpage: #firststart's background
PRIVATE_RGB = (0xE6, 0x7E, 0x00)  # vmclient.shell.state: the private zone's bar and frame


def screen(m: harness.Machine, path: Path) -> Image:
    """The host's screen now (QEMU's screendump, a PPM, decoded by GdkPixbuf)."""
    m.qmp.execute("screendump", filename=str(path))
    return Image.load(path)


@pytest.fixture(scope="module")
def desktop(host_boot_config: harness.BootConfig) -> Iterator[harness.Machine]:
    """The host booted with a screen and an empty USB port, systemd done starting."""
    cfg = dataclasses.replace(host_boot_config, extra_args=[
        *host_boot_config.extra_args, *harness.screen_args(), *harness.usb_args()])
    with harness.booted(cfg) as m:
        m.wait_system_running()
        # The USB test's VM is installed and started meanwhile, while the first test
        # looks at the first-start page (under TCG that takes a minute or more).
        disable = ", ".join(f'"{f}"' for f in NESTED_PROFILE["cpu_disable"])  # type: ignore[attr-defined]
        # provision.toml as an image would carry it (the root is read-only); the
        # test's own files in /run
        harness.put_image_files(m, {"/etc/vmclient/provision.toml": (
            f'domain_type = "{NESTED_PROFILE["domain_type"]}"\n'
            f'cpu_mode = "{NESTED_PROFILE["cpu_mode"]}"\ncpu_disable = [{disable}]\n', 0o644)})
        m.put_text(f"/run/{USB_VM}.toml", USB_RECIPE)
        m.put_text("/run/usb-vm.sh", USB_VM_SETUP, mode=0o755)
        m.ssh("systemd-run --no-block --quiet --unit=vmclient-test-usb-vm -p Type=oneshot "
              "-p RemainAfterExit=yes /bin/sh /run/usb-vm.sh", check=True)  # /run is noexec
        yield m


def test_the_host_boots_to_vmclient_shell_on_its_screen(
        desktop: harness.Machine, tmp_path: Path) -> None:
    m = desktop
    before = screen(m, tmp_path / "console.ppm")
    m.wait_until("systemctl is-active -q vmclient-desktop", timeout=120)
    session = m.ssh("loginctl list-sessions --no-legend", check=True).stdout
    assert "weston" in session and "seat0" in session, session
    m.wait_until("pgrep -u weston -f bin/vmclient-shell", timeout=120)
    deadline = time.monotonic() + 180  # GTK starting under TCG
    share = 0.0
    while time.monotonic() < deadline:
        shown = screen(m, tmp_path / "screen.ppm")
        share = shown.share(FIRST_START_RGB)
        if share > 0.5:
            break
        time.sleep(2)
    journal = m.ssh("journalctl -b --no-pager -u vmclient-desktop | tail -40").stdout
    assert share > 0.5, (f"the first-start page covers {share:.0%} of the "
                         f"{shown.width}x{shown.height} "
                         f"screen (screendump in {tmp_path}); Weston's journal:\n{journal}")
    assert before.share(FIRST_START_RGB) < 0.1  # it was the console before
    # The seat's keyboard reaches the shell (what a person types on VNC): two Downs
    # move the layout list's selection, so the picture changes and nothing else did.
    time.sleep(2)
    still = screen(m, tmp_path / "still.ppm")
    assert still.same(shown), "the first-start page changed with no key pressed"
    for _ in range(2):
        m.qmp.execute("send-key", keys=[{"type": "qcode", "data": "down"}])
        time.sleep(0.5)
    moved = shown
    for _ in range(30):
        moved = screen(m, tmp_path / "keys.ppm")
        if not moved.same(shown):
            break
        time.sleep(1)
    assert not moved.same(shown), "two Down keys did not move the first-start page's selection"
    assert moved.share(FIRST_START_RGB) > 0.5
    # the shell runs as weston, never root, in group vmclient (the bus policy's group)
    ids = m.ssh("id weston", check=True).stdout
    assert "(vmclient)" in ids, ids
    assert m.ssh("pgrep -u root -f bin/vmclient-shell").rc != 0


# The stick: QEMU's usb-storage (vendor 46f4 product 0001), the only device the VM's
# recipe lists; the phone: QEMU's usb-mtp (46f4:0004), not listed (and no HID, which the
# shell itself never connects by itself: the recipe's filter is what refuses it).
STICK_ID, PHONE_ID = "46f4:0001", "46f4:0004"
STICK_MARK = b"vmclient usb stick 8f3a"
USB_VM = "mine"
USB_RECIPE = f"""format = 1
name = "{USB_VM}"
kind = "private"
vcpus = 1
memory_mib = 256
firmware = "bios"

[image]
raw = "/var/lib/vmclient/media/{USB_VM}.img"

[[disks]]
name = "system"
role = "system"

[network]
zone = "none"

[power]
policy = "pause"

[devices]
usb = "listed"
usb_allow = ["{STICK_ID}"]
"""


USB_VM_SETUP = f"""#!/bin/sh
set -e
systemctl restart vmclient-provd
install -d -m 0755 /var/lib/vmclient/media
truncate -s 1M /var/lib/vmclient/media/{USB_VM}.img
vmclientctl vm install /run/{USB_VM}.toml
vmclientctl vm start {USB_VM}
"""


def desktop_log(m: harness.Machine) -> str:
    """What the desktop said (Weston, the shell) and any crash the kernel saw."""
    return m.ssh("journalctl -b --no-pager -o short-monotonic _UID=1001 + "
                 "_SYSTEMD_UNIT=vmclient-desktop.service | tail -60; "
                 "dmesg | grep -iE 'segfault|trap' | tail").stdout


def redirected(m: harness.Machine) -> list[str]:
    """The nested VM's usbredir devices that have a device in them (HMP ``info usb``: an
    empty one shows at its default 1.5 Mb/s, a stick at its own speed)."""
    out = m.ssh(f"virsh -q qemu-monitor-command {USB_VM} --hmp 'info usb'",
                check=True).stdout
    return [line.strip() for line in out.splitlines()
            if "ID: redir" in line and "Speed 1.5 Mb/s" not in line]


# Each USB device of the host: "vendor:product driver-of-its-first-interface"
# (usbfs: claimed by a program through libusb, here spice-gtk's usbredir).
HOST_USB = ("for d in /sys/bus/usb/devices/*; do [ -f $d/idProduct ] || continue; "
            "drv=$(readlink $d/*:1.0/driver); "
            "echo \"$(cat $d/idVendor):$(cat $d/idProduct) ${drv##*/}\"; done")


def test_a_usb_stick_plugged_in_goes_to_the_shown_vm_its_recipe_allows_another_device_not(
        desktop: harness.Machine, tmp_path: Path) -> None:
    m, t0 = desktop, time.monotonic()
    # A person who finished the first start (the first test saw it open): the desktop
    # starts again and shows the VM, no first-start page.
    # (The seat user's home is on the read-only root, on the image too: the shell
    # cannot save a first start there itself.  The file goes in as an image would
    # carry it.)
    state = "/home/weston/.local/state/vmclient-shell"
    m.ssh("mount -o remount,rw /", check=True)
    try:
        m.ssh(f"install -d -o weston -g weston -m 0700 /home/weston/.local "
              f"/home/weston/.local/state {state} && "
              f"echo '{{\"version\": 1, \"step\": \"done\", \"layout\": \"us\"}}' "
              f"> {state}/first-start.json && chown weston: {state}/first-start.json",
              check=True)
    finally:
        m.ssh("sync && mount -o remount,ro /", check=True)
    m.ssh("systemctl restart vmclient-desktop", check=True)
    # the VM whose recipe lets in the stick only (the desktop fixture started its install)
    m.wait_until("systemctl is-active -q vmclient-test-usb-vm || "
                 "systemctl is-failed -q vmclient-test-usb-vm", timeout=300)
    assert m.ssh("systemctl is-active -q vmclient-test-usb-vm").rc == 0, m.ssh(
        "journalctl -b --no-pager -u vmclient-test-usb-vm").stdout
    t_started = time.monotonic()
    deadline = time.monotonic() + 120
    while True:
        shown = screen(m, tmp_path / "vm.ppm")
        if shown.share(PRIVATE_RGB) > 0.02 and shown.share(FIRST_START_RGB) < 0.1:
            break
        assert time.monotonic() < deadline, (
            f"the shell does not show {USB_VM} in its zone's colour (screendump in "
            f"{tmp_path}):\n" + desktop_log(m))
        time.sleep(2)
    t_shown = time.monotonic()
    assert redirected(m) == []  # nothing redirected yet
    # The stick (its first sector known) and the phone are plugged into the host.
    stick = tmp_path / "stick.raw"
    stick.write_bytes(STICK_MARK.ljust(1 << 20, b"\0"))
    (tmp_path / "phone").mkdir()
    # The phone first: the shell's policy connects what is plugged in to the shown VM
    # by itself, and the recipe's filter (QEMU's, sent to spice-gtk) keeps it out ...
    harness.plug_usb(m.qmp, "phone", "usb-mtp", rootdir=str(tmp_path / "phone"))
    m.wait_until("grep -qx 0004 /sys/bus/usb/devices/*/idProduct", timeout=30)
    # ... then the stick, which it lets in.
    t_phone = time.monotonic()
    harness.plug_usb(m.qmp, "stick", "usb-storage", image=stick)
    deadline = time.monotonic() + 180  # spice-gtk, polkit and two QEMUs, under TCG
    while not (inside := redirected(m)):
        assert time.monotonic() < deadline, (
            f"no device in {USB_VM}\n" + m.ssh(HOST_USB).stdout + desktop_log(m))
        time.sleep(1)
    # One device went in: the stick, which the shell's spice-gtk holds (its interface is
    # usbfs's, no longer the host's usb-storage: no USB disk on the host); the phone
    # stays the host's, unclaimed.
    assert len(inside) == 1, inside
    host = m.ssh(HOST_USB, check=True).stdout.splitlines()
    assert f"{STICK_ID} usbfs" in host and f"{PHONE_ID} " in host, host
    assert "usb" not in m.ssh("lsblk -dno TRAN", check=True).stdout
    # the shell never crashed (it did, in libusb, when it asked spice-gtk for its devices)
    crashed = m.ssh("dmesg | grep -i segfault; "
                    "systemctl show -p NRestarts --value vmclient-desktop").stdout
    assert crashed.strip() == "0", crashed + desktop_log(m)
    log = m.ssh("journalctl -b --no-pager -u vmclient-desktop", check=True).stdout
    assert "Traceback" not in log, log[-3000:]
    # The VM stops: its session closes and the stick comes back to the host, intact.
    t_usb = time.monotonic()
    m.ssh(f"virsh -q destroy {USB_VM}", check=True)
    m.wait_until("lsblk -dno TRAN | grep -q usb", timeout=60)
    head = m.ssh("dd if=$(lsblk -dnpo NAME,TRAN | awk '$2 == \"usb\" {print $1}') "
                 f"bs=512 count=1 status=none | head -c {len(STICK_MARK)}", check=True).stdout
    assert head == STICK_MARK.decode(), head
    print(f"desktop: VM installed and started after {t_started - t0:.0f} s more, shown "
          f"{t_shown - t_started:.0f} s later; phone plugged in {t_phone - t_shown:.0f} s, "
          f"stick in the VM {t_usb - t_phone:.0f} s, back on the host "
          f"{time.monotonic() - t_usb:.0f} s")


def test_the_lid_opened_after_sleep_shows_the_lock_page(
        desktop: harness.Machine, tmp_path: Path) -> None:
    """Lid closed: the shell locks, the host sleeps (S3); lid opened: the screen shows the
    lock page (black, its white password field), not a dead output.  With virtio-vga it
    stayed "Display output is not active": QEMU resets the devices when the host wakes and
    the test host's kernel cannot restore a virtio-gpu (harness.screen_args)."""
    m = desktop
    assert m.events is not None and m.qmp is not None
    harness.ensure_test_lid(m)
    mark = m.events.mark()
    harness.lid(m, "close")
    m.events.wait_for("SUSPEND", timeout=120, after=mark)
    m.qmp.execute("system_wakeup")
    m.events.wait_for("WAKEUP", timeout=30, after=mark)
    m.wait_until("true", timeout=60)
    harness.lid(m, "open")
    deadline = time.monotonic() + 60
    while True:
        shown = screen(m, tmp_path / "woken.ppm")
        if shown.share((0, 0, 0)) > 0.9 and shown.share((255, 255, 255)) > 0.005:
            break
        assert time.monotonic() < deadline, (
            f"no lock page after the lid opened (screendump in {tmp_path}):\n"
            + desktop_log(m))
        time.sleep(2)

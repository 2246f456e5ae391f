"""The booted test host shows the laptop's desktop on its screen, as ``make run`` shows
it to a person: Weston's kiosk shell on the seat, started by systemd as the
unprivileged user weston (in group vmclient, as on the Yocto image) in a logind
session, and vmclient-shell full screen in it.

The host boots with a screen (``harness.screen_args()``: virtio-vga, no VNC here); the
picture is read back with QMP ``screendump``.  A fresh host is not enrolled, so the
shell opens its first-start page (python-services/docs/shell.md): its background
covers most of the screen, where the text console was before.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import harness
import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

FIRST_START_RGB = (30, 30, 40)  # vmclient.shell.firstpage: #firststart's background


def ppm_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of the binary PPM (P6) QEMU's screendump writes."""
    data = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' comments are not written
        while data[pos:pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    assert fields[0] == b"P6" and fields[3] == b"255", fields
    w, h = int(fields[1]), int(fields[2])
    return w, h, data[pos + 1:pos + 1 + 3 * w * h]


def share_of(rgb: tuple[int, int, int], pixels: bytes) -> float:
    n = len(pixels) // 3
    return pixels.count(bytes(rgb)) / n if n else 0.0


def screen(m: harness.Machine, path: Path) -> tuple[int, int, bytes]:
    m.qmp.execute("screendump", filename=str(path))
    return ppm_pixels(path)


def test_the_host_boots_to_vmclient_shell_on_its_screen(
        host_boot_config: harness.BootConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(host_boot_config,
                              extra_args=[*host_boot_config.extra_args, *harness.screen_args()])
    with harness.booted(cfg) as m:
        m.wait_system_running()
        before = screen(m, tmp_path / "console.ppm")
        m.wait_until("systemctl is-active -q vmclient-desktop", timeout=120)
        session = m.ssh("loginctl list-sessions --no-legend", check=True).stdout
        assert "weston" in session and "seat0" in session, session
        m.wait_until("pgrep -u weston -f bin/vmclient-shell", timeout=120)
        deadline = time.monotonic() + 180  # GTK starting under TCG
        share = 0.0
        while time.monotonic() < deadline:
            w, h, px = screen(m, tmp_path / "screen.ppm")
            share = share_of(FIRST_START_RGB, px)
            if share > 0.5:
                break
            time.sleep(2)
        journal = m.ssh("journalctl -b --no-pager -u vmclient-desktop | tail -40").stdout
        assert share > 0.5, (f"the first-start page covers {share:.0%} of the {w}x{h} "
                             f"screen (screendump in {tmp_path}); Weston's journal:\n{journal}")
        assert share_of(FIRST_START_RGB, before[2]) < 0.1  # it was the console before
        # The seat's keyboard reaches the shell (what a person types on VNC): two Downs
        # move the layout list's selection, so the picture changes and nothing else did.
        time.sleep(2)
        still = screen(m, tmp_path / "still.ppm")[2]
        assert still == px, "the first-start page changed with no key pressed"
        for _ in range(2):
            m.qmp.execute("send-key", keys=[{"type": "qcode", "data": "down"}])
            time.sleep(0.5)
        moved = px
        for _ in range(30):
            moved = screen(m, tmp_path / "keys.ppm")[2]
            if moved != px:
                break
            time.sleep(1)
        assert moved != px, "two Down keys did not move the first-start page's selection"
        assert share_of(FIRST_START_RGB, moved) > 0.5
        # the shell runs as weston, never root, in group vmclient (the bus policy's group)
        ids = m.ssh("id weston", check=True).stdout
        assert "(vmclient)" in ids, ids
        assert m.ssh("pgrep -u root -f bin/vmclient-shell").rc != 0

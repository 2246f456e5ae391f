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
import sys
import time
from pathlib import Path

import harness
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pixels import Image

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

FIRST_START_RGB = (30, 30, 40)  # vmclient.shell.firstpage: #firststart's background


def screen(m: harness.Machine, path: Path) -> Image:
    """The host's screen now (QEMU's screendump, a PPM, decoded by GdkPixbuf)."""
    m.qmp.execute("screendump", filename=str(path))
    return Image.load(path)


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

"""The output scale Weston gets on the laptop: 2 on a HiDPI panel (at least 192 pixels per
inch and 1200 rows), from the panel's EDID, else 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from testlib import edid_block as edid
from vmclient.shell import hidpi


@pytest.mark.parametrize(("panel", "scale"), [
    ((2560, 1600, 286, 179), 2),   # 13.3" 16:10, 227 ppi
    ((2880, 1800, 302, 189), 2),   # 14", 242 ppi
    ((3840, 2160, 344, 194), 2),   # 15.6" 4K, 283 ppi
    ((2560, 1440, 294, 165), 2),   # 13.3" QHD, 221 ppi
    ((1920, 1200, 301, 188), 1),   # 14" WUXGA, 162 ppi
    ((1920, 1080, 256, 144), 1),   # 11.6" FHD, 190 ppi: below the limit
    ((3840, 2160, 597, 336), 1),   # a 27" 4K monitor, 163 ppi
    ((1366, 768, 344, 194), 1),    # an old 15.6" panel
])
def test_a_hidpi_panel_gets_scale_2_and_the_others_1(panel, scale):
    p = hidpi.parse_edid(edid(*panel))
    assert p == hidpi.Panel(*panel)
    assert hidpi.scale_for(p) == scale


def test_no_usable_size_or_no_edid_stays_at_1():
    assert hidpi.scale_for(hidpi.parse_edid(edid(3840, 2160, 0, 0, 0, 0))) == 1  # projector
    # EDID 1.4: an aspect ratio in place of the size (one of the two bytes 0)
    assert hidpi.scale_for(hidpi.parse_edid(edid(3840, 2160, 0, 0, 79, 0))) == 1
    # the timing's size unset, the block's (cm) used: 13.3" 2560x1600 again
    assert hidpi.parse_edid(edid(2560, 1600, 0, 0, 29, 18)) == hidpi.Panel(2560, 1600, 290, 180)
    assert hidpi.scale_for(hidpi.parse_edid(edid(2560, 1600, 0, 0, 29, 18))) == 2
    for junk in (b"", b"\0" * 128, edid(2560, 1600, 286, 179)[:100]):
        assert hidpi.parse_edid(junk) is None
    assert hidpi.scale_for(None) == 1


def test_weston_gets_an_output_section_for_each_connected_hidpi_output(tmp_path: Path):
    drm = tmp_path / "drm"
    for name, status, data in (("card0-eDP-1", "connected", edid(2560, 1600, 286, 179)),
                               ("card0-HDMI-A-1", "connected", edid(1920, 1080, 531, 299)),
                               ("card0-DP-1", "disconnected", edid(3840, 2160, 344, 194)),
                               ("card1-DP-2", "connected", b"")):
        (drm / name).mkdir(parents=True)
        (drm / name / "status").write_text(status + "\n")
        (drm / name / "edid").write_bytes(data)
    (drm / "card0").mkdir()  # the device itself: not an output
    assert hidpi.outputs(drm) == {"eDP-1": 2, "HDMI-A-1": 1, "DP-2": 1}
    base = tmp_path / "weston.ini"
    base.write_text("[core]\nshell=kiosk-shell.so\n")
    out = tmp_path / "run" / "weston.ini"
    assert hidpi.main([str(drm), str(base), str(out)]) == 0
    assert out.read_text() == "[core]\nshell=kiosk-shell.so\n\n[output]\nname=eDP-1\nscale=2\n"
    # no outputs readable (no DRM): the image's weston.ini as it is
    assert hidpi.main([str(tmp_path / "none"), str(base), str(out)]) == 0
    assert out.read_text() == base.read_text()

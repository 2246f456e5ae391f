"""The screen's scale for Weston: 2 on a HiDPI panel, else 1 (pure, but for :func:`main`).

GTK 3 draws the shell at the scale of the output its window is on (the bar,
the pages and their text at twice the pixels on a scale-2 output; the VMs'
pictures scaled to fill the same area), so a HiDPI laptop needs only Weston
to know its output's scale.  Weston does not guess one: its ``[output]``
sections in weston.ini give it, per output name (the kernel's connector
name: ``eDP-1``, ``HDMI-A-1``, ``DP-1``).  weston.service's drop-in runs
:func:`main` before each start: the image's weston.ini plus an ``[output]``
section for every connected output this module scales, from the panel's
EDID (its preferred mode and its physical size).

The rule is GNOME's long-standing one (gnome-settings-daemon): scale 2 when
the output has at least 192 pixels per inch and at least 1200 rows, else 1;
no fractional scales (GTK 3 has none).  An EDID without a usable size (a
projector, a TV that reports 0 or only an aspect ratio) stays at 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..host.files import write_atomic

HIDPI_DPI = 192
HIDPI_MIN_ROWS = 1200
_HEADER = bytes([0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0])
_MM_PER_INCH = 25.4


@dataclass(frozen=True)
class Panel:
    width_px: int
    height_px: int
    width_mm: int
    height_mm: int


def parse_edid(untrusted_edid: bytes) -> Panel | None:
    """The preferred mode (the first detailed timing) and the physical size of an EDID's
    base block; None for anything else."""
    edid = untrusted_edid
    if len(edid) < 128 or edid[:8] != _HEADER:
        return None
    dtd = edid[54:72]
    if dtd[0] == 0 and dtd[1] == 0:  # a display descriptor, not a timing
        return None
    width_px = dtd[2] | (dtd[4] & 0xF0) << 4
    height_px = dtd[5] | (dtd[7] & 0xF0) << 4
    width_mm = dtd[12] | (dtd[14] & 0xF0) << 4
    height_mm = dtd[13] | (dtd[14] & 0x0F) << 8
    if not width_mm or not height_mm:  # the timing's size unset: the block's, in cm
        width_mm, height_mm = edid[21] * 10, edid[22] * 10
    return Panel(width_px, height_px, width_mm, height_mm)


def scale_for(panel: Panel | None) -> int:
    """2 for a HiDPI panel, else 1 (the module's rule)."""
    if panel is None or panel.width_mm < 10 or panel.height_mm < 10:
        return 1  # no size, or an aspect ratio only
    dpi_x = panel.width_px * _MM_PER_INCH / panel.width_mm
    dpi_y = panel.height_px * _MM_PER_INCH / panel.height_mm
    hidpi = min(dpi_x, dpi_y) >= HIDPI_DPI and panel.height_px >= HIDPI_MIN_ROWS
    return 2 if hidpi else 1


def outputs(drm: Path) -> dict[str, int]:
    """The scale of every connected output under ``drm`` (``/sys/class/drm``): its
    connector name (``card0-eDP-1`` → ``eDP-1``) → scale."""
    out = {}
    for conn in sorted(drm.glob("card*-*")):
        try:
            if (conn / "status").read_text().strip() != "connected":
                continue
            edid = (conn / "edid").read_bytes()
        except OSError:
            continue
        out[conn.name.split("-", 1)[1]] = scale_for(parse_edid(edid))
    return out


def weston_ini(base: str, scales: dict[str, int]) -> str:
    """``base`` (the image's weston.ini) with an ``[output]`` section for every output
    scaled above 1."""
    sections = "".join(f"\n[output]\nname={name}\nscale={scale}\n"
                       for name, scale in sorted(scales.items()) if scale > 1)
    return base.rstrip("\n") + "\n" + sections


def main(argv: list[str] | None = None) -> int:
    """``python3 -m vmclient.shell.hidpi DRM_DIR BASE_INI OUT_INI``: writes OUT_INI (the
    base as it is when the outputs cannot be read: Weston must start all the same)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python3 -m vmclient.shell.hidpi DRM_DIR BASE_INI OUT_INI",
              file=sys.stderr)
        return 2
    drm, base, out = Path(args[0]), Path(args[1]).read_text(), Path(args[2])
    try:
        scales = outputs(drm)
    except OSError as exc:
        print(f"outputs not read ({exc}): no scale set", file=sys.stderr)
        scales = {}
    # Weston reads it as the seat's user; /run: no fsync
    write_atomic(out, weston_ini(base, scales).encode(), mode=0o644, durable=False,
                 dir_mode=None)
    for name, scale in sorted(scales.items()):
        print(f"output {name}: scale {scale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

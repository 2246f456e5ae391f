"""The overview page: every VM that can be shown, as a live thumbnail in its zone's frame.

Thumbnails are copies of each VM's SPICE picture (``SpiceDisplay.get_pixbuf``:
every running VM's session stays connected), scaled down and refreshed twice a
second while the page is open.  A click on one switches to it; the keys are
:func:`state.overview_key`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gi

from . import state
from .spice import VMDisplay

gi.require_version("GdkPixbuf", "2.0")
gi.require_version("Gtk", "3.0")
from gi.repository import GdkPixbuf, GLib, Gtk, Pango  # noqa: E402

THUMB_W = 300
REFRESH_MS = 500
TILE_PX = 6  # the zone-coloured frame around a thumbnail

CSS = "".join(f"#tile-{z.value} {{ background-color: rgb({r}, {g}, {b}); }}\n"
              for z, (r, g, b) in state.ZONE_COLOURS.items()) + """
#overview { background-color: rgb(24, 24, 24); }
#overview label { color: white; }
"""


class Overview:
    def __init__(self, on_choose: Callable[[str], None]) -> None:
        self.on_choose = on_choose
        self.widget = Gtk.EventBox()
        self.widget.set_name("overview")
        self.box = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=24)
        self.box.set_halign(Gtk.Align.CENTER)
        self.box.set_valign(Gtk.Align.CENTER)
        self.widget.add(self.box)
        self.tiles: dict[str, tuple[Any, Any, Any]] = {}  # name -> (tile, image, label)
        self._order: list[tuple[str, state.Zone]] = []
        self._timer: int | None = None
        self._displays: Mapping[str, VMDisplay] = {}

    def show(self, st: state.State, displays: Mapping[str, VMDisplay]) -> None:
        self._displays = displays
        order = [(v.name, v.zone) for v in st.vms if v.showable]
        if order != self._order:
            self._rebuild(order)
        for i, (name, _zone) in enumerate(order, 1):
            mark = "\u25b6 " if name == st.selected else ""
            self.tiles[name][2].set_text(f"{mark}{i}  {name}")
        self.refresh()
        if self._timer is None:
            self._timer = GLib.timeout_add(REFRESH_MS, self._tick)

    def hide(self) -> None:
        if self._timer is not None:
            GLib.source_remove(self._timer)
            self._timer = None

    def _rebuild(self, order: list[tuple[str, state.Zone]]) -> None:
        for tile, _image, _label in self.tiles.values():
            self.box.remove(tile)
        self.tiles.clear()
        for name, zone in order:
            tile = Gtk.EventBox()
            tile.set_name(f"tile-{zone.value}")
            inner = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=TILE_PX)
            image = Gtk.Image()
            image.set_size_request(THUMB_W, THUMB_W * 9 // 16)
            for side in ("start", "end", "top"):
                getattr(image, f"set_margin_{side}")(TILE_PX)
            text = Gtk.Label(xalign=0)
            text.set_ellipsize(Pango.EllipsizeMode.END)
            text.set_max_width_chars(30)
            text.set_margin_start(TILE_PX)
            text.set_margin_bottom(TILE_PX)
            inner.pack_start(image, False, False, 0)
            inner.pack_start(text, False, False, 0)
            tile.add(inner)
            tile.connect("button-press-event", lambda _w, _e, n=name: self.on_choose(n))
            self.box.pack_start(tile, False, False, 0)
            tile.show_all()
            self.tiles[name] = (tile, image, text)
        self._order = order

    def _tick(self) -> bool:
        self.refresh()
        return True

    def refresh(self) -> None:
        for name, (_tile, image, _label) in self.tiles.items():
            d = self._displays.get(name)
            pix = d.display.get_pixbuf() if d is not None and d.display is not None else None
            if pix is None or pix.get_width() <= 0:
                continue
            h = max(1, pix.get_height() * THUMB_W // pix.get_width())
            image.set_from_pixbuf(pix.scale_simple(THUMB_W, h, GdkPixbuf.InterpType.BILINEAR))

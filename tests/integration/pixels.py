"""RGB images for pixel assertions, decoded and scaled by GdkPixbuf (PNG, PPM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gi

gi.require_version("GdkPixbuf", "2.0")
from gi.repository import GdkPixbuf

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Image:
    pixbuf: GdkPixbuf.Pixbuf

    @classmethod
    def decode(cls, data: bytes) -> Image:
        loader = GdkPixbuf.PixbufLoader()
        loader.write(data)
        loader.close()
        return cls(loader.get_pixbuf())

    @classmethod
    def load(cls, path: Path) -> Image:
        return cls(GdkPixbuf.Pixbuf.new_from_file(str(path)))

    @property
    def width(self) -> int:
        return int(self.pixbuf.get_width())

    @property
    def height(self) -> int:
        return int(self.pixbuf.get_height())

    def _bytes(self) -> bytes:
        cached = self.__dict__.get("_data")
        if cached is None:
            cached = bytes(self.pixbuf.get_pixels())
            object.__setattr__(self, "_data", cached)
        return cached

    def at(self, x: int, y: int) -> RGB:
        n, stride = self.pixbuf.get_n_channels(), self.pixbuf.get_rowstride()
        i = y * stride + x * n
        d = self._bytes()
        return d[i], d[i + 1], d[i + 2]

    def rgb_rows(self) -> bytes:
        """The pixels, RGB, row after row (no alpha, no row padding)."""
        n, stride, d = self.pixbuf.get_n_channels(), self.pixbuf.get_rowstride(), self._bytes()
        rows = (d[y * stride:y * stride + self.width * n] for y in range(self.height))
        if n == 3:
            return b"".join(rows)
        return b"".join(bytes(b for i, b in enumerate(r) if i % n < 3) for r in rows)

    def share(self, rgb: RGB) -> float:
        """The share of the picture that is exactly ``rgb``."""
        n = self.width * self.height
        return self.rgb_rows().count(bytes(rgb)) / n if n else 0.0

    def same(self, other: Image) -> bool:
        """Pixel for pixel the same picture."""
        return (self.width, self.height) == (other.width, other.height) \
            and self.rgb_rows() == other.rgb_rows()

    @staticmethod
    def near(a: RGB, b: RGB, tolerance: int) -> bool:
        return all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True))

    def crop(self, x: int, y: int, w: int, h: int) -> Image:
        return Image(self.pixbuf.new_subpixbuf(x, y, w, h).copy())

    def scaled(self, w: int, h: int) -> Image:
        return Image(self.pixbuf.scale_simple(w, h, GdkPixbuf.InterpType.BILINEAR))

    def reduced(self, factor: int) -> Image:
        """Smaller by ``factor``, each pixel the mean of its area: what two scaling
        filters disagree on (glyph edges) averages out, the picture stays."""
        return Image(self.pixbuf.scale_simple(max(1, self.width // factor),
                                              max(1, self.height // factor),
                                              GdkPixbuf.InterpType.HYPER))

    def mean_difference(self, other: Image, step: int = 1) -> float:
        """Mean absolute difference per channel (0-255) over a grid of pixels."""
        assert (self.width, self.height) == (other.width, other.height)
        total = count = 0
        for y in range(0, self.height, step):
            for x in range(0, self.width, step):
                a, b = self.at(x, y), other.at(x, y)
                total += sum(abs(p - q) for p, q in zip(a, b, strict=True))
                count += 3
        return total / count

    def save(self, path: Path) -> None:
        self.pixbuf.savev(str(path), "png", [], [])

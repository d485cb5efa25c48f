"""Pixels of a slide for the viewer: OpenSlide's DeepZoom generator over the slide file, over a
plain image (OpenSlide's `ImageSlide`), or over the tiling's thumbnail when the slide itself
cannot be read here (moved, or a folder of tiles).

Coordinates a caller passes (`region`) are level-0 pixels of the slide; `scale` converts the
displayed image's pixels to level-0 ones (1 unless the thumbnail stands in).
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from histovl.errors import HistovlError

TILE_SIZE = 254
OVERLAP = 1
#: Longest side of the proxy image the coarse DeepZoom levels are cut from (see `DeepZoomSource`).
PROXY_SIDE = 2048


class SlideUnavailableError(HistovlError):
    """The slide cannot be shown (no OpenSlide, or neither the file nor a thumbnail reads)."""


def _open_slide(path: Path | None, thumbnail: Path | None) -> tuple[Any, str]:
    """An OpenSlide-like object and what it is (``slide``, ``image`` or ``thumbnail``)."""
    try:
        import openslide
    except ImportError as err:  # the `slides` extra is missing
        raise SlideUnavailableError("the slide viewer needs OpenSlide: pip install 'histovl[slides]'") from err
    from histovl.slides.reader import allow_large_images

    problems = []
    if path is not None and path.is_file():
        try:
            return openslide.OpenSlide(str(path)), "slide"
        except (openslide.OpenSlideError, OSError) as err:
            problems.append(f"OpenSlide: {err}")
        try:
            with allow_large_images(2_000_000_000):
                return openslide.ImageSlide(str(path)), "image"
        except (OSError, ValueError) as err:
            problems.append(f"image: {err}")
    elif path is not None:
        problems.append(f"{path} not found")
    if thumbnail is not None and thumbnail.is_file():
        return openslide.ImageSlide(str(thumbnail)), "thumbnail"
    raise SlideUnavailableError("; ".join(problems) or "no slide file")


class DeepZoomSource:
    """The DeepZoom pyramid of one slide (thread-safe).

    The coarse levels (downsample 2**k and more, k the smallest with the slide at most
    `PROXY_SIDE` pixels a side) are cut from a *proxy*: the slide read once at that downsample
    and kept in memory. Without it a slide with few pyramid levels (CMU-1-Small-Region has one)
    reads its whole level 0 for every coarse tile (1.5 s each); with it those tiles cost a crop.
    The proxy's DeepZoom levels have exactly the dimensions and tile grid of the slide's own
    (``ceil(ceil(W / 2**k) / 2**j) == ceil(W / 2**(k + j))``), so level numbers carry over.
    """

    def __init__(self, path: Path | None, *, thumbnail: Path | None = None,
                 level0_size: tuple[int, int] | None = None, jpeg_quality: int = 80) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        self.slide, self.kind = _open_slide(path, thumbnail)
        self.generator = DeepZoomGenerator(self.slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        self.size: tuple[int, int] = tuple(self.slide.dimensions)  # type: ignore[assignment]
        self.level0_size = level0_size or self.size
        self.scale = self.level0_size[0] / max(1, self.size[0])
        self.quality = jpeg_quality
        # ImageSlide decodes the whole image on first use through Pillow: one reader at a time.
        self._lock = threading.Lock() if self.kind != "slide" else None
        longest = max(self.size)
        self._proxy_k = max(1, math.ceil(math.log2(max(1.0, longest / PROXY_SIDE))))
        self._proxy_levels = self.level_count - self._proxy_k  # levels below this come from the proxy
        self._proxy: Any = None
        self._proxy_lock = threading.Lock()

    def dzi(self) -> str:
        """The DeepZoom descriptor (XML) OpenSeadragon opens."""
        return self.generator.get_dzi("jpeg")

    @property
    def level_count(self) -> int:
        return int(self.generator.level_count)

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """One JPEG tile, or None when the address is outside the pyramid."""
        if not 0 <= level < self.level_count:
            return None
        cols, rows = self.generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        if level < self._proxy_levels:
            image = self._proxy_generator().get_tile(level, (col, row))
            expected = self.generator.get_tile_dimensions(level, (col, row))
            if image.size != expected:  # DeepZoomGenerator's aspect-keeping thumbnail can lose a pixel
                image = image.resize(expected, Image.Resampling.BOX)
        else:
            image = self._locked(lambda: self.generator.get_tile(level, (col, row)))
        return encode_jpeg(image, self.quality)

    def _proxy_generator(self) -> Any:
        """The DeepZoom generator over the proxy image, built on first use."""
        with self._proxy_lock:
            if self._proxy is None:
                import openslide
                from openslide.deepzoom import DeepZoomGenerator

                factor = 2 ** self._proxy_k
                target = (math.ceil(self.size[0] / factor), math.ceil(self.size[1] / factor))
                level = self.slide.get_best_level_for_downsample(factor)
                read = self._locked(lambda: self.slide.read_region((0, 0), level, self.slide.level_dimensions[level]))
                proxy = read.convert("RGB").resize(target, Image.Resampling.BOX)
                self._proxy = DeepZoomGenerator(openslide.ImageSlide(proxy), tile_size=TILE_SIZE, overlap=OVERLAP,
                                                limit_bounds=False)
            return self._proxy

    def region(self, x: int, y: int, width: int, height: int, max_side: int = 256) -> bytes:
        """A JPEG of a level-0 box, at most `max_side` pixels on its longer side."""
        s = self.scale
        box = (int(x / s), int(y / s), max(1, int(width / s)), max(1, int(height / s)))
        downsample = max(box[2], box[3]) / max_side
        level = self.slide.get_best_level_for_downsample(max(1.0, downsample))
        factor = self.slide.level_downsamples[level]
        size = (max(1, int(box[2] / factor)), max(1, int(box[3] / factor)))
        image = self._locked(lambda: self.slide.read_region((box[0], box[1]), level, size))
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
        return encode_jpeg(image, self.quality)

    def _locked(self, read: Any) -> Image.Image:
        if self._lock is None:
            return read()
        with self._lock:
            return read()

    def close(self) -> None:
        self.slide.close()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()

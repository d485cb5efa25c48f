"""One small reader interface over whole-slide files, plain large images and folders of tiles.

Tiling, tissue detection and HistoStainAlign only ever see `SlideReader`; which library decodes
the pixels (OpenSlide, tiffslide, Pillow) stays here. Every reader returns RGB: pixels a scanner
left transparent (outside the scanned area) are composited onto white, so they look like glass
background to tissue detection and to the model, not like black tissue.
"""

from __future__ import annotations

import abc
import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histovl._inputs import image_size_problem
from histovl.errors import HistovlError

#: Extensions OpenSlide / tiffslide handle (plain .tif/.tiff are tried as slides first).
SLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)
#: Extensions read whole with Pillow (a "plain" image) or found inside a tile folder.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"})
#: Most bytes of RGB level data a thumbnail reads at once (it reads a level in bands).
THUMBNAIL_BAND_BYTES = 64 * 1024 * 1024


class SlideOpenError(HistovlError):
    """A slide file could not be opened by any backend."""


class TileReadError(HistovlError):
    """Reading one region failed (the tiler reopens the slide and retries once)."""


class SlideReadError(HistovlError):
    """Too many tiles of a slide failed to read; the slide is given up."""


@contextmanager
def allow_large_images(max_pixels: int | None) -> Iterator[None]:
    """Raise Pillow's decompression-bomb limit for the duration of the block only.

    Pillow refuses images above ``Image.MAX_IMAGE_PIXELS`` (about 179 MP by default) to protect
    against decompression bombs; histovl never changes that globally (docs/reliability.md). A user who
    trusts a bigger plain image opens it inside this context, which restores the old value on
    exit, also after an error. Not thread-safe: the limit is a process-wide Pillow setting.

    Example:
        >>> with allow_large_images(500_000_000):  # doctest: +SKIP
        ...     reader = PlainImageReader("big_scan.png")
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def composite_on_white(img: Image.Image) -> Image.Image:
    """RGB copy of `img` with any transparency composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "RGBA" and img.getchannel("A").getextrema() == (255, 255):
        return img.convert("RGB")  # fully scanned region: the common case, skip the composite
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


class SlideReader(abc.ABC):
    """A multi-resolution RGB image read region by region.

    Attributes:
        path: the file or folder this reader opened.
        level_dimensions: (width, height) per level, level 0 the largest.
        level_downsamples: level-0 pixels per level pixel, per level.
        mpp: microns per level-0 pixel (from the file, or given by the user), or None.
        objective_power: the scanner's objective magnification, or None when unknown.
    """

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    objective_power: float | None

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @abc.abstractmethod
    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        """Backend read; may return RGBA. Raise `TileReadError` on a decoder fault."""

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        """RGB region of `size` (level pixels) whose top-left is (x, y) in level-0 pixels.

        Parts outside the image come back white, like unscanned glass. A region above the pixel
        limit (`histovl._inputs.max_image_pixels`) is refused: slides are read region by region.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} does not exist; this slide has levels 0..{self.level_count - 1}")
        too_big = image_size_problem(size)
        if too_big is not None:
            raise ValueError(f"{self.path}: a region of {too_big}")
        return composite_on_white(self._read(int(x), int(y), int(level), (int(size[0]), int(size[1]))))

    def best_level_for_downsample(self, downsample: float, tolerance: float = 0.01) -> int:
        """The coarsest level whose downsample does not exceed `downsample` (within `tolerance`).

        Reading at or finer than the target and shrinking keeps detail; never upsample needlessly.
        """
        best = 0
        for lvl, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + tolerance):
                best = lvl
        return best

    def thumbnail(self, max_side: int = 2048) -> Image.Image:
        """RGB thumbnail whose longer side is at most `max_side` (aspect kept)."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_side
        if scale <= 1.0:
            return self.read_region(0, 0, 0, (w0, h0))
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        target = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        # Read the level in horizontal bands so a slide without a small pyramid level (one huge
        # level 0) never has to fit in memory at once; each band is shrunk before the next read.
        band = max(1, min(lh, THUMBNAIL_BAND_BYTES // max(1, 3 * lw)))
        thumb = Image.new("RGB", target, (255, 255, 255))
        for top in range(0, lh, band):
            rows = min(band, lh - top)
            y0, y1 = round(top * target[1] / lh), round((top + rows) * target[1] / lh)
            if y1 <= y0:
                continue
            region = self.read_region(0, round(top * ds), level, (lw, rows))
            thumb.paste(region.resize((target[0], y1 - y0), Image.Resampling.BILINEAR), (0, y0))
        return thumb

    def reopen(self) -> None:
        """Close and reopen the underlying file (after a read error left it in a bad state).

        Readers that hold no file handle (in-memory images) have nothing to do.
        """
        return None

    def close(self) -> None:
        """Release the file handle (nothing to do for in-memory readers)."""
        return None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (written next to every tiling)."""
        return {
            "path": os.fspath(self.path),
            "reader": type(self).__name__,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "objective_power": self.objective_power,
        }


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


class OpenSlideReader(SlideReader):
    """Whole-slide files through OpenSlide, or tiffslide when OpenSlide cannot open the file.

    Both libraries are thread-safe for reads, but after a decoder error OpenSlide's handle stays
    in an error state; `reopen` gives a fresh one.
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | None = None, backend: str = "auto") -> None:
        self.path = Path(path)
        self._user_mpp = mpp
        self._backend_choice = backend
        self._open()

    def _open(self) -> None:
        errors: list[str] = []
        handle: Any = None
        if self._backend_choice in ("auto", "openslide"):
            try:
                import openslide

                handle = openslide.OpenSlide(os.fspath(self.path))
                self.backend = "openslide"
                self._errors: tuple[type[BaseException], ...] = (openslide.OpenSlideError, OSError, ValueError)
            except ImportError as err:
                errors.append(f"openslide not installed ({err})")
            except (openslide.OpenSlideError, OSError, ValueError) as err:
                errors.append(f"openslide: {err}")
        if handle is None and self._backend_choice in ("auto", "tiffslide"):
            try:
                import tiffslide
                from tifffile import TiffFileError  # not a ValueError in every tifffile release
            except ImportError as err:
                errors.append(f"tiffslide not installed ({err})")
            else:
                tiff_errors = (OSError, ValueError, RuntimeError, KeyError, IndexError, TiffFileError)
                try:
                    handle = tiffslide.TiffSlide(os.fspath(self.path))
                    self.backend = "tiffslide"
                    self._errors = tiff_errors
                except tiff_errors as err:
                    errors.append(f"tiffslide: {err}")
        if handle is None:
            raise SlideOpenError(
                f"cannot open slide {self.path}: {'; '.join(errors)}. Install the slide extras "
                "(pip install 'histovl[slides]') or convert the file to a pyramidal TIFF."
            )
        self._handle = handle
        props = handle.properties
        self.level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        prefix = self.backend
        file_mpp = _float_or_none(props.get(f"{prefix}.mpp-x"))
        self.mpp = self._user_mpp if self._user_mpp is not None else file_mpp
        self.objective_power = _float_or_none(props.get(f"{prefix}.objective-power"))

    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        try:
            img: Image.Image = self._handle.read_region((x, y), level, size)
        except self._errors as err:
            raise TileReadError(f"{self.path}: read_region(({x}, {y}), {level}, {size}) failed: {err}") from err
        return img

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()
            self._handle = None


class PlainImageReader(SlideReader):
    """A PNG/JPEG/... read whole with Pillow and served as a one-level slide.

    Pillow's decompression-bomb guard applies; wrap the construction in `allow_large_images` to
    open a bigger image you trust.
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | None = None) -> None:
        self.path = Path(path)
        self.mpp = mpp
        self.objective_power = None
        self._open()

    def _open(self) -> None:
        try:
            with warnings.catch_warnings():  # the size is checked here, naming the file
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(self.path)
            with img:
                too_big = image_size_problem(img.size)  # before decoding (docs/reliability.md)
                if too_big is not None:
                    raise SlideOpenError(f"{self.path}: {too_big}, or open it inside histovl.slides.allow_large_images(max_pixels)")
                img.load()
                self._image = composite_on_white(img).copy()
        except Image.DecompressionBombError as err:
            raise SlideOpenError(
                f"{self.path} is larger than Pillow's decompression-bomb limit ({err}); if you trust "
                "it, open it inside histovl.slides.allow_large_images(max_pixels) or convert it to a "
                "pyramidal TIFF"
            ) from err
        except (OSError, ValueError, SyntaxError) as err:
            raise SlideOpenError(f"cannot open image {self.path}: {err}") from err
        self.level_dimensions = (self._image.size,)
        self.level_downsamples = (1.0,)

    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        # Pillow's crop pads outside the image with black; slides pad with white glass instead.
        w, h = self.dimensions
        region = Image.new("RGB", size, (255, 255, 255))
        box = (max(0, x), max(0, y), min(w, x + size[0]), min(h, y + size[1]))
        if box[2] > box[0] and box[3] > box[1]:
            region.paste(self._image.crop(box), (box[0] - x, box[1] - y))
        return region

    def reopen(self) -> None:
        self._open()


_COORD_RE = re.compile(r"x(\d+)[_\-.]y(\d+)", re.IGNORECASE)


class TileFolderReader(SlideReader):
    """A folder of tile images served as one slide: the tiles are laid out on a mosaic grid.

    Layout: when every file name carries coordinates (``..._x1024_y512...``), the distinct x and
    y values, sorted, give the column and row of each tile (so level-0 coordinates written by
    `histovl slides tile --save-tiles` round-trip); otherwise tiles are placed row by row in file
    name order, ``ceil(sqrt(n))`` per row. Every cell is the size of the first tile; gaps are
    white. The mosaic has one level; `mpp` is whatever the user says it is.

    With ``tolerant=True`` the cell size comes from the first tile that opens and a tile that
    cannot be read is left white in regions and thumbnails instead of raising `TileReadError`
    (stainalign: the encoding step that follows meets the same tile and raises `ImageReadError`
    naming it, or, with ``on_error="skip"``, records it and leaves it out of the bag).
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | None = None, tolerant: bool = False) -> None:
        self.path = Path(path)
        self.mpp = mpp
        self.objective_power = None
        self.tolerant = tolerant
        self.tile_paths = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.tile_paths:
            raise SlideOpenError(f"folder {self.path} holds no tile images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.tile_size = self._first_tile_size()
        self.cells = self._layout()
        cols = max(c for c, _ in self.cells) + 1
        rows = max(r for _, r in self.cells) + 1
        self.level_dimensions = ((cols * self.tile_size[0], rows * self.tile_size[1]),)
        self.level_downsamples = (1.0,)

    def _layout(self) -> list[tuple[int, int]]:
        coords = [_COORD_RE.search(p.stem) for p in self.tile_paths]
        if all(m is not None for m in coords):
            xy = [(int(m.group(1)), int(m.group(2))) for m in coords if m is not None]
            col_of = {v: i for i, v in enumerate(sorted({x for x, _ in xy}))}
            row_of = {v: i for i, v in enumerate(sorted({y for _, y in xy}))}
            return [(col_of[x], row_of[y]) for x, y in xy]
        per_row = math.ceil(math.sqrt(len(self.tile_paths)))
        return [(i % per_row, i // per_row) for i in range(len(self.tile_paths))]

    def _first_tile_size(self) -> tuple[int, int]:
        if not self.tolerant:
            with Image.open(self.tile_paths[0]) as first:
                return first.size
        for tile in self.tile_paths:
            try:
                with Image.open(tile) as img:
                    return img.size
            except (OSError, ValueError, SyntaxError):
                continue
        raise SlideOpenError(f"folder {self.path}: none of its {len(self.tile_paths)} tile images can be read")

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of tile `index` in mosaic pixels."""
        col, row = self.cells[index]
        tw, th = self.tile_size
        return col * tw, row * th, tw, th

    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        region = Image.new("RGB", size, (255, 255, 255))
        for i, path in enumerate(self.tile_paths):
            tx, ty, tw, th = self.tile_box(i)
            if tx >= x + size[0] or ty >= y + size[1] or tx + tw <= x or ty + th <= y:
                continue
            try:
                with Image.open(path) as img:
                    too_big = image_size_problem(img.size)
                    if too_big is not None:
                        raise ValueError(too_big)
                    img.load()
                    tile = composite_on_white(img).copy()
            except (OSError, ValueError, SyntaxError) as err:
                if self.tolerant:
                    continue  # left white
                raise TileReadError(f"cannot read tile {path}: {err}") from err
            region.paste(tile.resize((tw, th)) if tile.size != (tw, th) else tile, (tx - x, ty - y))
        return region


def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    backend: str = "auto",
    max_pixels: int | None = None,
) -> SlideReader:
    """Open a whole-slide file, a plain image or a folder of tiles as a `SlideReader`.

    Args:
        path: a slide file (``.svs``, ``.ndpi``, pyramidal ``.tif``, ...), a plain image
            (``.png``, ``.jpg``, ...) or a folder of tile images.
        mpp: microns per level-0 pixel; overrides the file's value (needed when the file has none
            and you tile by µm/px or magnification).
        backend: ``"auto"`` (OpenSlide, then tiffslide), ``"openslide"`` or ``"tiffslide"``.
        max_pixels: for plain images only, a raised Pillow size limit applied while opening this
            one image (see `allow_large_images`); None keeps Pillow's default guard.

    Example:
        >>> with open_slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
        ...     tile = slide.read_region(0, 0, 0, (224, 224))
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"slide not found: {p}")
    if p.is_dir():
        return TileFolderReader(p, mpp=mpp)
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        if max_pixels is not None:
            with allow_large_images(max_pixels):
                return PlainImageReader(p, mpp=mpp)
        return PlainImageReader(p, mpp=mpp)
    try:
        return OpenSlideReader(p, mpp=mpp, backend=backend)
    except SlideOpenError:
        if suffix in (".tif", ".tiff"):  # a flat TIFF that no slide library accepts
            return PlainImageReader(p, mpp=mpp)
        raise


def region_array(reader: SlideReader, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
    """`read_region` as a uint8 [H, W, 3] array (convenience for maths on pixels)."""
    return np.asarray(reader.read_region(x, y, level, size))

"""Tiling a slide: resolution and level choice, the tissue-filtered grid, fault-tolerant reading.

Conventions (docs/slides.md):
- Tile coordinates `x, y` are the tile's top-left corner in level-0 pixels, whatever level it is
  read from; `size` is the output tile's side in pixels; `mpp` its effective µm per pixel.
- A requested µm/px gives a target downsample ``d = mpp_target / mpp_slide``; a requested
  magnification gives ``d = objective_power / magnification`` when the slide records its
  objective, else ``d = (10 / magnification) / mpp_slide`` (the usual 20× ≈ 0.5 µm/px).
- Each tile covers ``E = round(size * d)`` level-0 pixels (this rounding is the only one on the
  grid, so tiles never drift); the grid steps by E from (0, 0) and keeps only whole tiles.
- The level read is the coarsest whose downsample is ≤ d (1% tolerance); the region read there is
  ``round(E / level_downsample)`` pixels and is resized to `size` only when that differs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from histovl.slides.reader import SlideReader, SlideReadError, TileReadError
from histovl.slides.tissue import TissueParams, detect_tissue, region_fractions

log = logging.getLogger(__name__)

TILE_COLUMNS = ["x", "y", "level", "size", "mpp", "tissue_fraction"]
ReaderFactory = Callable[[], SlideReader]


@dataclass(frozen=True)
class TileSpec:
    """What tiles to cut.

    Attributes:
        size: output tile side in pixels.
        mpp: target µm per pixel (exclusive with `magnification`); None with both None means the
            native level-0 resolution.
        magnification: target objective magnification, e.g. 20.
        tissue_threshold: keep tiles whose tissue fraction is at least this.
        thumbnail_max_side: longer side of the thumbnail tissue is detected on.
        max_bad_tiles: unreadable tiles tolerated (replaced by white and recorded) before the
            slide fails; None means ``max(5, 1% of the tiles)``.
    """

    size: int = 224
    mpp: float | None = None
    magnification: float | None = None
    tissue_threshold: float = 0.5
    thumbnail_max_side: int = 2048
    max_bad_tiles: int | None = None
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"tile size must be a positive number of pixels, got {self.size}")
        if self.mpp is not None and self.magnification is not None:
            raise ValueError("give either a target mpp or a magnification, not both")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError(f"target mpp must be > 0, got {self.mpp}")
        if self.magnification is not None and self.magnification <= 0:
            raise ValueError(f"magnification must be > 0, got {self.magnification}")
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ValueError(f"tissue_threshold must be in [0, 1], got {self.tissue_threshold}")


@dataclass(frozen=True)
class Resolution:
    """How a `TileSpec` maps onto one slide (see the module docstring for the rounding)."""

    target_downsample: float
    level: int
    level_downsample: float
    extent0: int
    read_size: int
    size: int
    mpp: float | None

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.size


def resolve_resolution(reader: SlideReader, spec: TileSpec) -> Resolution:
    """Choose the level, the level-0 extent and the read size of tiles for `spec` on `reader`."""
    if spec.mpp is not None:
        if reader.mpp is None:
            raise ValueError(
                f"{reader.path} records no µm/px; pass the slide's resolution (--slide-mpp) or tile "
                "at native resolution (omit --mpp/--magnification)"
            )
        target = spec.mpp / reader.mpp
    elif spec.magnification is not None:
        if reader.objective_power is not None:
            target = reader.objective_power / spec.magnification
        elif reader.mpp is not None:
            target = (10.0 / spec.magnification) / reader.mpp
        else:
            raise ValueError(
                f"{reader.path} records neither objective power nor µm/px; pass --slide-mpp or tile "
                "at native resolution (omit --mpp/--magnification)"
            )
    else:
        target = 1.0
    if target < 1.0 - 1e-6:
        log.warning("%s: requested resolution is finer than level 0; tiles are upsampled %.2fx", reader.path, 1 / target)
    level = reader.best_level_for_downsample(target)
    level_ds = reader.level_downsamples[level]
    extent0 = max(1, round(spec.size * target))
    read_size = max(1, round(extent0 / level_ds))
    mpp = reader.mpp * extent0 / spec.size if reader.mpp is not None else None
    return Resolution(target, level, level_ds, extent0, read_size, spec.size, mpp)


def plan_tiles(reader: SlideReader, res: Resolution, mask: np.ndarray, threshold: float) -> pd.DataFrame:
    """The tissue-filtered grid as a DataFrame with `TILE_COLUMNS`, row-major order."""
    w0, h0 = reader.dimensions
    nx, ny = w0 // res.extent0, h0 // res.extent0
    gx, gy = np.meshgrid(np.arange(nx) * res.extent0, np.arange(ny) * res.extent0)
    xs, ys = gx.ravel(), gy.ravel()
    sx, sy = w0 / mask.shape[1], h0 / mask.shape[0]
    boxes = np.stack([xs / sx, ys / sy, (xs + res.extent0) / sx, (ys + res.extent0) / sy], axis=1)
    frac = region_fractions(mask, boxes) if len(xs) else np.zeros(0, np.float32)
    keep = frac >= threshold
    return pd.DataFrame(
        {
            "x": xs[keep].astype(np.int64),
            "y": ys[keep].astype(np.int64),
            "level": res.level,
            "size": res.size,
            # an explicit float64 column: a scalar NaN would make pandas 3 build an object column
            "mpp": np.full(int(keep.sum()), res.mpp if res.mpp is not None else np.nan, np.float64),
            "tissue_fraction": np.round(frac[keep], 4),
        },
        columns=TILE_COLUMNS,
    )


@dataclass
class BadTile:
    """A tile that failed twice (before and after reopening the slide) and was replaced by white."""

    index: int
    x: int
    y: int
    reason: str


class TileReadingReport:
    """Thread-safe record of substituted tiles; raises `SlideReadError` past the limit."""

    def __init__(self, slide: str, limit: int) -> None:
        self.slide, self.limit = slide, limit
        self.bad: list[BadTile] = []
        self.n_retried_ok = 0
        self._lock = threading.Lock()

    def add_bad(self, tile: BadTile) -> None:
        with self._lock:
            self.bad.append(tile)
            if len(self.bad) > self.limit:
                raise SlideReadError(
                    f"{self.slide}: {len(self.bad)} tiles could not be read even after reopening the "
                    f"slide (limit {self.limit}); the file is probably damaged. First failure: "
                    f"{self.bad[0].reason}. Re-export the slide, or raise the limit (--max-bad-tiles)."
                )

    def add_retry_success(self) -> None:
        with self._lock:
            self.n_retried_ok += 1


def default_bad_tile_limit(n_tiles: int) -> int:
    """``max(5, ceil(1% of the tiles))``: a few bad tiles are noise, many mean a broken file."""
    return max(5, math.ceil(0.01 * n_tiles))


def iter_tiles(
    reader_factory: ReaderFactory,
    tiles: pd.DataFrame,
    res: Resolution,
    *,
    num_workers: int = 2,
    report: TileReadingReport | None = None,
) -> Iterator[tuple[int, Image.Image]]:
    """Yield ``(row_index, RGB tile)`` for every row of `tiles`, in order, read in threads.

    Each thread opens its own reader from `reader_factory`. A tile that fails is retried once
    after `reopen()`; a second failure gives a white tile recorded in `report` (which raises
    `SlideReadError` past its limit).
    """
    report = report or TileReadingReport("slide", default_bad_tile_limit(len(tiles)))
    local = threading.local()
    readers: list[SlideReader] = []
    readers_lock = threading.Lock()
    xs, ys = tiles["x"].to_numpy(), tiles["y"].to_numpy()
    read_wh = (res.read_size, res.read_size)

    def reader() -> SlideReader:
        r = getattr(local, "reader", None)
        if r is None:
            r = reader_factory()
            local.reader = r
            with readers_lock:
                readers.append(r)
        return r

    def read_one(i: int) -> tuple[int, Image.Image]:
        x, y = int(xs[i]), int(ys[i])
        r = reader()
        try:
            img = r.read_region(x, y, res.level, read_wh)
        except TileReadError as first:
            try:
                r.reopen()
                img = r.read_region(x, y, res.level, read_wh)
                report.add_retry_success()
            except TileReadError as second:
                report.add_bad(BadTile(i, x, y, f"{first}; after reopening: {second}"))
                return i, Image.new("RGB", (res.size, res.size), (255, 255, 255))
        if res.needs_resize:
            img = img.resize((res.size, res.size), Image.Resampling.BILINEAR)
        return i, img

    n = len(tiles)
    try:
        if num_workers <= 1:
            for i in range(n):
                yield read_one(i)
        else:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                # Bounded look-ahead keeps memory flat on slides with 100k tiles.
                window = 8 * num_workers
                futures = [pool.submit(read_one, i) for i in range(min(window, n))]
                for i in range(n):
                    out = futures[i].result()
                    futures[i] = None  # type: ignore[call-overload]
                    if i + window < n:
                        futures.append(pool.submit(read_one, i + window))
                    yield out
    finally:
        for r in readers:
            r.close()


def default_num_workers() -> int:
    """Reader threads: OpenSlide and Pillow release the GIL while decoding."""
    return max(1, min(8, os.cpu_count() or 1))


def resolution_record(res: Resolution) -> dict[str, object]:
    """JSON-ready form of a `Resolution`."""
    return asdict(res)


def tissue_mask_for(reader: SlideReader, spec: TileSpec) -> tuple[Image.Image, np.ndarray]:
    """Thumbnail and tissue mask used to filter the grid."""
    thumb = reader.thumbnail(spec.thumbnail_max_side)
    return thumb, detect_tissue(thumb, spec.tissue)

"""`tile_slide`: thumbnail → tissue mask → filtered grid → (optionally) tile images, all on disk.

Outputs in the chosen folder (every write atomic):
- ``tiles.csv`` with ``x,y,level,size,mpp,tissue_fraction`` (plus ``path`` when tiles are saved),
- ``thumbnail.png``, ``tissue_map.png`` (mask tinted green, kept tiles outlined),
- ``tiling.json`` (slide description, resolution choice, parameters, substituted tiles),
- with ``save_tiles``: ``tiles/tile_x{X}_y{Y}.png`` (level-0 coordinates in the name).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from histovl._io import atomic_open, atomic_path, atomic_write_json
from histovl.slides.figures import save_png, tissue_map_image
from histovl.slides.reader import SlideReader, open_slide
from histovl.slides.tiling import (
    BadTile,
    ReaderFactory,
    Resolution,
    TileReadingReport,
    TileSpec,
    default_bad_tile_limit,
    default_num_workers,
    iter_tiles,
    plan_tiles,
    resolve_resolution,
    tissue_mask_for,
)


@dataclass
class TilingResult:
    """What `tile_slide` produced.

    Attributes:
        tiles: the kept tiles (``TILE_COLUMNS``, plus ``path`` when tile images were saved).
        resolution: level and size choice for the requested resolution.
        thumbnail / mask: the thumbnail and its tissue mask.
        level0_size: (width, height) of level 0.
        bad_tiles: tiles replaced by white after a failed read and retry.
        out_dir: where the outputs are, or None for an in-memory tiling.
        seconds_reading: wall time spent reading (and saving) tile images.
    """

    tiles: pd.DataFrame
    resolution: Resolution
    thumbnail: Image.Image
    mask: np.ndarray
    level0_size: tuple[int, int]
    bad_tiles: list[BadTile] = field(default_factory=list)
    out_dir: Path | None = None
    seconds_reading: float = 0.0


def _save_tile(img: Image.Image, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG", compress_level=1)  # speed over size: tiles are intermediate


def plan_slide(reader: SlideReader, spec: TileSpec) -> TilingResult:
    """Thumbnail, mask, resolution and the tissue-filtered grid, without reading any tile."""
    res = resolve_resolution(reader, spec)  # first: a missing µm/px fails before any pixel is read
    thumb, mask = tissue_mask_for(reader, spec)
    tiles = plan_tiles(reader, res, mask, spec.tissue_threshold)
    return TilingResult(tiles, res, thumb, mask, reader.dimensions)


def tile_slide(
    slide: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: TileSpec | None = None,
    *,
    slide_mpp: float | None = None,
    save_tiles: bool = False,
    num_workers: int | None = None,
    reader_factory: ReaderFactory | None = None,
) -> TilingResult:
    """Tile one slide into `out_dir` (see the module docstring for the files).

    Args:
        slide: slide file, plain image or folder of tiles (see `open_slide`).
        out_dir: output folder (created).
        spec: tile size, resolution and tissue settings.
        slide_mpp: µm per level-0 pixel when the file records none (or to override it).
        save_tiles: also read and write every kept tile as PNG (in threads, with one retry after
            reopening the slide per failing tile; failures past the limit raise `SlideReadError`).
        num_workers: reader threads (default: the number of cores, at most 8).
        reader_factory: how to open the slide (tests inject faulty readers here).

    Example:
        >>> res = tile_slide("CMU-1-Small-Region.svs", "out/cmu", TileSpec(size=224, mpp=0.5))  # doctest: +SKIP
        >>> len(res.tiles)  # doctest: +SKIP
        121
    """
    spec = spec or TileSpec()
    factory = reader_factory or partial(open_slide, slide, mpp=slide_mpp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with factory() as reader:
        description = reader.describe()
        result = plan_slide(reader, spec)
    result.out_dir = out
    tiles = result.tiles
    if save_tiles and len(tiles):
        tile_dir = out / "tiles"
        tile_dir.mkdir(exist_ok=True)
        names = [f"tile_x{x}_y{y}.png" for x, y in zip(tiles["x"], tiles["y"], strict=True)]
        limit = spec.max_bad_tiles if spec.max_bad_tiles is not None else default_bad_tile_limit(len(tiles))
        report = TileReadingReport(str(slide), limit)
        start = time.perf_counter()
        for i, img in iter_tiles(factory, tiles, result.resolution, num_workers=num_workers or default_num_workers(), report=report):
            _save_tile(img, tile_dir / names[i])
        result.seconds_reading = time.perf_counter() - start
        result.bad_tiles = sorted(report.bad, key=lambda b: b.index)
        tiles = tiles.assign(path=[f"tiles/{n}" for n in names])
        tiles = tiles.assign(substituted=False)
        if result.bad_tiles:
            tiles.loc[tiles.index[[b.index for b in result.bad_tiles]], "substituted"] = True
        result.tiles = tiles
    write_tiling_outputs(result, description, spec)
    return result


def write_tiling_outputs(result: TilingResult, description: dict[str, Any], spec: TileSpec) -> None:
    """tiles.csv, thumbnail.png, tissue_map.png and tiling.json into `result.out_dir`."""
    out = result.out_dir
    if out is None:
        raise ValueError("this tiling has no output folder")
    with atomic_open(out / "tiles.csv", "w", encoding="utf-8", newline="") as fh:
        result.tiles.to_csv(fh, index=False)
    save_png(result.thumbnail, out / "thumbnail.png")
    save_png(
        tissue_map_image(result.thumbnail, result.mask, result.tiles, result.resolution.extent0, result.level0_size),
        out / "tissue_map.png",
    )
    spec_record = asdict(spec)
    atomic_write_json(
        out / "tiling.json",
        {
            "slide": description,
            "spec": spec_record,
            "resolution": asdict(result.resolution),
            "n_tiles": len(result.tiles),
            "tissue_fraction_of_thumbnail": float(result.mask.mean()),
            "substituted_tiles": [asdict(b) for b in result.bad_tiles],
            "seconds_reading": result.seconds_reading,
        },
    )


def load_tiling(out_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back ``tiles.csv`` and ``tiling.json`` written by `tile_slide`."""
    import json

    out = Path(out_dir)
    tiles = pd.read_csv(out / "tiles.csv")
    meta = json.loads((out / "tiling.json").read_text(encoding="utf-8"))
    return tiles, meta

"""`tile_slide`: thumbnail → tissue mask → filtered grid → (optionally) tile images, all on disk.

Outputs in the chosen folder (every write atomic):
- ``tiles.csv`` with ``x,y,level,size,mpp,tissue_fraction`` (plus ``path`` when tiles are saved),
- ``thumbnail.png``, ``tissue_map.png`` (mask tinted green, kept tiles outlined),
- ``tissue_mask.png`` (the tissue mask, so a finished tiling can be returned without the slide),
- ``tiling.json`` (slide description, resolution choice, parameters, substituted tiles, and the
  ``source`` record of what produced the tiling), written last: it is the commit point,
- with ``save_tiles``: ``tiles/tile_x{X}_y{Y}.png`` (level-0 coordinates in the name), and
  ``tiling.partial.json`` while they are being written (see `histovl.slides.resume`).
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
from histovl.slides.resume import (
    MASK_FILE,
    PARTIAL_FILE,
    RECORD_FILE,
    read_record,
    remove_stale_temps,
    remove_tile_files,
    reusable_tile_files,
    tiling_source,
    write_partial,
)
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
        seconds_reading: wall time spent reading (and saving) tile images in this call.
        n_tiles_read: tiles read from the slide in this call (fewer than ``len(tiles)`` when an
            interrupted tiling was resumed).
        reused: True when a finished tiling in `out_dir` was returned as recorded.
    """

    tiles: pd.DataFrame
    resolution: Resolution
    thumbnail: Image.Image
    mask: np.ndarray
    level0_size: tuple[int, int]
    bad_tiles: list[BadTile] = field(default_factory=list)
    out_dir: Path | None = None
    seconds_reading: float = 0.0
    n_tiles_read: int = 0
    reused: bool = False


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
    force: bool = False,
) -> TilingResult:
    """Tile one slide into `out_dir` (see the module docstring for the files).

    A folder that already holds a finished tiling of the same slide (same path, size, mtime and
    fingerprint) with the same parameters is returned as recorded, without opening the slide; an
    interrupted tiling, or one missing some tile files, reads only the missing tiles. Anything
    else (a changed slide, other parameters) tiles from scratch. See `histovl.slides.resume`.

    Args:
        slide: slide file, plain image or folder of tiles (see `open_slide`).
        out_dir: output folder (created).
        spec: tile size, resolution and tissue settings.
        slide_mpp: µm per level-0 pixel when the file records none (or to override it).
        save_tiles: also read and write every kept tile as PNG (in threads, with one retry after
            reopening the slide per failing tile; failures past the limit raise `SlideReadError`).
        num_workers: reader threads (default: the number of cores, at most 8).
        reader_factory: how to open the slide (tests inject faulty readers here). The tiling
            record still identifies the slide by `slide`; when that is not a path on disk,
            nothing is reused.
        force: tile from scratch even when the folder holds a matching tiling.

    Example:
        >>> res = tile_slide("CMU-1-Small-Region.svs", "out/cmu", TileSpec(size=224, mpp=0.5))  # doctest: +SKIP
        >>> len(res.tiles)  # doctest: +SKIP
        121
    """
    spec = spec or TileSpec()
    out = Path(out_dir)
    source = tiling_source(slide, spec, slide_mpp=slide_mpp, save_tiles=save_tiles)
    if source is not None and not force:
        recorded = load_recorded_tiling(out, source)
        if recorded is not None:
            return recorded
    factory = reader_factory or partial(open_slide, slide, mpp=slide_mpp)
    redo = _open_for_tiling(out, source, save_tiles=save_tiles, force=force)
    with factory() as reader:
        description = reader.describe()
        result = plan_slide(reader, spec)
    result.out_dir = out
    if save_tiles and len(result.tiles):
        _read_missing_tiles(result, out, factory, str(slide), spec, redo, source, num_workers)
    write_tiling_outputs(result, description, spec, source)
    if save_tiles:
        (out / PARTIAL_FILE).unlink(missing_ok=True)
    return result


def _open_for_tiling(out: Path, source: dict[str, Any] | None, *, save_tiles: bool, force: bool) -> set[tuple[int, int]]:
    """Make `out` an unfinished tiling; returns the tiles on disk to read again (white substitutes).

    With `save_tiles`, tile files a resumable partial record vouches for are kept, any others
    removed, and the partial record is (re)written before any tile file is.
    """
    out.mkdir(parents=True, exist_ok=True)
    redo: set[tuple[int, int]] = set()
    remove_stale_temps(out)
    if save_tiles:
        known = reusable_tile_files(out, source, force=force)
        if known is None:  # tile files of unknown origin: never mix them into this tiling
            (out / PARTIAL_FILE).unlink(missing_ok=True)
            remove_tile_files(out / "tiles")
        else:
            redo = known
        if source is not None:
            write_partial(out, source, redo)  # before any tile file is written
    (out / RECORD_FILE).unlink(missing_ok=True)  # no longer a finished tiling until the end
    return redo


def _read_missing_tiles(
    result: TilingResult,
    out: Path,
    factory: ReaderFactory,
    slide_name: str,
    spec: TileSpec,
    redo: set[tuple[int, int]],
    source: dict[str, Any] | None,
    num_workers: int | None,
) -> None:
    """Read and save the kept tiles whose files are missing (or listed in `redo`), in place.

    Tile files are written atomically, so one that exists is complete. A white substitute (a
    tile that failed twice) is written only after the partial record lists it, so a resumed run
    reads it again and reports it exactly as an uninterrupted run would.
    """
    tile_dir = out / "tiles"
    tile_dir.mkdir(exist_ok=True)
    tiles = result.tiles
    xy = list(zip(tiles["x"].tolist(), tiles["y"].tolist(), strict=True))
    names = [f"tile_x{x}_y{y}.png" for x, y in xy]
    todo = [i for i, name in enumerate(names) if xy[i] in redo or not (tile_dir / name).is_file()]
    limit = spec.max_bad_tiles if spec.max_bad_tiles is not None else default_bad_tile_limit(len(tiles))
    report = TileReadingReport(slide_name, limit)
    substitutes: list[tuple[int, Image.Image]] = []
    start = time.perf_counter()
    if todo:
        workers = num_workers or default_num_workers()
        for j, img in iter_tiles(factory, tiles.iloc[todo], result.resolution, num_workers=workers, report=report):
            if any(b.index == j for b in report.bad):  # read_one records a failure before returning
                substitutes.append((todo[j], img))
            else:
                _save_tile(img, tile_dir / names[todo[j]])
    for b in report.bad:
        b.index = todo[b.index]
    if substitutes:
        if source is not None:
            write_partial(out, source, redo | {xy[i] for i, _ in substitutes})
        for i, img in substitutes:
            _save_tile(img, tile_dir / names[i])
    result.seconds_reading = time.perf_counter() - start
    result.n_tiles_read = len(todo)
    result.bad_tiles = sorted(report.bad, key=lambda b: b.index)
    tiles = tiles.assign(path=[f"tiles/{n}" for n in names], substituted=False)
    if result.bad_tiles:
        tiles.loc[tiles.index[[b.index for b in result.bad_tiles]], "substituted"] = True
    result.tiles = tiles


def load_recorded_tiling(out_dir: str | os.PathLike[str], source: dict[str, Any]) -> TilingResult | None:
    """The finished tiling in `out_dir` when its record equals `source` and every output file
    (tiles.csv, figures, mask, each listed tile) is present; else None. Opens no slide."""
    out = Path(out_dir)
    meta = read_record(out / RECORD_FILE)
    if meta is None or meta.get("source") != source:
        return None
    needed = [out / "tiles.csv", out / "thumbnail.png", out / "tissue_map.png", out / MASK_FILE]
    if not all(p.is_file() for p in needed):
        return None
    try:
        tiles = pd.read_csv(out / "tiles.csv", float_precision="round_trip")
    except (OSError, ValueError):
        return None
    if len(tiles) != meta.get("n_tiles"):
        return None
    tiles["tissue_fraction"] = tiles["tissue_fraction"].astype(np.float32)  # as `plan_tiles` makes it
    tiles["mpp"] = tiles["mpp"].astype(np.float64)  # an empty column reads back as object
    if source.get("save_tiles") and len(tiles):
        if "path" not in tiles.columns or not all((out / p).is_file() for p in tiles["path"]):
            return None
    try:
        with Image.open(out / "thumbnail.png") as im:
            thumbnail = im.convert("RGB")
        with Image.open(out / MASK_FILE) as im:
            mask = np.asarray(im.convert("L")) > 127
    except (OSError, ValueError, SyntaxError):
        return None
    if mask.shape != (thumbnail.height, thumbnail.width):
        return None
    w0, h0 = meta["slide"]["level_dimensions"][0]
    return TilingResult(
        tiles,
        Resolution(**meta["resolution"]),
        thumbnail,
        mask,
        (int(w0), int(h0)),
        bad_tiles=[BadTile(**b) for b in meta.get("substituted_tiles", [])],
        out_dir=out,
        reused=True,
    )


def write_tiling_outputs(
    result: TilingResult, description: dict[str, Any], spec: TileSpec, source: dict[str, Any] | None = None
) -> None:
    """tiles.csv, thumbnail.png, tissue_map.png, tissue_mask.png, then tiling.json (the commit
    point, holding `source`) into `result.out_dir`."""
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
    save_png(Image.fromarray(result.mask.astype(np.uint8) * 255, mode="L"), out / MASK_FILE)
    spec_record = asdict(spec)
    atomic_write_json(
        out / RECORD_FILE,
        {
            "slide": description,
            "spec": spec_record,
            "resolution": asdict(result.resolution),
            "n_tiles": len(result.tiles),
            "tissue_fraction_of_thumbnail": float(result.mask.mean()),
            "substituted_tiles": [asdict(b) for b in result.bad_tiles],
            "seconds_reading": result.seconds_reading,
            "n_tiles_read": result.n_tiles_read,
            "source": source,
        },
    )


def load_tiling(out_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back ``tiles.csv`` and ``tiling.json`` written by `tile_slide`."""
    import json

    out = Path(out_dir)
    tiles = pd.read_csv(out / "tiles.csv")
    meta = json.loads((out / "tiling.json").read_text(encoding="utf-8"))
    return tiles, meta

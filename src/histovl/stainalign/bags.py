"""Pairs CSV reading and slide → bag of tile embeddings.

A "slide" in a pairs CSV is either a slide file (tiled with tissue detection into a work folder,
then encoded) or a folder of tile images (every image is a tile, no tissue filtering). Tile images
are encoded by `histovl.embed.encode_images`, so they share the content-keyed embedding cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from histovl.data.paths import UnsafePathError, is_inside
from histovl.errors import HistovlError
from histovl.options import OnError
from histovl.slides.pipeline import tile_slide
from histovl.slides.reader import (
    TileFolderReader,
)
from histovl.slides.tiling import TileSpec

if TYPE_CHECKING:
    from histovl.embed import EmbeddingCache
    from histovl.models.encoder import Encoder

REQUIRED_COLUMNS = ("he_slide", "ihc_slide", "label", "marker")


def read_pairs(csv_path: str | os.PathLike[str], *, allow_absolute_paths: bool = False) -> pd.DataFrame:
    """Read and check a pairs CSV; slide paths come back absolute (relative to the CSV's folder).

    Columns: ``he_slide``, ``ihc_slide``, ``label``, ``marker`` and optional ``group`` (defaults
    to the H&E slide path, i.e. every pair is its own group). ``label`` may be empty (``""``): a
    pair without a recorded status, used for alignment only (docs/stainalign.md).

    Raises:
        ValueError: missing columns, empty table, or more than one marker.
        UnsafePathError: a path leaves the CSV's folder (unless `allow_absolute_paths`).
        FileNotFoundError: slides that do not exist (all listed).
    """
    path = Path(csv_path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; a pairs CSV needs {list(REQUIRED_COLUMNS)} and optional 'group'")
    if frame.empty:
        raise ValueError(f"{path} has no rows")
    markers = sorted(set(frame["marker"]))
    if len(markers) > 1:
        raise ValueError(f"{path} mixes markers {markers}; train one model per marker (split the CSV)")
    root = os.path.realpath(path.parent)
    absent: list[str] = []
    for column in ("he_slide", "ihc_slide"):
        resolved = []
        for value in frame[column]:
            full = os.path.normpath(value if os.path.isabs(value) else os.path.join(root, value))
            if not allow_absolute_paths and not is_inside(os.path.realpath(full), root):
                raise UnsafePathError(
                    f"{column} {value!r} in {path} points outside the CSV's folder {root}; keep slides below "
                    "it or pass --allow-absolute-paths if you trust this file"
                )
            if not os.path.exists(full):
                absent.append(value)
            resolved.append(full)
        frame[column] = resolved
    if absent:
        raise FileNotFoundError(f"{len(absent)} slide(s) listed in {path} do not exist (first: {absent[:5]})")
    if "group" not in frame.columns:
        frame["group"] = frame["he_slide"]
    else:
        frame["group"] = frame["group"].where(frame["group"] != "", frame["he_slide"])
    return frame


@dataclass
class SlideBag:
    """Tile embeddings of one slide plus what a heatmap needs.

    Attributes:
        embeddings: float32 [n_tiles, D], L2-normalised.
        tiles: ``x``, ``y`` (level-0 or mosaic pixels) per tile, in embedding order.
        extent0: side of a tile in those pixels.
        level0_size: (width, height) of the slide or mosaic.
        thumbnail: RGB thumbnail for heatmaps.
        skipped: ``{"path", "reason"}`` per tile left out under ``on_error="skip"`` (its row is
            not in `embeddings` nor `tiles`).
    """

    slide: Path
    embeddings: np.ndarray
    tiles: pd.DataFrame
    extent0: int
    level0_size: tuple[int, int]
    thumbnail: Image.Image
    skipped: list[dict[str, str]] = field(default_factory=list)


def _work_folder(work_dir: Path, slide: Path) -> Path:
    digest = hashlib.sha256(os.fspath(slide.resolve()).encode()).hexdigest()[:12]
    return work_dir / f"{slide.stem}-{digest}"


@dataclass
class SlideTiles:
    """A slide's tile image files and layout, before encoding."""

    slide: Path
    tile_paths: list[Path]
    tiles: pd.DataFrame
    extent0: int
    level0_size: tuple[int, int]
    thumbnail: Image.Image


def slide_tiles(
    slide: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    spec: TileSpec | None = None,
    *,
    slide_mpp: float | None = None,
) -> SlideTiles:
    """Tile files of one slide: a folder's images as they are, or a slide file tiled into `work_dir`.

    An unreadable tile in a folder stays white in the thumbnail; it is reported (or, under
    ``on_error="skip"``, left out and recorded) when `embed_bags` encodes the tiles.
    """
    path = Path(slide)
    if path.is_dir():
        mosaic = TileFolderReader(path, mpp=slide_mpp, tolerant=True)
        boxes = [mosaic.tile_box(i) for i in range(len(mosaic.tile_paths))]
        tiles = pd.DataFrame({"x": [b[0] for b in boxes], "y": [b[1] for b in boxes]})
        return SlideTiles(path, list(mosaic.tile_paths), tiles, mosaic.tile_size[0], mosaic.dimensions, mosaic.thumbnail(1024))
    folder = _work_folder(Path(work_dir), path)
    result = tile_slide(path, folder, spec, slide_mpp=slide_mpp, save_tiles=True)
    if len(result.tiles) == 0:
        raise ValueError(f"no tissue tiles found in {path}; lower --tissue-threshold or check the slide")
    return SlideTiles(
        path, [folder / p for p in result.tiles["path"]], result.tiles[["x", "y"]].reset_index(drop=True),
        result.resolution.extent0, result.level0_size, result.thumbnail,
    )


def embed_bags(
    encoder: Encoder,
    slides: list[SlideTiles],
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    on_error: OnError = "raise",
) -> list[SlideBag]:
    """Encode the tiles of all `slides` in one engine call (full batches, one cache namespace).

    ``on_error="raise"`` stops at the first unreadable tile with `ImageReadError` naming it;
    ``"skip"`` leaves it out of its slide's bag and lists it in the bag's `skipped` (a slide
    whose tiles all fail gets an empty bag: `embeddings` has 0 rows).
    """
    from histovl.embed import encode_images

    paths = [p for s in slides for p in s.tile_paths]
    result = encode_images(encoder, paths, cache=cache, batch_size=batch_size, on_error=on_error, progress=False)
    reasons = {f.path: f.reason for f in result.failures}
    rows = np.cumsum(result.ok) - 1  # row of each readable tile in result.embeddings
    dim = result.embeddings.shape[1] if result.embeddings.ndim == 2 else 0
    bags, start = [], 0
    for s in slides:
        stop = start + len(s.tile_paths)
        ok = result.ok[start:stop]
        emb = result.embeddings[rows[start:stop][ok]] if ok.any() else np.zeros((0, dim), np.float32)
        skipped = [{"path": os.fspath(p), "reason": reasons.get(os.fspath(p), "unreadable")}
                   for p, good in zip(s.tile_paths, ok, strict=True) if not good]
        tiles = s.tiles[ok].reset_index(drop=True) if not ok.all() else s.tiles
        bags.append(SlideBag(s.slide, emb, tiles, s.extent0, s.level0_size, s.thumbnail, skipped))
        start = stop
    return bags


def slide_read_failure(err: Exception) -> bool:
    """True for errors that mean "this slide cannot be read" (dropped under ``on_error="skip"``)."""
    return isinstance(err, (HistovlError, OSError)) and not isinstance(err, ValueError)


def build_bag(
    encoder: Encoder,
    slide: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    spec: TileSpec | None = None,
    *,
    cache: EmbeddingCache | None = None,
    slide_mpp: float | None = None,
    batch_size: int = 64,
) -> SlideBag:
    """Embed the tiles of one slide (file: tiled first; folder: its images are the tiles)."""
    tiles = slide_tiles(slide, work_dir, spec, slide_mpp=slide_mpp)
    return embed_bags(encoder, [tiles], cache=cache, batch_size=batch_size)[0]

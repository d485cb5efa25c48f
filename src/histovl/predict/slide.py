"""`predict` on a whole slide: tile (reusing a finished tiling), embed through the cache, score
every tile, pool to a slide-level result, and map the tiles (heatmap PNG and QuPath GeoJSON).

The tiling lives in ``<out>/tiling`` (or the folder given as ``tiling``): a re-run with the same
slide and tile settings returns the recorded tiling without reading the slide
(`histovl.slides.resume`), and the embedding cache, keyed by tile content, encodes nothing again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.embed import cache_for
from histovl.errors import HistovlError
from histovl.models.encoder import Encoder
from histovl.options import RunOptions
from histovl.predict.images import prediction_table
from histovl.predict.scoring import Pooling, Scorer
from histovl.slides import SlideEmbedding, SlideOpenError, TileSpec, open_slide, resolve_resolution


@dataclass
class SlidePredictions:
    """Per-tile scores of one slide and its pooled slide-level result."""

    embedding: SlideEmbedding
    probs: np.ndarray
    frame: pd.DataFrame
    slide: dict[str, Any]


def check_slide(slide: str | os.PathLike[str], spec: TileSpec, slide_mpp: float | None) -> None:
    """Open the slide and resolve the tile resolution before anything is written.

    Raises:
        SlideOpenError: no backend opens the file (one line naming it).
        ValueError: the requested resolution needs a µm/px the slide does not record.
    """
    try:
        with open_slide(slide, mpp=slide_mpp) as reader:
            resolve_resolution(reader, spec)
    except (SlideOpenError, ValueError, FileNotFoundError):
        raise
    except (OSError, RuntimeError) as err:  # a backend's own error on a damaged file
        raise SlideOpenError(f"cannot open slide {slide}: {err}") from err


def predict_slide(
    encoder: Encoder,
    scorer: Scorer,
    slide: str | os.PathLike[str],
    tiling_dir: Path,
    spec: TileSpec,
    *,
    slide_mpp: float | None,
    force: bool,
    pooling: Pooling,
    top_j: int,
    out: Path | None,
    opts: RunOptions,
) -> SlidePredictions:
    """Tile and embed `slide` into `tiling_dir`, score every tile, pool to the slide."""
    from histovl.slides import embed_slide

    se = embed_slide(
        encoder, slide, tiling_dir, spec, cache=cache_for(opts), slide_mpp=slide_mpp,
        batch_size=opts.batch_size, num_workers=opts.workers, progress=opts.progress, force=force,
    )
    if len(se.tiles) == 0:
        raise HistovlError(f"no tile of {slide} holds enough tissue (tissue threshold {spec.tissue_threshold}); "
                           "lower --tissue-threshold or check the tissue map in the tiling folder")
    probs = scorer.probabilities(se.embeddings)
    extent = se.tiling.resolution.extent0
    tiles = se.tiles
    frame = prediction_table(
        [tiling_dir / p for p in tiles["path"]], None, probs, list(scorer.classes), root=out,
        x=tiles["x"].to_numpy(), y=tiles["y"].to_numpy(), width=extent, height=extent,
        tissue_fraction=tiles["tissue_fraction"].to_numpy(),
    )
    return SlidePredictions(se, probs, frame, slide_result(se, scorer, probs, slide, pooling, top_j))


def slide_result(se: SlideEmbedding, scorer: Scorer, probs: np.ndarray, slide: Any, pooling: Pooling, top_j: int) -> dict[str, Any]:
    """slide.json: the pooled class scores, the pooling used, and the predicted class."""
    classes = list(scorer.classes)
    pooled = scorer.pool(se.embeddings, probs, pooling, top_j)
    slide_probs = np.asarray(pooled.pop("probabilities"), dtype=np.float64)
    scores = np.asarray(pooled.pop("scores"), dtype=np.float64)
    res = se.tiling.resolution
    counts = np.bincount(probs.argmax(axis=1), minlength=len(classes))
    return {
        "slide": str(Path(slide).resolve()),
        "prediction": classes[int(np.argmax(slide_probs))],
        **pooled,
        "scores": dict(zip(classes, map(float, scores), strict=True)),
        "probabilities": dict(zip(classes, map(float, slide_probs), strict=True)),
        "n_tiles": len(probs),
        "tile_class_counts": dict(zip(classes, map(int, counts), strict=True)),
        "tile_size": res.size,
        "tile_extent_level0": res.extent0,
        "tile_mpp": res.mpp,
        "read_level": res.level,
        "level0_size": list(se.tiling.level0_size),
        "tiling_reused": se.tiling.reused,
        "n_tiles_encoded": se.n_encoded,
        "n_tiles_from_cache": se.n_cached,
    }

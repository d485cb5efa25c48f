"""Slide tile embeddings (through the shared embedding engine and cache) and slide zero-shot.

Tiles are written as PNG first and then encoded by `histovl.embed.encode_images`, so slide tiles
share the content-keyed, resumable embedding cache with every other image: re-embedding a slide
with the same model into the same folder costs one hash per tile (the finished tiling is reused,
see `histovl.slides.resume`).

Slide-level zero-shot follows MI-Zero (Lu et al., 2023): each tile gets a cosine score per class;
a class's slide score is the mean of its `top_j` highest tile scores; the slide prediction is the
arg-max (softmax of logit_scale × pooled scores gives probabilities).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from histovl._io import atomic_open, atomic_path, atomic_write_json
from histovl.slides.figures import class_map_image, save_png
from histovl.slides.pipeline import TilingResult, tile_slide
from histovl.slides.tiling import TileSpec

if TYPE_CHECKING:
    from histovl.embed import EmbeddingCache
    from histovl.models.encoder import Encoder
    from histovl.zeroshot import TextClassifier


@dataclass
class SlideEmbedding:
    """Tile embeddings of one slide, row i belonging to row i of `tiles`."""

    tiles: pd.DataFrame
    embeddings: np.ndarray
    tiling: TilingResult
    n_cached: int = 0
    n_encoded: int = 0
    zeroshot: SlideZeroShot | None = None
    """Slide zero-shot, when `histovl.slides.slides_embed` was given a prompt set."""


def embed_slide(
    encoder: Encoder,
    slide: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: TileSpec | None = None,
    *,
    cache: EmbeddingCache | None = None,
    slide_mpp: float | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> SlideEmbedding:
    """Tile `slide` into `out_dir` (tile images saved) and encode every kept tile.

    Writes ``embeddings.npy`` (float32 [n_tiles, D], L2-normalised, rows in ``tiles.csv``
    order) next to the tiling outputs. A finished tiling of the same slide with the same
    parameters already in `out_dir` is reused without reading the slide (`tile_slide`); with a
    warm cache a re-run then only hashes the tile files. `force` re-tiles from scratch (the
    embedding cache is still used: it is keyed by tile content).

    Example:
        >>> se = embed_slide(load_model("histovl-lite"), "slide.svs", "out/slide", TileSpec(mpp=0.5))  # doctest: +SKIP
        >>> se.embeddings.shape  # doctest: +SKIP
        (121, 512)
    """
    from histovl.embed import encode_images

    out = Path(out_dir)
    tiling = tile_slide(slide, out, spec, slide_mpp=slide_mpp, save_tiles=True, num_workers=num_workers, force=force)
    tiles = tiling.tiles
    dim = int(encoder.card.embed_dim or 0)
    if len(tiles) == 0:
        emb = np.zeros((0, dim), np.float32)
        n_cached = n_encoded = 0
    else:
        paths = [out / p for p in tiles["path"]]
        result = encode_images(
            encoder, paths, cache=cache, batch_size=batch_size, num_workers=0 if len(paths) <= batch_size else None,
            on_error="raise", progress=progress,
        )
        emb, n_cached, n_encoded = result.embeddings, result.n_cached, result.n_encoded
    with atomic_path(out / "embeddings.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
    return SlideEmbedding(tiles, emb, tiling, n_cached, n_encoded)


def top_j_pool(tile_scores: np.ndarray, top_j: int) -> np.ndarray:
    """MI-Zero pooling: per class, the mean of the `top_j` highest tile scores.

    Args:
        tile_scores: [n_tiles, n_classes] similarity scores.
        top_j: tiles pooled per class (clipped to the number of tiles).
    """
    s = np.asarray(tile_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"top_j_pool needs a non-empty [n_tiles, n_classes] array, got shape {s.shape}")
    if top_j < 1:
        raise ValueError(f"top_j must be >= 1, got {top_j}")
    j = min(top_j, s.shape[0])
    top = -np.partition(-s, j - 1, axis=0)[:j]
    return top.mean(axis=0)


@dataclass
class SlideZeroShot:
    """Slide-level zero-shot result."""

    class_names: tuple[str, ...]
    tile_scores: np.ndarray
    tile_predictions: np.ndarray
    slide_scores: dict[int, np.ndarray] = field(default_factory=dict)
    slide_probabilities: dict[int, np.ndarray] = field(default_factory=dict)

    def prediction(self, top_j: int) -> str:
        return self.class_names[int(np.argmax(self.slide_scores[top_j]))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "n_tiles": int(self.tile_scores.shape[0]),
            "tile_class_counts": {
                c: int((self.tile_predictions == k).sum()) for k, c in enumerate(self.class_names)
            },
            "top_j": {
                str(j): {
                    "prediction": self.prediction(j),
                    "scores": dict(zip(self.class_names, map(float, self.slide_scores[j]), strict=True)),
                    "probabilities": dict(zip(self.class_names, map(float, self.slide_probabilities[j]), strict=True)),
                }
                for j in self.slide_scores
            },
        }


def slide_zeroshot(classifier: TextClassifier, tile_embeddings: np.ndarray, top_js: tuple[int, ...] = (1, 5, 10, 50)) -> SlideZeroShot:
    """Tile scores from `classifier` and MI-Zero top-j pooled slide scores for each j."""
    scores = classifier.cosine(tile_embeddings)
    result = SlideZeroShot(tuple(classifier.class_names), scores, scores.argmax(axis=1))
    for j in top_js:
        pooled = top_j_pool(scores, j)
        logits = classifier.logit_scale * pooled
        probs = np.exp(logits - logits.max())
        result.slide_scores[j] = pooled
        result.slide_probabilities[j] = probs / probs.sum()
    return result


def write_slide_zeroshot(se: SlideEmbedding, zs: SlideZeroShot, out_dir: str | os.PathLike[str]) -> None:
    """``zeroshot.json``, ``tile_predictions.csv`` and ``zeroshot_map.png`` (tiles by class)."""
    out = Path(out_dir)
    atomic_write_json(out / "zeroshot.json", zs.to_dict())
    frame = se.tiles[["x", "y"]].copy()
    frame["prediction"] = [zs.class_names[k] for k in zs.tile_predictions]
    for k, c in enumerate(zs.class_names):
        frame[f"score:{c}"] = zs.tile_scores[:, k]
    with atomic_open(out / "tile_predictions.csv", "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
    t = se.tiling
    save_png(
        class_map_image(t.thumbnail, se.tiles, zs.tile_predictions, zs.class_names, t.resolution.extent0, t.level0_size),
        out / "zeroshot_map.png",
    )

"""Slides: what the viewer shows of each slide found under the roots.

Three sources, read at start:
- a **tiling folder** (``tiling.json``; written by `histovl slides tile` / `slides embed`, or the
  ``tiling/`` of a `histovl predict` slide run): the slide file it records, its tiles (the tissue
  map), its ``embeddings.npy`` (nearest tiles), and the tile scores of
  ``../predictions.csv`` (a predict run, docs/predict.md) or ``tile_predictions.csv``
  (`slides embed --prompts`) as the per-class heatmap;
- a **slide file** under a root that no tiling names (viewer only, no overlay).
Coordinates are level-0 pixels throughout, as in those files.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.serve.deepzoom import DeepZoomSource, SlideUnavailableError
from histovl.serve.files import FileRegistry, path_id

#: Suffixes of whole-slide files listed as slides (a ``.tif`` only when OpenSlide reads it).
SLIDE_SUFFIXES = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".svslide", ".vms", ".tif", ".tiff"})
SCORE_PREFIX = "score:"
NEIGHBOURS = 8


@dataclass
class SlideEntry:
    """One slide with its tiles and tile scores (None/empty where there are none)."""

    id: str
    name: str
    slide_path: Path | None = None
    slide_file: str | None = None
    """The slide's allow-list id (None: not allowed here, e.g. outside the roots with roots_only)."""
    level0_size: tuple[int, int] | None = None
    tiles: pd.DataFrame | None = None
    """x, y, width, height, tissue_fraction[, prediction, margin, score:<class>...]."""
    classes: list[str] = field(default_factory=list)
    embeddings: Path | None = None
    tile_images: list[str | None] = field(default_factory=list)
    """Allow-list id of each tile's own PNG (``tiles.csv``'s ``path``), when the tiling kept them."""
    thumbnail: Path | None = None
    source: str = "slide file"
    run_id: str | None = None
    error: str | None = None
    _dz: DeepZoomSource | None = None
    _vectors: np.ndarray | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "source": self.source, "classes": self.classes,
            "n_tiles": 0 if self.tiles is None else len(self.tiles),
            "size": list(self.level0_size) if self.level0_size else None, "error": self.error,
            "run_id": self.run_id,
        }

    def deepzoom(self, jpeg_quality: int = 80) -> DeepZoomSource:
        """The slide's pyramid, opened on first use (raises `SlideUnavailableError`)."""
        if self.error is not None:
            raise SlideUnavailableError(self.error)
        with self._lock:
            if self._dz is None:
                path = self.slide_path if self.slide_file is not None else None
                self._dz = DeepZoomSource(path, thumbnail=self.thumbnail, level0_size=self.level0_size,
                                          jpeg_quality=jpeg_quality)
                if self.level0_size is None:
                    self.level0_size = self._dz.level0_size
            return self._dz

    def overlays(self) -> list[dict[str, str]]:
        """The overlays this slide has: the tissue map, the predicted class, each class score."""
        if self.tiles is None or self.tiles.empty:
            return []
        found = [{"key": "tissue", "label": "tissue map (kept tiles)"}]
        if "prediction" in self.tiles.columns:
            found.append({"key": "prediction", "label": "predicted class"})
        found += [{"key": f"score:{c}", "label": f"score: {c}"} for c in self.classes]
        return found

    def tile_at(self, x: float, y: float) -> int | None:
        """Row of the tile covering level-0 point (x, y), or None."""
        if self.tiles is None:
            return None
        t = self.tiles
        hit = (t["x"] <= x) & (x < t["x"] + t["width"]) & (t["y"] <= y) & (y < t["y"] + t["height"])
        rows = np.flatnonzero(hit.to_numpy())
        return int(rows[0]) if rows.size else None

    def tile_info(self, row: int) -> dict[str, Any]:
        """A tile's box, prediction and class scores."""
        assert self.tiles is not None
        rec = self.tiles.iloc[row]
        scores = {c: float(rec[SCORE_PREFIX + c]) for c in self.classes if SCORE_PREFIX + c in rec.index}
        return {
            "index": row, "x": int(rec["x"]), "y": int(rec["y"]), "width": int(rec["width"]),
            "height": int(rec["height"]), "tissue_fraction": _float(rec.get("tissue_fraction")),
            "prediction": None if pd.isna(rec.get("prediction")) else str(rec.get("prediction")),
            "margin": _float(rec.get("margin")), "scores": scores,
        }

    def neighbours(self, row: int, k: int = NEIGHBOURS) -> list[dict[str, Any]]:
        """The `k` tiles of this slide whose embeddings are closest (cosine) to tile `row`'s."""
        vectors = self._load_vectors()
        if vectors is None or not 0 <= row < len(vectors):
            return []
        sims = vectors @ vectors[row]
        sims[row] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        return [{**self.tile_info(int(i)), "similarity": float(sims[i])} for i in order if np.isfinite(sims[i])]

    def _load_vectors(self) -> np.ndarray | None:
        with self._lock:
            if self._vectors is None and self.embeddings is not None and self.tiles is not None:
                vectors = np.load(self.embeddings, mmap_mode="r")
                if len(vectors) == len(self.tiles):
                    self._vectors = np.asarray(vectors, dtype=np.float32)
            return self._vectors


def load_tiling_slide(tiling: Path, name: str, registry: FileRegistry, run_ids: dict[Path, str]) -> SlideEntry:
    """A slide entry from a tiling folder (see the module docstring); errors become `error`."""
    entry = SlideEntry(id=path_id(tiling, "slide-view"), name=name, source="tiling")
    try:
        meta = json.loads((tiling / "tiling.json").read_text(encoding="utf-8"))
        source = (meta.get("source") or {}).get("slide") or {}
        recorded = source.get("path") or (meta.get("slide") or {}).get("path")
        if recorded:
            path = Path(recorded) if Path(recorded).is_absolute() else (tiling / recorded)
            entry.slide_path = path
            entry.slide_file = registry.add(path, kind="slide") if path.is_file() else None
        dims = (meta.get("slide") or {}).get("level_dimensions") or []
        entry.level0_size = (int(dims[0][0]), int(dims[0][1])) if dims else None
        extent = int((meta.get("resolution") or {}).get("extent0") or 0)
        entry.tiles = _tiles(tiling, extent)
        if "path" in entry.tiles.columns:
            entry.tile_images = [registry.add(tiling / str(p)) if isinstance(p, str) and p else None
                                 for p in entry.tiles["path"]]
        _add_scores(entry, tiling, run_ids)
        emb = tiling / "embeddings.npy"
        entry.embeddings = emb if emb.is_file() else None
        thumb = tiling / "thumbnail.png"
        entry.thumbnail = thumb if thumb.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, pd.errors.ParserError) as err:
        entry.error = f"{type(err).__name__}: {err}"
    return entry


def _tiles(tiling: Path, extent: int) -> pd.DataFrame:
    tiles = pd.read_csv(tiling / "tiles.csv")
    missing = {"x", "y"} - set(tiles.columns)
    if missing:
        raise ValueError(f"tiles.csv has no {', '.join(sorted(missing))} column")
    if extent <= 0:
        raise ValueError("tiling.json records no tile extent (resolution.extent0)")
    tiles["width"] = extent
    tiles["height"] = extent
    return tiles


def _add_scores(entry: SlideEntry, tiling: Path, run_ids: dict[Path, str]) -> None:
    """Join the tile scores of a predict run (../predictions.csv) or of slides embed
    (tile_predictions.csv) onto the tiles, by tile corner."""
    run_folder = tiling.parent
    candidates = [(run_folder / "predictions.csv", "histovl predict"), (tiling / "tile_predictions.csv", "slides embed")]
    for table, source in candidates:
        if not table.is_file() or (source == "histovl predict" and not (run_folder / "run.json").is_file()):
            continue
        scores = pd.read_csv(table)
        if not {"x", "y"} <= set(scores.columns):
            continue
        keep = ["x", "y"] + [c for c in scores.columns if c in ("prediction", "margin") or c.startswith(SCORE_PREFIX)]
        assert entry.tiles is not None
        entry.tiles = entry.tiles.merge(scores[keep], on=["x", "y"], how="left", validate="one_to_one")
        entry.classes = [c[len(SCORE_PREFIX):] for c in keep if c.startswith(SCORE_PREFIX)]
        entry.source = source
        entry.run_id = run_ids.get(run_folder) if source == "histovl predict" else None
        return


def load_slide_file(path: Path, name: str, registry: FileRegistry) -> SlideEntry | None:
    """A bare slide file under a root (viewer only), or None when it is not a slide."""
    readable = _openslide_reads(path)
    if path.suffix.lower() in (".tif", ".tiff") and not readable:
        return None  # a plain TIFF image, not a slide
    entry = SlideEntry(id=path_id(path.resolve(), "slide-view"), name=name, slide_path=path)
    entry.slide_file = registry.add(path, kind="slide")
    if entry.slide_file is None:
        entry.error = "outside the roots (symlink) or unreadable"
    elif readable is False:
        entry.error = f"OpenSlide does not recognise {path.name} (damaged, or not a slide format)"
    return entry


def _openslide_reads(path: Path) -> bool | None:
    """Whether OpenSlide recognises the file (reads its header only); None without OpenSlide."""
    try:
        import openslide
    except ImportError:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except (OSError, openslide.OpenSlideError):
        return False


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None

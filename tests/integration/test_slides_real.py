"""Tiling the two real slides in ../shared/data/slides (skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from histovl.slides import TileSpec, open_slide, tile_slide

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slides_dir(shared_data: Path) -> Path:
    d = shared_data / "slides"
    if not d.is_dir():
        pytest.skip("../shared/data/slides is not present")
    return d


def test_cmu_tiles_at_half_micron_via_cli(slides_dir: Path, tmp_path: Path) -> None:
    from histovl.cli.app import app

    out = tmp_path / "cmu"
    result = CliRunner().invoke(
        app, ["slides", "tile", "--slide", str(slides_dir / "CMU-1-Small-Region.svs"), "--out", str(out), "--mpp", "0.5", "--save-tiles"]
    )
    assert result.exit_code == 0, result.output
    tiles = pd.read_csv(out / "tiles.csv")
    assert list(tiles.columns[:6]) == ["x", "y", "level", "size", "mpp", "tissue_fraction"]
    assert len(tiles) > 20 and (tiles["level"] == 0).all() and (tiles["size"] == 224).all()
    assert tiles["mpp"].iloc[0] == pytest.approx(0.499, abs=1e-3)
    assert (tiles["tissue_fraction"] >= 0.5).all()
    # every saved tile equals a bare OpenSlide read of the same coordinates
    import openslide

    with openslide.OpenSlide(str(slides_dir / "CMU-1-Small-Region.svs")) as ref:
        for row in tiles.head(5).itertuples():
            bare = np.asarray(ref.read_region((row.x, row.y), 0, (224, 224)).convert("RGB"))
            np.testing.assert_array_equal(np.asarray(Image.open(out / row.path)), bare)
            assert bare.mean() < 235  # tissue, not glass
    for name in ("thumbnail.png", "tissue_map.png"):
        assert Image.open(out / name).size[0] > 100


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_tcga_two_levels_reads_level_one_for_half_micron(slides_dir: Path, tmp_path: Path, backend: str) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path, backend=backend) as s:
        assert s.level_count == 2 and s.mpp is None
    res = tile_slide(
        path, tmp_path / backend, TileSpec(size=224, mpp=0.5), slide_mpp=0.25, save_tiles=True, num_workers=2,
        reader_factory=lambda: open_slide(path, mpp=0.25, backend=backend),
    )
    assert res.resolution.level == 1 and res.resolution.extent0 == 448 and res.resolution.read_size == 224
    assert len(res.tiles) > 20 and res.bad_tiles == []
    meta = json.loads((tmp_path / backend / "tiling.json").read_text())
    assert meta["slide"]["reader"] == "OpenSlideReader" and meta["resolution"]["level"] == 1


def test_tcga_without_mpp_needs_slide_mpp(slides_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--slide-mpp"):
        tile_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", tmp_path / "x", TileSpec(mpp=0.5))

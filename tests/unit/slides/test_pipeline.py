"""tile_slide end to end on synthetic files: outputs, figures, faults, readers, zero-shot pooling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histovl.slides import (
    SlideOpenError,
    SlideReadError,
    TileFolderReader,
    TileSpec,
    allow_large_images,
    class_map_image,
    open_slide,
    tile_slide,
    top_j_pool,
)
from tests.unit.slides.conftest import FakeSlide, synthetic_tissue


@pytest.fixture
def plain_slide(tmp_path: Path) -> Path:
    path = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(512, 384)).save(path)
    return path


def test_tile_slide_writes_outputs_and_tissue_map(plain_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = tile_slide(plain_slide, out, TileSpec(size=64), slide_mpp=0.5, save_tiles=True, num_workers=2)
    for name in ("tiles.csv", "thumbnail.png", "tissue_map.png", "tiling.json"):
        assert (out / name).is_file(), name
    tiles = pd.read_csv(out / "tiles.csv")
    assert list(tiles.columns[:6]) == ["x", "y", "level", "size", "mpp", "tissue_fraction"]
    assert len(tiles) == len(res.tiles) > 5 and (tiles["mpp"] == 0.5).all()
    first = tiles.iloc[0]
    saved = np.asarray(Image.open(out / first["path"]))
    direct = np.asarray(Image.open(plain_slide).convert("RGB"))[first.y : first.y + 64, first.x : first.x + 64]
    np.testing.assert_array_equal(saved, direct)
    tmap = np.asarray(Image.open(out / "tissue_map.png").convert("RGB")).astype(int)
    thumb = np.asarray(Image.open(out / "thumbnail.png").convert("RGB")).astype(int)
    assert tmap.shape == thumb.shape and np.abs(tmap - thumb).mean() > 1.0  # overlay drawn
    assert not list(out.glob(".*")), "no temp files left behind"
    meta = json.loads((out / "tiling.json").read_text())
    assert meta["n_tiles"] == len(tiles) and meta["substituted_tiles"] == []


def test_tile_slide_records_substituted_and_fails_past_limit(tmp_path: Path) -> None:
    image = synthetic_tissue(512, 384)
    res = tile_slide("fake", tmp_path / "a", TileSpec(size=64), reader_factory=lambda: FakeSlide(image, (1,)), save_tiles=False)
    bad = {(int(x), int(y)) for x, y in zip(res.tiles["x"][:2], res.tiles["y"][:2], strict=True)}
    res2 = tile_slide(
        "fake", tmp_path / "b", TileSpec(size=64), save_tiles=True, num_workers=1,
        reader_factory=lambda: FakeSlide(image, (1,), fail_always=bad),
    )
    tiles = pd.read_csv(tmp_path / "b" / "tiles.csv")
    assert tiles["substituted"].sum() == 2
    assert len(json.loads((tmp_path / "b" / "tiling.json").read_text())["substituted_tiles"]) == 2
    assert len(res2.bad_tiles) == 2
    with pytest.raises(SlideReadError, match="could not be read"):
        tile_slide(
            "fake", tmp_path / "c", TileSpec(size=64, max_bad_tiles=1), save_tiles=True, num_workers=1,
            reader_factory=lambda: FakeSlide(image, (1,), fail_always=bad),
        )


def test_rgba_plain_image_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:20, :, :3] = (200, 50, 50)
    rgba[:20, :, 3] = 255  # bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    region = np.asarray(open_slide(tmp_path / "a.png").read_region(0, 0, 0, (40, 50)))
    assert (region[25:] == 255).all() and (region[:20] == (200, 50, 50)).all()


def test_decompression_bomb_guard_stays_on_and_override_restores(tmp_path: Path) -> None:
    Image.new("RGB", (300, 300), "white").save(tmp_path / "big.png")
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 10_000  # pretend the image is a bomb (limit*2 = 20k < 90k px)
        with pytest.raises(SlideOpenError, match="allow_large_images"):
            open_slide(tmp_path / "big.png")
        assert open_slide(tmp_path / "big.png", max_pixels=1_000_000).dimensions == (300, 300)
        assert Image.MAX_IMAGE_PIXELS == 10_000
        with allow_large_images(None):
            assert Image.MAX_IMAGE_PIXELS is None
        assert Image.MAX_IMAGE_PIXELS == 10_000
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_tile_folder_layout_from_coordinates_and_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    colours = {(0, 0): (255, 0, 0), (448, 0): (0, 255, 0), (0, 448): (0, 0, 255)}
    for (x, y), c in colours.items():
        Image.new("RGB", (16, 16), c).save(folder / f"tile_x{x}_y{y}.png")
    slide = TileFolderReader(folder)
    assert slide.dimensions == (32, 32)
    region = np.asarray(slide.read_region(0, 0, 0, (32, 32)))
    assert tuple(region[0, 0]) == (255, 0, 0) and tuple(region[0, 20]) == (0, 255, 0)
    assert tuple(region[20, 0]) == (0, 0, 255) and tuple(region[20, 20]) == (255, 255, 255)
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(plain / f"{i}.png")
    assert TileFolderReader(plain).dimensions == (24, 16)  # ceil(sqrt(5)) = 3 per row, 2 rows


def test_missing_or_unreadable_slide_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    with pytest.raises(SlideOpenError, match="cannot open slide"):
        open_slide(tmp_path / "broken.svs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideOpenError, match="no tile images"):
        open_slide(tmp_path / "empty")


def test_top_j_pool_matches_sorting() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((37, 4))
    for j in (1, 5, 37, 100):
        ref = np.sort(scores, axis=0)[::-1][: min(j, 37)].mean(axis=0)
        np.testing.assert_allclose(top_j_pool(scores, j), ref)
    with pytest.raises(ValueError):
        top_j_pool(np.zeros((0, 3)), 5)


def test_class_map_colours_tiles(tmp_path: Path) -> None:
    thumb = Image.new("RGB", (100, 100), (255, 255, 255))
    tiles = pd.DataFrame({"x": [0, 500], "y": [0, 500]})
    img = class_map_image(thumb, tiles, [0, 1], ["tumour", "stroma"], extent0=500, level0_size=(1000, 1000))
    arr = np.asarray(img).astype(int)
    assert img.size[1] > 100  # legend below
    assert tuple(arr[25, 25]) != tuple(arr[75, 75]) != (255, 255, 255)


def test_banded_thumbnail_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import histovl.slides.reader as reader_module

    slide = FakeSlide(synthetic_tissue(1024, 768), (1, 4))
    whole = np.asarray(slide.thumbnail(200)).astype(int)
    monkeypatch.setattr(reader_module, "THUMBNAIL_BAND_BYTES", 3 * 256 * 10)  # 10-row bands
    banded = np.asarray(slide.thumbnail(200)).astype(int)
    assert banded.shape == whole.shape == (150, 200, 3)
    assert np.abs(banded - whole).mean() < 2.0  # only band seams differ slightly

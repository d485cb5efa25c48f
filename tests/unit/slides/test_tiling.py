"""Level/resolution choice, the filtered grid, and fault-tolerant reading (injected errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histovl.slides.reader import SlideReadError
from histovl.slides.tiling import (
    TileReadingReport,
    TileSpec,
    iter_tiles,
    plan_tiles,
    resolve_resolution,
)
from histovl.slides.tissue import detect_tissue
from tests.unit.slides.conftest import FakeSlide, synthetic_tissue


def big_slide(**kw: object) -> FakeSlide:
    return FakeSlide(synthetic_tissue(1024, 768), downsamples=(1, 4, 16), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "level", "extent0", "read_size"),
    [
        (TileSpec(size=64), 0, 64, 64),  # native
        (TileSpec(size=64, mpp=0.5), 0, 128, 128),  # ds 2: level 0, shrink 128 -> 64
        (TileSpec(size=64, mpp=1.0), 1, 256, 64),  # ds 4: exactly level 1, no resize
        (TileSpec(size=64, mpp=2.0), 1, 512, 128),  # ds 8: level 1, shrink 128 -> 64
        (TileSpec(size=64, mpp=4.0), 2, 1024, 64),  # ds 16: level 2
        (TileSpec(size=64, mpp=0.998), 1, 255, 64),  # within 1% of level 1: read there, rounded
        (TileSpec(size=64, mpp=0.98), 0, 251, 251),  # 2% finer than level 1: level 0, shrink
        (TileSpec(size=64, magnification=10), 1, 256, 64),  # no objective: 10x = 1.0 µm/px -> ds 4
    ],
)
def test_level_choice_by_mpp(spec: TileSpec, level: int, extent0: int, read_size: int) -> None:
    slide = big_slide(mpp=0.25)
    res = resolve_resolution(slide, spec)
    assert (res.level, res.extent0, res.read_size) == (level, extent0, read_size)
    assert res.mpp == pytest.approx(0.25 * extent0 / spec.size)


def test_magnification_uses_objective_power_when_recorded() -> None:
    slide = big_slide(mpp=0.3, objective_power=40)
    res = resolve_resolution(slide, TileSpec(size=32, magnification=10))
    assert res.target_downsample == pytest.approx(4.0)
    assert (res.level, res.extent0, res.read_size) == (1, 128, 32)


def test_missing_mpp_is_a_clear_error() -> None:
    slide = big_slide(mpp=None)
    with pytest.raises(ValueError, match="--slide-mpp"):
        resolve_resolution(slide, TileSpec(mpp=0.5))
    with pytest.raises(ValueError, match="--slide-mpp"):
        resolve_resolution(slide, TileSpec(magnification=20))
    assert resolve_resolution(slide, TileSpec(size=100)).extent0 == 100


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="either"):
        TileSpec(mpp=0.5, magnification=20)
    with pytest.raises(ValueError, match="tissue_threshold"):
        TileSpec(tissue_threshold=1.5)


def test_grid_matches_brute_force() -> None:
    slide = big_slide()
    thumb = slide.thumbnail(256)
    mask = detect_tissue(thumb)
    res = resolve_resolution(slide, TileSpec(size=64))
    tiles = plan_tiles(slide, res, mask, 0.5)
    assert list(tiles.columns) == ["x", "y", "level", "size", "mpp", "tissue_fraction"]
    sx = 1024 / mask.shape[1]
    expected = []
    for y in range(0, 768 - 63, 64):
        for x in range(0, 1024 - 63, 64):
            m = mask[int(y // sx) : int(np.ceil((y + 64) / sx)), int(x // sx) : int(np.ceil((x + 64) / sx))]
            if m.mean() >= 0.5:
                expected.append((x, y))
    assert list(zip(tiles["x"], tiles["y"], strict=True)) == expected
    assert (tiles["tissue_fraction"] >= 0.5).all() and len(tiles) > 20


def _tiles(coords: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame({"x": [c[0] for c in coords], "y": [c[1] for c in coords]})


def test_parallel_reading_equals_serial_and_resizes() -> None:
    slide = big_slide()
    res = resolve_resolution(slide, TileSpec(size=32, mpp=0.5))  # read 64 at level 0, shrink
    tiles = _tiles([(x, y) for x in range(0, 1024, 128) for y in range(0, 768, 128)])
    serial = [np.asarray(img) for _, img in iter_tiles(lambda: slide, tiles, res, num_workers=1)]
    parallel = list(iter_tiles(lambda: big_slide(), tiles, res, num_workers=3))
    assert [i for i, _ in parallel] == list(range(len(tiles)))
    for a, (_, b) in zip(serial, parallel, strict=True):
        assert b.size == (32, 32) and b.mode == "RGB"
        np.testing.assert_array_equal(a, np.asarray(b))


def test_transparent_pixels_become_white() -> None:
    slide = big_slide()
    region = np.asarray(slide.read_region(1000, 700, 0, (64, 64)))
    assert region.shape == (64, 64, 3)
    assert (region[40:, 40:] == 255).all()  # beyond the image: transparent -> white


def test_read_error_reopens_and_retries_once() -> None:
    slide = big_slide(fail_once={(64, 0)})
    res = resolve_resolution(slide, TileSpec(size=64))
    report = TileReadingReport("fake", limit=5)
    out = dict(iter_tiles(lambda: slide, _tiles([(0, 0), (64, 0), (128, 0)]), res, num_workers=1, report=report))
    assert slide.reopened == 1 and report.n_retried_ok == 1 and report.bad == []
    assert not (np.asarray(out[1]) == 255).all()  # the real pixels, not a white substitute


def test_second_failure_substitutes_white_and_is_recorded() -> None:
    slide = big_slide(fail_always={(64, 0)})
    res = resolve_resolution(slide, TileSpec(size=64))
    report = TileReadingReport("fake", limit=5)
    out = dict(iter_tiles(lambda: slide, _tiles([(0, 0), (64, 0)]), res, num_workers=1, report=report))
    assert (np.asarray(out[1]) == 255).all()
    assert [(b.index, b.x, b.y) for b in report.bad] == [(1, 64, 0)]
    assert "after reopening" in report.bad[0].reason


def test_slide_fails_past_bad_tile_limit() -> None:
    coords = [(x, 0) for x in range(0, 640, 64)]
    slide = big_slide(fail_always=set(coords[:4]))
    res = resolve_resolution(slide, TileSpec(size=64))
    report = TileReadingReport("fake.svs", limit=3)
    with pytest.raises(SlideReadError, match="limit 3"):
        list(iter_tiles(lambda: slide, _tiles(coords), res, num_workers=2, report=report))

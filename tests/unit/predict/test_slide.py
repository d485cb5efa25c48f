"""`predict` on a slide: per-tile table, pooling, heatmap, slide.json, QuPath GeoJSON, re-run reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histovl.predict import predict
from histovl.slides import slide_zeroshot, top_j_pool
from tests.unit.predict.conftest import CLASSES, StandInHead

SCORES = [f"score:{c}" for c in CLASSES]


def _shoelace(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))


def _read_geojson_boxes(path: Path) -> tuple[list[dict], list[tuple[int, int, int, int]]]:
    """Read the file back as plain JSON and check every feature is a closed, CCW axis-aligned box."""
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    boxes = []
    for f in collection["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        rings = f["geometry"]["coordinates"]
        assert len(rings) == 1, "one exterior ring, no holes"
        ring = rings[0]
        assert len(ring) == 5 and ring[0] == ring[-1], "closed ring of 4 corners"
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        assert {(x, y) for x, y in ring} == {(x0, y0), (x1, y0), (x1, y1), (x0, y1)}, "axis-aligned rectangle"
        assert _shoelace(ring) == pytest.approx((x1 - x0) * (y1 - y0)), "counter-clockwise (RFC 7946), area = box"
        boxes.append((x0, y0, x1, y1))
    return collection["features"], boxes


def test_slide_outputs_and_geojson_cover_the_tiles_at_level0(tiny_clip, slide_png, prompts, tmp_path):
    out = tmp_path / "run"
    # 0.5 µm/px tiles from a 0.25 µm/px slide: each 32 px tile covers 64 level-0 pixels
    res = predict(tiny_clip, slide_png, out, prompts=prompts, tile_size=32, mpp=0.5, slide_mpp=0.25,
                  tissue_threshold=0.3, cache=tmp_path / "c", progress=False)
    for name in ("predictions.csv", "slide.json", "heatmap.png", "predictions.geojson", "report.html", "run.json"):
        assert (out / name).is_file(), name
    tiles = pd.read_csv(out / "tiling" / "tiles.csv")
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == len(tiles) > 3
    assert list(frame.columns) == ["path", "x", "y", "width", "height", "tissue_fraction", "prediction", "margin", *SCORES]
    assert (frame["width"] == 64).all() and (frame["height"] == 64).all()
    assert all((out / p).is_file() for p in frame["path"])  # tile images, relative to the output folder
    features, boxes = _read_geojson_boxes(out / "predictions.geojson")
    expected = [(x, y, x + 64, y + 64) for x, y in zip(tiles["x"], tiles["y"], strict=True)]
    assert boxes == expected  # one polygon per tile, exactly its level-0 pixel box, same order
    for f, (_, row) in zip(features, frame.iterrows(), strict=True):
        props = f["properties"]
        assert props["objectType"] == "tile"
        assert props["measurements"] == pytest.approx({c: row[c] for c in SCORES}, abs=1e-12)
        assert props["classification"]["name"] == row["prediction"]
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    slide = json.loads((out / "slide.json").read_text())
    assert slide["pooling"] == "top-j" and slide["prediction"] == max(slide["probabilities"], key=slide["probabilities"].get)
    assert slide["n_tiles"] == len(tiles) and slide["tile_extent_level0"] == 64 and res.slide == slide
    with Image.open(out / "heatmap.png") as im, Image.open(out / "tiling" / "thumbnail.png") as thumb:
        assert im.width == thumb.width and im.height > thumb.height  # thumbnail plus legend


def test_geojson_round_trips_through_shapely(tiny_clip, slide_png, prompts, tmp_path):
    shapely_geometry = pytest.importorskip("shapely.geometry")
    out = tmp_path / "run"
    predict(tiny_clip, slide_png, out, prompts=prompts, tile_size=32, geojson_object="annotation", use_cache=False, progress=False)
    tiles = pd.read_csv(out / "tiling" / "tiles.csv")
    features = json.loads((out / "predictions.geojson").read_text())["features"]
    for f, (x, y) in zip(features, zip(tiles["x"], tiles["y"], strict=True), strict=True):
        poly = shapely_geometry.shape(f["geometry"])
        assert poly.is_valid and poly.equals(shapely_geometry.box(x, y, x + 32, y + 32))
        assert f["properties"]["objectType"] == "annotation"


def test_rerun_reuses_tiling_and_embeddings(tiny_clip, slide_png, prompts, tmp_path, monkeypatch):
    out = tmp_path / "run"
    kw = dict(prompts=prompts, tile_size=32, cache=tmp_path / "c", progress=False)
    first = predict(tiny_clip, slide_png, out, **kw)
    assert first.slide["tiling_reused"] is False and first.n_encoded == len(first.predictions) > 0
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tiling" / "tiles").iterdir()}

    import histovl.slides.pipeline as pipeline

    def no_tiling(*args, **kwargs):  # a reused tiling never plans or reads the slide
        raise AssertionError("the slide was tiled again")

    monkeypatch.setattr(pipeline, "plan_slide", no_tiling)
    second = predict(tiny_clip, slide_png, out, **kw)
    assert second.slide["tiling_reused"] is True
    assert second.n_encoded == 0 and second.n_cached == len(first.predictions)  # encodes nothing
    assert {p: p.stat().st_mtime_ns for p in (out / "tiling" / "tiles").iterdir()} == stamps
    np.testing.assert_array_equal(second.probabilities, first.probabilities)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["kind"] == "slide" and run["config"]["tiling"] == str(out / "tiling")


def test_pooling_prompt_topj_is_mi_zero_and_head_pools_probabilities(tiny_clip, slide_png, prompts, tmp_path):
    from histovl.prompts import load_prompt_set
    from histovl.zeroshot import build_text_classifier

    kw = dict(tile_size=32, cache=tmp_path / "c", progress=False)
    res = predict(tiny_clip, slide_png, tmp_path / "p", prompts=prompts, top_j=3, **kw)
    emb = np.load(tmp_path / "p" / "tiling" / "embeddings.npy")
    zs = slide_zeroshot(build_text_classifier(tiny_clip, load_prompt_set(prompts)), emb, (3,))
    assert res.slide["top_j"] == 3 and "MI-Zero" in res.slide["pooled"]
    np.testing.assert_allclose(list(res.slide["probabilities"].values()), zs.slide_probabilities[3])
    mean = predict(tiny_clip, slide_png, tmp_path / "m", prompts=prompts, pooling="mean", **kw)
    np.testing.assert_allclose(list(mean.slide["probabilities"].values()), mean.probabilities.mean(axis=0))
    head = StandInHead(CLASSES, tiny_clip.weights_id)
    h = predict(tiny_clip, slide_png, tmp_path / "h", head=head, top_j=4, **kw)
    np.testing.assert_allclose(h.probabilities, head.predict_proba(emb), atol=1e-6)
    pooled = top_j_pool(h.probabilities, 4)
    np.testing.assert_allclose(list(h.slide["scores"].values()), pooled)
    np.testing.assert_allclose(list(h.slide["probabilities"].values()), pooled / pooled.sum())


def test_reuses_a_slides_embed_folder_given_as_tiling(tiny_clip, slide_png, prompts, tmp_path):
    from histovl.embed import EmbeddingCache
    from histovl.slides import TileSpec, embed_slide

    se = embed_slide(tiny_clip, slide_png, tmp_path / "se", TileSpec(size=32), cache=EmbeddingCache(tmp_path / "c"), num_workers=1)
    res = predict(tiny_clip, slide_png, tmp_path / "out", prompts=prompts, tile_size=32, tiling=tmp_path / "se",
                  cache=tmp_path / "c", progress=False)
    assert res.slide["tiling_reused"] is True and res.n_encoded == 0 and len(res.predictions) == len(se.tiles)
    assert not (tmp_path / "out" / "tiling").exists()
    assert res.predictions["path"].str.startswith("/").all()  # tiles outside --out: absolute paths


def test_folder_of_tiles_as_a_slide(tiny_clip, slide_png, prompts, tmp_path):
    first = predict(tiny_clip, slide_png, tmp_path / "a", prompts=prompts, tile_size=32, use_cache=False, progress=False)
    tiles = tmp_path / "a" / "tiling" / "tiles"
    images = predict(tiny_clip, tiles, None, prompts=prompts, use_cache=False, progress=False)
    assert images.kind == "images" and len(images.predictions) == len(first.predictions)
    res = predict(tiny_clip, tiles, tmp_path / "b", prompts=prompts, as_slide=True, tile_size=32, tissue_threshold=0.0,
                  use_cache=False, progress=False)
    assert res.kind == "slide" and len(res.predictions) >= len(first.predictions)
    features = json.loads((tmp_path / "b" / "predictions.geojson").read_text())["features"]
    assert len(features) == len(res.predictions)

"""Slide tile embeddings through the shared engine and cache, and slide zero-shot outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histovl.slides import TileSpec, embed_slide, slide_zeroshot, top_j_pool, write_slide_zeroshot
from tests.unit.slides.conftest import synthetic_tissue


def test_embed_slide_matches_bare_encoder_and_uses_cache(tiny_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from histovl.embed import EmbeddingCache

    slide = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(slide)
    cache = EmbeddingCache(tmp_path / "cache")
    se = embed_slide(tiny_clip, slide, tmp_path / "out", TileSpec(size=32), cache=cache, num_workers=1)
    n = len(se.tiles)
    assert n > 5 and se.embeddings.shape == (n, 32) and se.n_encoded == n
    np.testing.assert_allclose(np.linalg.norm(se.embeddings, axis=1), 1.0, atol=1e-5)
    saved = np.load(tmp_path / "out" / "embeddings.npy")
    np.testing.assert_array_equal(saved, se.embeddings)
    # reference: the bare encoder on the same crops
    img = Image.open(slide).convert("RGB")
    row = se.tiles.iloc[3]
    crop = img.crop((row.x, row.y, row.x + 32, row.y + 32))
    with torch.inference_mode():
        ref = tiny_clip.encode_image(tiny_clip.preprocess(crop)[None]).numpy()[0]
    np.testing.assert_allclose(se.embeddings[3], ref, atol=1e-5)
    again = embed_slide(tiny_clip, slide, tmp_path / "out2", TileSpec(size=32), cache=cache, num_workers=1)
    assert again.n_cached == n and again.n_encoded == 0


def test_slide_zeroshot_pools_and_writes_map(tiny_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from histovl.prompts import prompt_set_from_mapping
    from histovl.zeroshot import build_text_classifier

    slide = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(slide)
    se = embed_slide(tiny_clip, slide, tmp_path / "out", TileSpec(size=32), num_workers=1)
    ps = prompt_set_from_mapping(
        {"name": "t", "classes": {"tumour": ["tumour"], "stroma": ["stroma"]}, "templates": ["an image of {}."]}
    )
    clf = build_text_classifier(tiny_clip, ps)
    zs = slide_zeroshot(clf, se.embeddings, (1, 5))
    np.testing.assert_allclose(zs.slide_scores[5], top_j_pool(clf.cosine(se.embeddings), 5))
    assert zs.slide_probabilities[1].sum() == pytest.approx(1.0)
    write_slide_zeroshot(se, zs, tmp_path / "out")
    for name in ("zeroshot.json", "tile_predictions.csv", "zeroshot_map.png"):
        assert (tmp_path / "out" / name).is_file()


def test_resumed_tiling_embeds_exactly_like_a_fresh_one(tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import histovl.slides.pipeline as pipeline_module
    from histovl.embed import EmbeddingCache

    slide = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(slide)
    spec = TileSpec(size=32)
    fresh = embed_slide(tiny_clip, slide, tmp_path / "fresh", spec, num_workers=1)
    real_save, calls = pipeline_module._save_tile, []

    def save_then_die(img: Image.Image, path: Path) -> None:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        real_save(img, path)

    monkeypatch.setattr(pipeline_module, "_save_tile", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        embed_slide(tiny_clip, slide, tmp_path / "out", spec, num_workers=1)
    monkeypatch.setattr(pipeline_module, "_save_tile", real_save)
    cache = EmbeddingCache(tmp_path / "cache")
    resumed = embed_slide(tiny_clip, slide, tmp_path / "out", spec, cache=cache, num_workers=1)
    assert resumed.tiling.n_tiles_read == len(fresh.tiles) - 3 and resumed.n_encoded == len(fresh.tiles)
    np.testing.assert_array_equal(resumed.embeddings, fresh.embeddings)
    assert (tmp_path / "out" / "tiles.csv").read_bytes() == (tmp_path / "fresh" / "tiles.csv").read_bytes()
    # re-run on the unchanged slide: tiling reused, every embedding from the cache
    again = embed_slide(tiny_clip, slide, tmp_path / "out", spec, cache=cache, num_workers=1)
    assert again.tiling.reused and again.n_cached == len(fresh.tiles) and again.n_encoded == 0
    np.testing.assert_array_equal(again.embeddings, fresh.embeddings)

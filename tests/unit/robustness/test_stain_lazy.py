"""LazyMacenko: the same cache key and the same pixels as the eager MacenkoTransform, with the
reference hash memoised so a fully cached run fits nothing (and imports no torch: test_warm_runs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histovl.robustness.stain_lazy import MEMO_DIR, LazyMacenko, lazy_macenko
from tests.helpers.tiny import tiny_encoder

pytest.importorskip("torchstain")


def _he_tile(path: Path, seed: int) -> str:
    """A pink/purple H&E-like tile Macenko can fit (two stains on a light background)."""
    rng = np.random.default_rng(seed)
    hema, eosin = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    conc_h, conc_e = rng.uniform(0, 1.2, (64, 64, 1)), rng.uniform(0, 0.8, (64, 64, 1))
    od = conc_h * hema + conc_e * eosin
    img = np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return str(path)


def test_key_and_pixels_equal_the_eager_transform_and_the_memo_skips_the_fit(tmp_path: Path) -> None:
    from histovl.data import read_rgb
    from histovl.robustness.stain import MacenkoTransform

    encoder = tiny_encoder()
    ref = _he_tile(tmp_path / "ref.png", 0)
    eager = MacenkoTransform(encoder.preprocess.to_unnormalised(read_rgb(ref)))
    lazy = LazyMacenko(ref, encoder, tmp_path / "cache")
    assert lazy.key == eager.key  # the cache entries of runs before this change stay valid
    assert list((tmp_path / "cache" / MEMO_DIR).glob("*.json")), "the first run records the hash"
    image = encoder.preprocess.to_unnormalised(read_rgb(_he_tile(tmp_path / "img.png", 1)))
    torch.testing.assert_close(lazy(image, 0), eager(image, 0), rtol=0, atol=0)
    blur = lazy.with_inner(None)
    assert blur._shared is lazy._shared  # one fit for every condition

    again = LazyMacenko(ref, encoder, tmp_path / "cache")
    assert again.key == eager.key and "fitted" not in again._shared  # from the memo: nothing fitted
    assert again.n_fallback == 0


def test_a_damaged_memo_is_recomputed_and_the_default_reference_is_the_first_readable(tmp_path: Path) -> None:
    encoder = tiny_encoder()
    paths = [str(tmp_path / "bad.png"), _he_tile(tmp_path / "a.png", 2), _he_tile(tmp_path / "b.png", 3)]
    keys = [None, hashlib.sha256(Path(paths[1]).read_bytes()).hexdigest(), None]
    lazy = lazy_macenko(None, paths, keys, [False, True, True], encoder, tmp_path / "cache")
    assert lazy.reference_path == paths[1]
    first = lazy.key
    (memo,) = (tmp_path / "cache" / MEMO_DIR).glob("*.json")
    memo.write_text("{not json")
    assert lazy_macenko(None, paths, keys, [False, True, True], encoder, tmp_path / "cache").key == first
    assert lazy_macenko(paths[2], paths, keys, [False, True, True], encoder, None).key != first

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from histovl.embed import EmbeddingCache, encode_images
from histovl.embed.engine import encode_batch_with_backoff
from histovl.errors import ImageReadError, NonFiniteError


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def _reference(encoder, paths) -> np.ndarray:
    from histovl.data import read_rgb

    x = torch.stack([encoder.preprocess(read_rgb(p)) for p in paths])
    with torch.inference_mode():
        return encoder.encode_image(x).numpy()


def test_matches_plain_forward_with_workers_and_batches(tiny_clip, class_folder):
    paths = _paths(class_folder)
    res = encode_images(tiny_clip, paths, batch_size=5, num_workers=1, progress=False)
    assert res.ok.all() and res.embeddings.shape == (12, 32)
    np.testing.assert_allclose(res.embeddings, _reference(tiny_clip, paths), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


def test_second_run_served_from_cache_and_equal(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)
    cache = EmbeddingCache(tmp_path / "cache")
    first = encode_images(tiny_clip, paths, cache=cache, batch_size=4, progress=False)
    second = encode_images(tiny_clip, paths, cache=cache, batch_size=4, progress=False)
    assert first.n_encoded == 12 and second.n_cached == 12 and second.n_encoded == 0
    np.testing.assert_array_equal(first.embeddings, second.embeddings)


def test_resumed_run_equals_uninterrupted(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)
    full = encode_images(tiny_clip, paths, batch_size=4, progress=False).embeddings
    cache = EmbeddingCache(tmp_path / "cache")
    # "Interrupted" run: only the first 5 images were done.
    encode_images(tiny_clip, paths[:5], cache=cache, batch_size=4, progress=False)
    resumed = encode_images(tiny_clip, paths, cache=cache, batch_size=4, progress=False)
    assert resumed.n_cached == 5 and resumed.n_encoded == 7
    np.testing.assert_allclose(resumed.embeddings, full, atol=1e-6)


def test_edited_image_is_a_cache_miss(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)[:2]
    cache = EmbeddingCache(tmp_path / "cache")
    encode_images(tiny_clip, paths, cache=cache, progress=False)
    shutil.copy(paths[1], paths[0])  # same name, new content
    res = encode_images(tiny_clip, paths, cache=cache, progress=False)
    assert res.n_cached == 1 and res.n_encoded == 1 or res.n_cached == 2  # new bytes == paths[1]'s bytes: a hit
    np.testing.assert_allclose(res.embeddings[0], res.embeddings[1], atol=1e-6)


def test_corrupt_file_raise_names_file_and_skip_keeps_valid(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)
    bad = class_folder / "lung_n" / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:40])  # truncated PNG
    all_paths = [*paths[:3], bad, *paths[3:6]]
    cache = EmbeddingCache(tmp_path / "cache")
    with pytest.raises(ImageReadError, match="broken.png"):
        encode_images(tiny_clip, all_paths, cache=cache, batch_size=2, num_workers=0, progress=False)
    res = encode_images(tiny_clip, all_paths, cache=cache, on_error="skip", batch_size=2, progress=False)
    assert res.ok.tolist() == [True, True, True, False, True, True, True]
    assert [f.path for f in res.failures] == [str(bad)]
    assert res.n_cached >= 2  # batches finished before the error were kept
    np.testing.assert_allclose(res.embeddings, _reference(tiny_clip, [*paths[:3], *paths[3:6]]), atol=1e-5)


def test_missing_file_is_reported(tiny_clip, class_folder, tmp_path):
    paths = [*_paths(class_folder)[:2], class_folder / "nope.png"]
    res = encode_images(tiny_clip, paths, cache=EmbeddingCache(tmp_path), on_error="skip", progress=False)
    assert res.ok.tolist() == [True, True, False] and "nope.png" in res.failures[0].path


def test_nan_embeddings_raise_naming_the_image(tiny_clip, class_folder, monkeypatch):
    paths = _paths(class_folder)[:3]
    real = tiny_clip._encode_image

    def poisoned(x):
        out = real(x)
        out[1] = float("nan")
        return out

    monkeypatch.setattr(tiny_clip, "_encode_image", poisoned)
    with pytest.raises(NonFiniteError, match=paths[1].name):
        encode_images(tiny_clip, paths, batch_size=3, num_workers=0, progress=False)


def test_oom_backoff_halves_until_it_fits():
    calls: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2

    x = torch.arange(10.0).view(10, 1)
    out, used = encode_batch_with_backoff(encode, x, 16)
    assert used == 2 and torch.equal(out, x * 2)
    assert calls[0] == 10


class _Darken:
    key = "darken:0.5"

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        return image * 0.5


def test_transform_gets_its_own_cache_namespace(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)[:4]
    cache = EmbeddingCache(tmp_path / "cache")
    clean = encode_images(tiny_clip, paths, cache=cache, progress=False)
    dark = encode_images(tiny_clip, paths, cache=cache, transform=_Darken(), progress=False)
    assert dark.n_encoded == 4 and not np.allclose(clean.embeddings, dark.embeddings)
    again = encode_images(tiny_clip, paths, cache=cache, transform=_Darken(), progress=False)
    assert again.n_cached == 4

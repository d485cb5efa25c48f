"""In-memory corrupted encoding equals the file path (`encode_images` with a transform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histovl.data import read_rgb
from histovl.embed import EmbeddingCache, encode_images
from histovl.embed.in_memory import DecodedImages, encode_decoded
from histovl.errors import ImageReadError
from histovl.robustness import get_corruption


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def test_uint8_bank_holds_exactly_the_preprocessed_pixels(tiny_clip, class_folder):
    paths = _paths(class_folder)
    bank = DecodedImages(paths, tiny_clip.preprocess, num_workers=0)
    assert bank.pixels.dtype == torch.uint8
    ref = torch.stack([tiny_clip.preprocess.to_unnormalised(read_rgb(p)) for p in paths])
    assert torch.equal(bank.float_pixels(range(len(paths))), ref)  # bit-identical, not just close
    assert bank.nbytes == ref.numel()  # one byte per value


@pytest.mark.parametrize("name,level", [("blur", 2), ("markup", 3), ("hue", -2), (None, 0)])
def test_same_embeddings_as_encode_images(tiny_clip, class_folder, name, level):
    paths = _paths(class_folder)
    tf = None if name is None else get_corruption(name).transform(level, seed=3)
    ref = encode_images(tiny_clip, paths, transform=tf, batch_size=5, num_workers=0, seed=3, progress=False)
    got = encode_decoded(tiny_clip, DecodedImages(paths, tiny_clip.preprocess, num_workers=0), transform=tf,
                         batch_size=5, seed=3)
    assert got.ok.all() and got.n_encoded == len(paths)
    np.testing.assert_allclose(got.embeddings, ref.embeddings, rtol=0, atol=1e-6)


def test_shares_the_cache_with_encode_images_and_skips_decoding(tiny_clip, class_folder, tmp_path):
    paths = _paths(class_folder)
    cache = EmbeddingCache(tmp_path / "cache")
    tf = get_corruption("markup").transform(2, seed=0)
    first = encode_decoded(tiny_clip, DecodedImages(paths, tiny_clip.preprocess, num_workers=0), transform=tf, cache=cache)
    assert first.n_encoded == len(paths)
    via_files = encode_images(tiny_clip, paths, transform=tf, cache=cache, num_workers=0, progress=False)
    assert via_files.n_cached == len(paths) and via_files.n_encoded == 0
    np.testing.assert_array_equal(via_files.embeddings, first.embeddings)
    bank = DecodedImages(paths, tiny_clip.preprocess, num_workers=0)
    again = encode_decoded(tiny_clip, bank, transform=tf, cache=cache)
    assert again.n_cached == len(paths) and not bank.decoded  # nothing decoded when all cached
    other = encode_decoded(tiny_clip, bank, transform=get_corruption("markup").transform(3, seed=0), cache=cache)
    assert other.n_encoded == len(paths)  # another level is another namespace


def test_unreadable_files_raise_or_are_skipped(tiny_clip, class_folder):
    paths = _paths(class_folder)
    bad = class_folder / "lung_n" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = _paths(class_folder)
    with pytest.raises(ImageReadError, match="broken.png"):
        encode_decoded(tiny_clip, DecodedImages(paths, tiny_clip.preprocess, num_workers=0))
    res = encode_decoded(
        tiny_clip, DecodedImages(paths, tiny_clip.preprocess, num_workers=0, on_error="skip"),
        transform=get_corruption("blur").transform(1),
    )
    assert res.ok.sum() == len(paths) - 1 and not res.ok[paths.index(bad)]
    assert [f.path for f in res.failures] == [str(bad)]


def test_rejects_a_bank_decoded_for_another_preprocessing(tiny_clip, class_folder):
    from histovl.models.preprocess import Preprocess

    bank = DecodedImages(_paths(class_folder), Preprocess(48, (0.5,) * 3, (0.5,) * 3), num_workers=0)
    with pytest.raises(ValueError, match="decode them again"):
        encode_decoded(tiny_clip, bank)

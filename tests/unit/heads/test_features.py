"""Token features: ViT patch tokens (token 0 = the image embedding) and model-agnostic crops."""

from __future__ import annotations

import pytest
import torch

from histovl.errors import HistovlError
from histovl.heads.features import (
    crop_tokens,
    patch_tokens,
    resolve_token_source,
    supports_patch_tokens,
)


def test_patch_tokens_first_token_is_the_image_embedding(tiny_clip) -> None:
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = patch_tokens(tiny_clip, pixels)
    assert tokens.shape == (3, 1 + 16, 32)  # 32 px / patch 8 -> 4x4 patches
    torch.testing.assert_close(tokens[:, 0], tiny_clip.encode_image(pixels), atol=1e-5, rtol=1e-5)
    pooled = patch_tokens(tiny_clip, pixels, grid=2)
    assert pooled.shape == (3, 1 + 4, 32)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3, 5))


def test_patch_tokens_of_one_image_do_not_depend_on_the_batch(tiny_clip) -> None:
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(patch_tokens(tiny_clip, pixels[2:3])[0], patch_tokens(tiny_clip, pixels)[2], atol=1e-5, rtol=1e-5)


def test_crop_tokens_encode_whole_image_and_grid(tiny_clip) -> None:
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = crop_tokens(tiny_clip, pixels, grid=2)
    assert tokens.shape == (2, 5, 32)
    torch.testing.assert_close(tokens[:, 0], tiny_clip.encode_image(pixels), atol=1e-5, rtol=1e-5)
    top_left = torch.nn.functional.interpolate(pixels[:, :, :16, :16], size=(32, 32), mode="bicubic")
    torch.testing.assert_close(tokens[:, 1], tiny_clip.encode_image(top_left), atol=1e-5, rtol=1e-5)


def test_token_source_resolution(tiny_clip) -> None:
    assert supports_patch_tokens(tiny_clip)
    assert resolve_token_source(tiny_clip, "auto") == "patch"

    class NotAViT:
        card = tiny_clip.card

    assert resolve_token_source(NotAViT(), "auto") == "crops"  # type: ignore[arg-type]
    with pytest.raises(HistovlError, match="no patch tokens"):
        resolve_token_source(NotAViT(), "patch")  # type: ignore[arg-type]

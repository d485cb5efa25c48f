"""Tiny real architectures for unit tests (seconds, not minutes; random weights, fixed seed)."""

from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from histovl.models._open_clip import OpenClipEncoder
from histovl.models.card import OPENAI_MEAN, OPENAI_STD, ModelCard

TINY_IMAGE_SIZE = 32


def tiny_open_clip_model(seed: int = 0) -> CLIP:
    """A 2-layer ViT / 2-layer causal text transformer with OpenAI CLIP's layout."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=TINY_IMAGE_SIZE)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()


def tiny_card(name: str = "tiny-clip") -> ModelCard:
    return ModelCard(
        name=name,
        family="open_clip",
        architecture="tiny-ViT",
        source="test",
        image_size=TINY_IMAGE_SIZE,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        context_length=77,
        tokenizer="ViT-B-32",
        embed_dim=32,
        text_causal=True,
    )


def tiny_encoder(seed: int = 0) -> OpenClipEncoder:
    model = tiny_open_clip_model(seed)
    return OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), tiny_card(), f"tiny-seed{seed}")

"""CONCH family (Lu et al., Nat. Med. 2024): a CoCa-style model with its own tokenizer.

Layout, as in CONCH's ``conch_ViT-B-16.json`` (so its published state dict loads strictly):

* ``visual.trunk``: a timm ViT-B/16 at 448 px (``dynamic_img_size``), CLS token, final norm;
* ``visual.attn_pool_contrast`` (1 query, 512-d) -> ``ln_contrast`` -> ``@ proj_contrast``: the
  image embedding; ``visual.attn_pool_caption``/``ln_caption`` (256 queries) feed the captioning
  decoder only, but are kept so every visual key is checked;
* ``text``: a 12-layer, 768-wide transformer over 127 tokens plus an appended CLS embedding
  (position 128), causal among tokens, CLS pooled, ``ln_final`` on the pooled token only.
  open_clip's `TextTransformer` (``embed_cls=True``, legacy CLS mask) computes exactly this, so
  it is reused instead of re-written; a test checks it against CONCH's own mask construction.
* ``text_decoder.*`` (the captioning decoder) is not needed for embeddings and is dropped.

Because the CLS embedding's position depends on the padded length, prompts are always encoded at
the full 127 tokens (``text_causal: false`` on the card).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip.transformer import AttentionalPooler, TextTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from histovl._io import atomic_write_bytes
from histovl.models._checkpoint import load_state_dict_strict, read_checkpoint
from histovl.models._families import CONCH_HUB_FILES
from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder
from histovl.models.registry import LoadRequest

TOKENIZER_NAME = "conch_byte_level_bpe_uncased.json"
HUB_WEIGHT_FILES = CONCH_HUB_FILES
_UNUSED_PREFIXES = ("text_decoder.",)


class ConchVisual(nn.Module):
    """CONCH's vision tower: timm ViT trunk + attentional pooling heads."""

    def __init__(self, embed_dim: int, embed_dim_caption: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        width = int(cfg.get("width", 768))
        heads = int(cfg.get("attn_pooler_heads", 8))
        self.trunk = VisionTransformer(
            img_size=cfg.get("image_size", 224),
            patch_size=cfg.get("patch_size", 16),
            embed_dim=width,
            depth=int(cfg.get("layers", 12)),
            num_heads=int(cfg.get("num_heads", 12)),
            mlp_ratio=float(cfg.get("mlp_ratio", 4)),
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = AttentionalPooler(
            embed_dim, width, n_head=heads, n_queries=int(cfg.get("n_queries_contrast", 1))
        )
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = AttentionalPooler(
            embed_dim_caption, width, n_head=heads, n_queries=int(cfg.get("n_queries_caption", 256))
        )
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(pixels)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast


class ConchModel(nn.Module):
    """The contrastive part of CONCH (``visual``, ``text``, ``logit_scale``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        embed_dim = int(cfg["embed_dim"])
        text_cfg = cfg["text_cfg"]
        self.visual = ConchVisual(embed_dim, int(cfg.get("embed_dim_caption", 768)), cfg["vision_cfg"])
        self.text = TextTransformer(
            context_length=int(text_cfg["context_length"]) - 1,  # the last slot holds the CLS token
            vocab_size=int(text_cfg["vocab_size"]),
            width=int(text_cfg["width"]),
            heads=int(text_cfg["heads"]),
            layers=int(text_cfg["layers"]),
            output_dim=embed_dim,
            embed_cls=True,
            pad_id=int(text_cfg.get("pad_id", 0)),
            correct_cls_mask=False,  # CONCH was trained with the legacy CoCa mask
            act_layer=nn.GELU,
            norm_layer=nn.LayerNorm,
        )
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


class ConchTokenizer:
    """CONCH's byte-level BPE (a HF ``tokenizers`` file): ``<start_of_text>`` ... ``<end_of_text>``,
    padded with ``<pad>`` (id 0) to ``context_length - 1`` tokens."""

    def __init__(self, tokenizer_file: Path, context_length: int) -> None:
        from transformers import PreTrainedTokenizerFast

        self.tokenizer_file = Path(tokenizer_file)
        self.context_length = context_length
        self._tok = PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_file),
            bos_token="<start_of_text>",
            eos_token="<end_of_text>",
            pad_token="<pad>",
        )

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self._tok(
            list(texts),
            max_length=self.context_length - 1,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return batch["input_ids"]


class ConchEncoder(Encoder):
    """CONCH as a histovl `Encoder`."""

    def __init__(
        self, model: ConchModel, tokenizer: ConchTokenizer, card: ModelCard, weights_id: str, cfg: dict[str, Any]
    ) -> None:
        super().__init__(card, weights_id)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_cfg = cfg

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def save_assets(self, out_dir: Path) -> dict[str, Any]:
        atomic_write_bytes(out_dir / "tokenizer.json", self.tokenizer.tokenizer_file.read_bytes())
        return {"model_cfg": self.model_cfg, "tokenizer_file": "tokenizer.json"}


def find_tokenizer_file(card: ModelCard, asset_dir: Path | None) -> Path:
    """Locate CONCH's tokenizer file: next to the weights, ``$HISTOVL_CONCH_TOKENIZER``, or an
    installed ``conch`` package (CONCH's repository ships it; its licence forbids redistribution)."""
    names = [str(card.extra.get("tokenizer_file", "")), "tokenizer.json", TOKENIZER_NAME]
    candidates = [asset_dir / n for n in names if n and asset_dir is not None]
    if os.environ.get("HISTOVL_CONCH_TOKENIZER"):
        candidates.append(Path(os.environ["HISTOVL_CONCH_TOKENIZER"]))
    spec = importlib.util.find_spec("conch")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "open_clip_custom" / "tokenizers" / TOKENIZER_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"CONCH's tokenizer file ({TOKENIZER_NAME}) was not found (looked in: "
        f"{', '.join(str(c) for c in candidates) or 'nowhere'}). Install CONCH "
        "(pip install git+https://github.com/mahmoodlab/CONCH) or set HISTOVL_CONCH_TOKENIZER to the file."
    )


def build_conch(request: LoadRequest) -> ConchEncoder:
    """Family builder: CONCH's architecture from the card's ``extra["model_cfg"]``, strict load."""
    card = request.card
    cfg = card.extra.get("model_cfg")
    if not isinstance(cfg, dict):
        raise ValueError(f"card {card.name!r} has no extra.model_cfg (CONCH's architecture config)")
    model = ConchModel(cfg)
    if request.weights is None:
        raise FileNotFoundError(f"no weights file for {card.name}")
    load_state_dict_strict(
        model,
        read_checkpoint(request.weights, trust_checkpoint=request.trust_checkpoint),
        source=str(request.weights),
        ignore=lambda k: k.startswith(_UNUSED_PREFIXES),
    )
    tokenizer = ConchTokenizer(find_tokenizer_file(card, request.asset_dir), card.context_length)
    return ConchEncoder(model.to(request.device), tokenizer, card, request.weights_id, cfg)


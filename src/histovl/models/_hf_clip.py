"""transformers `CLIPModel` family: PLIP and any `hf-clip:<DIR>` directory.

The architecture comes from the card's ``extra["hf_config"]`` (model directories) or the
directory's ``config.json``; weights are read by `histovl.models._checkpoint` (safetensors, or a
trusted pickle with ``weights_only=True``) and loaded strictly.

Prompts are padded to the longest one in the batch, not to 77 tokens: CLIP's text tower is
causal and pools at the first end-of-text token, so the padding cannot change the embedding
(tested against max-length padding) and short prompts cost a fraction of the compute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from histovl.models._checkpoint import load_state_dict_strict, read_checkpoint
from histovl.models._empty_init import build_then_load
from histovl.models._families import HF_CLIP_WEIGHT_FILES
from histovl.models.card import OPENAI_MEAN, OPENAI_STD, ModelCard
from histovl.models.encoder import Encoder
from histovl.models.registry import LoadRequest

WEIGHT_FILES = HF_CLIP_WEIGHT_FILES
TOKENIZER_SUBDIR = "tokenizer"
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


class HFClipEncoder(Encoder):
    """Wraps a transformers `CLIPModel` and its tokenizer."""

    def __init__(self, model: CLIPModel, tokenizer: Any, card: ModelCard, weights_id: str) -> None:
        super().__init__(card, weights_id)
        self.model = model.eval()
        self.tokenizer = tokenizer

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def tokenize(self, texts: Sequence[str], padding: str = "longest") -> dict[str, torch.Tensor]:
        """Token ids and attention mask; ``padding="max_length"`` pads to the full context."""
        batch = self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.card.context_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def _encode_text(self, texts: Sequence[str], padding: str = "longest") -> torch.Tensor:
        batch = self.tokenize(texts, padding=padding)
        pooled = self.model.text_model(**batch).pooler_output
        return self.model.text_projection(pooled)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def save_assets(self, out_dir: Path) -> dict[str, Any]:
        """Save the tokenizer next to the weights and embed the model config in the card."""
        self.tokenizer.save_pretrained(str(out_dir / TOKENIZER_SUBDIR))
        return {"hf_config": self.model.config.to_dict()}


def read_hf_config(card: ModelCard, asset_dir: Path | None) -> CLIPConfig:
    """The CLIP config from the card (model directories) or ``config.json`` in `asset_dir`."""
    if isinstance(card.extra.get("hf_config"), dict):
        return CLIPConfig.from_dict(dict(card.extra["hf_config"]))
    if asset_dir is None or not (asset_dir / "config.json").is_file():
        raise FileNotFoundError(f"no config.json for {card.name} in {asset_dir}: is it a CLIPModel directory?")
    return CLIPConfig.from_pretrained(str(asset_dir))


def find_weights(folder: Path) -> Path | None:
    """The weight file of a transformers directory, safetensors first."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def card_from_dir(name: str, folder: Path) -> ModelCard:
    """A card for a transformers CLIP directory, from its config and preprocessor config."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    pre_path = folder / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text(encoding="utf-8")) if pre_path.is_file() else {}
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    crop: Any = pre.get("crop_size", vision.get("image_size", 224))
    if isinstance(crop, dict):
        crop = crop.get("height") or crop.get("shortest_edge") or vision.get("image_size", 224)
    return ModelCard(
        name=name,
        family="hf_clip",
        architecture="CLIPModel",
        source=str(folder),
        image_size=int(crop),
        mean=tuple(pre.get("image_mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(pre.get("image_std", OPENAI_STD)),  # type: ignore[arg-type]
        interpolation=_RESAMPLE.get(int(pre.get("resample", 3)), "bicubic"),  # type: ignore[arg-type]
        resize_mode="shortest",
        context_length=int(text.get("max_position_embeddings", 77)),
        tokenizer=str(folder),
        embed_dim=int(config.get("projection_dim", 512)),
        text_causal=True,
    )


def build_hf_clip(request: LoadRequest) -> HFClipEncoder:
    """Family builder: `CLIPModel` from its config (no weights), then a strict load."""
    card = request.card
    config = read_hf_config(card, request.asset_dir)
    weights = request.weights or (find_weights(request.asset_dir) if request.asset_dir else None)
    if weights is None:
        raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} for {card.name} in {request.asset_dir}")
    checkpoint = read_checkpoint(weights, trust_checkpoint=request.trust_checkpoint)

    def load(model: CLIPModel, assign: bool) -> None:
        own = set(model.state_dict())
        load_state_dict_strict(
            model, checkpoint, source=str(weights), ignore=lambda k: k.endswith("position_ids") and k not in own,
            assign=assign,
        )

    # No random initialisation of weights the checkpoint replaces (histovl.models._empty_init).
    model = build_then_load(lambda: CLIPModel(config), load)
    if request.asset_dir is None:
        raise FileNotFoundError(f"no tokenizer directory for {card.name}: pass hf-clip:<DIR>")
    tok_dir = request.asset_dir / TOKENIZER_SUBDIR
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir if tok_dir.is_dir() else request.asset_dir))
    model.to(request.device)  # type: ignore[arg-type]  # transformers' stub for .to is too narrow
    return HFClipEncoder(model, tokenizer, card, request.weights_id)

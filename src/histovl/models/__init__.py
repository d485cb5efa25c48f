"""Model cards, the registry and one loader per family. Imports nothing of the pipeline.

Public API: `load_model`, `save_model_dir`, `list_models`, `get_card`, `model_statuses`,
`register_family`, `register_card`, `ModelCard`, `Encoder`, `Preprocess`.

Names load on first use (PEP 562): the registry, the cards and `model_statuses` import no torch,
so ``histovl models`` and ``histovl doctor`` answer without loading torch, open_clip or
transformers; `load_model` and `Encoder` load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from histovl._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from histovl.models._checkpoint import CheckpointMismatchError
    from histovl.models._hub import WeightsNotAvailableError
    from histovl.models.card import ModelCard
    from histovl.models.encoder import Encoder
    from histovl.models.loading import load_card, load_model, save_model_dir
    from histovl.models.preprocess import Preprocess
    from histovl.models.registry import (
        LoadRequest,
        get_card,
        list_families,
        list_models,
        register_card,
        register_family,
    )
    from histovl.models.status import ModelStatus, model_statuses, weights_present

#: public name -> module that defines it.
_EXPORTS: dict[str, str] = {
    "CheckpointMismatchError": "histovl.models._checkpoint",
    "WeightsNotAvailableError": "histovl.models._hub",
    "ModelCard": "histovl.models.card",
    "Encoder": "histovl.models.encoder",
    "load_card": "histovl.models.loading",
    "load_model": "histovl.models.loading",
    "save_model_dir": "histovl.models.loading",
    "Preprocess": "histovl.models.preprocess",
    "LoadRequest": "histovl.models.registry",
    "get_card": "histovl.models.registry",
    "list_families": "histovl.models.registry",
    "list_models": "histovl.models.registry",
    "register_card": "histovl.models.registry",
    "register_family": "histovl.models.registry",
    "ModelStatus": "histovl.models.status",
    "model_statuses": "histovl.models.status",
    "weights_present": "histovl.models.status",
}

__all__ = [
    "CheckpointMismatchError",
    "Encoder",
    "LoadRequest",
    "ModelCard",
    "ModelStatus",
    "Preprocess",
    "WeightsNotAvailableError",
    "get_card",
    "list_families",
    "list_models",
    "load_card",
    "load_model",
    "model_statuses",
    "register_card",
    "register_family",
    "save_model_dir",
    "weights_present",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

"""Model cards, the registry and one loader per family. Imports nothing of the pipeline.

Public API: `load_model`, `save_model_dir`, `list_models`, `get_card`, `model_statuses`,
`register_family`, `register_card`, `ModelCard`, `Encoder`, `Preprocess`.
"""

import importlib

from histovl.models._checkpoint import CheckpointMismatchError
from histovl.models._hub import WeightsNotAvailableError
from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder
from histovl.models.loading import (
    ModelStatus,
    load_card,
    load_model,
    model_statuses,
    save_model_dir,
    weights_present,
)
from histovl.models.preprocess import Preprocess
from histovl.models.registry import (
    LoadRequest,
    get_card,
    list_families,
    list_models,
    register_card,
    register_family,
)

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


def _register_bundled_families() -> None:
    """Plug in the bundled histovl-lite family (its module registers itself on import)."""
    try:
        importlib.import_module("histovl.models._lite")
    except ModuleNotFoundError as err:
        if err.name != "histovl.models._lite":
            raise


_register_bundled_families()

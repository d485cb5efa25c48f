"""Which registered models have their weights on this machine (`histovl models`, `histovl doctor`).

Reads only the registry's cards, the hub cache folder and local paths: it imports no torch and
never touches the network, so it answers in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from histovl.errors import UnknownNameError
from histovl.models._hub import HUB_PREFIX, weights_in_cache
from histovl.models.card import ModelCard
from histovl.models.registry import get_card, get_family, list_models


@dataclass(frozen=True)
class ModelStatus:
    """One row of `histovl models`."""

    name: str
    family: str
    source: str
    image_size: int
    context_length: int
    weights_present: bool
    licence: str


def weights_present(card: ModelCard, cache_dir: str | Path | None = None) -> bool:
    """Whether the card's weights are on this machine now (HF cache or local path; no network)."""
    try:
        family = get_family(card.family)
    except UnknownNameError:  # a card whose family plug-in is not installed
        return False
    if family.weights_present is not None:
        return bool(family.weights_present(card))
    if card.source.startswith(HUB_PREFIX):
        names = tuple(card.extra.get("weights_files", ())) or family.hub_files
        return weights_in_cache(card.source, names, cache_dir)
    return Path(card.source).exists()


def model_statuses(cache_dir: str | Path | None = None) -> list[ModelStatus]:
    """Every registered model with its source, sizes and whether its weights are present."""
    rows = []
    for name in list_models():
        card = get_card(name)
        rows.append(
            ModelStatus(
                name=name,
                family=card.family,
                source=card.source,
                image_size=card.image_size,
                context_length=card.context_length,
                weights_present=weights_present(card, cache_dir),
                licence=card.licence,
            )
        )
    return rows

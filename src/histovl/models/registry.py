"""The model registry: shipped cards (data files in `cards/`) and family plug-ins.

Two registries, both with an error on duplicates and close-match suggestions for unknown names
(docs/style.md, "Registries"):

* cards: ``name -> ModelCard``, read from ``cards/*.yaml`` on first use, extensible with
  `register_card`;
* families: ``family name -> FamilySpec``, i.e. how to build an `Encoder` from a card and local
  files. Families in this package register themselves when `histovl.models` is imported; the
  bundled ``histovl_lite`` family plugs in from its own module with `register_family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from histovl.errors import UnknownNameError, did_you_mean
from histovl.models._families import BUILTIN_FAMILIES
from histovl.models.card import ModelCard

if TYPE_CHECKING:  # the registry itself never imports torch
    from histovl.models.encoder import Encoder

LIST_HINT = "run `histovl models` to list models"


@dataclass(frozen=True)
class LoadRequest:
    """Everything a family builder needs to turn a card into an `Encoder`.

    Attributes:
        card: the model card (preprocessing, text settings, family-specific `extra`).
        weights: the local weight file to load, or None when the family finds it itself
            (e.g. in `asset_dir`, or bundled with a package).
        asset_dir: folder holding files that travel with the weights (tokenizer, configs):
            a hub snapshot, an `hf-clip:` directory or a `save_model_dir` directory.
        weights_id: identity of the weights, computed by the caller (sha256 or hub commit).
        device: torch device to put the model on.
        trust_checkpoint: allow pickle-based weight files (read with ``weights_only=True``).
    """

    card: ModelCard
    weights: Path | None
    asset_dir: Path | None
    weights_id: str
    device: str = "cpu"
    trust_checkpoint: bool = False


Builder = Callable[[LoadRequest], "Encoder"]


@dataclass(frozen=True)
class FamilySpec:
    """A model family: how to build it, and (optionally) how to tell if its weights are here.

    Attributes:
        name: the family name used in cards (``open_clip``, ``hf_clip``, ``conch``, ...).
        builder: ``LoadRequest -> Encoder``; must load weights strictly (`load_state_dict_strict`).
        weights_present: ``card -> bool`` for cards whose weights are not a hub repo or a path
            (e.g. weights shipped inside a pip package). None: the generic check is used.
        hub_files: weight file names to look for in a hub snapshot, safest first.
    """

    name: str
    builder: Builder
    weights_present: Callable[[ModelCard], bool] | None = None
    hub_files: tuple[str, ...] = field(default_factory=tuple)


_FAMILIES: dict[str, FamilySpec] = {}
_CARDS: dict[str, ModelCard] = {}
_SHIPPED_LOADED = False


def register_family(
    name: str,
    builder: Builder,
    *,
    weights_present: Callable[[ModelCard], bool] | None = None,
    hub_files: tuple[str, ...] = (),
    overwrite: bool = False,
) -> None:
    """Register how to build encoders of one family.

    Example:
        >>> def build_lite(request: LoadRequest) -> Encoder: ...  # doctest: +SKIP
        >>> register_family("histovl_lite", build_lite)  # doctest: +SKIP
    """
    if name in _FAMILIES and not overwrite:
        raise ValueError(f"model family {name!r} is already registered")
    _FAMILIES[name] = FamilySpec(name, builder, weights_present, tuple(hub_files))


def get_family(name: str) -> FamilySpec:
    """The registered family `name` (UnknownNameError with suggestions otherwise)."""
    if name not in _FAMILIES:
        raise UnknownNameError(
            f"unknown model family {name!r}.{did_you_mean(name, _FAMILIES)} "
            f"Known families: {sorted(_FAMILIES)}."
        )
    return _FAMILIES[name]


def list_families() -> list[str]:
    """Names of the registered families."""
    return sorted(_FAMILIES)


def register_card(card: ModelCard, *, overwrite: bool = False) -> None:
    """Add a card to the registry (an error on duplicates unless `overwrite`)."""
    _load_shipped_cards()
    _add_card(card, overwrite=overwrite, origin="register_card")


def get_card(name: str) -> ModelCard:
    """The registered card `name`.

    Raises:
        UnknownNameError: with close matches and how to list models.

    Example:
        >>> get_card("conch").image_size
        448
    """
    _load_shipped_cards()
    if name not in _CARDS:
        raise UnknownNameError(f"unknown model {name!r}.{did_you_mean(name, _CARDS)} ({LIST_HINT})")
    return _CARDS[name]


def list_models() -> list[str]:
    """Names of every registered model, sorted.

    Example:
        >>> "plip" in list_models()
        True
    """
    _load_shipped_cards()
    return sorted(_CARDS)


def read_card_file(path: str | Path) -> ModelCard:
    """Parse one YAML or JSON card file (unknown fields are an error, so typos surface)."""
    path = Path(path)
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"model card {path} must be a mapping of field: value")
    try:
        return ModelCard.from_dict(data)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"invalid model card {path}: {err}") from err


def _add_card(card: ModelCard, *, overwrite: bool, origin: str) -> None:
    if card.name in _CARDS and not overwrite:
        raise ValueError(f"model card {card.name!r} is registered twice (second from {origin})")
    _CARDS[card.name] = card


def _load_shipped_cards() -> None:
    global _SHIPPED_LOADED
    if _SHIPPED_LOADED:
        return
    _SHIPPED_LOADED = True
    folder = resources.files("histovl.models") / "cards"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            with resources.as_file(entry) as path:
                _add_card(read_card_file(path), overwrite=False, origin=str(path))


def lazy_builder(target: str) -> Builder:
    """A builder that imports ``module:function`` on its first call, so registering a family
    costs no import (the built-in families' modules pull in torch, open_clip, transformers)."""
    module, _, name = target.partition(":")

    def build(request: LoadRequest) -> Encoder:
        builder: Builder = getattr(importlib.import_module(module), name)
        return builder(request)

    build.__qualname__ = build.__name__ = f"lazy_builder({target})"
    return build


for _family in BUILTIN_FAMILIES:
    register_family(
        _family.name,
        lazy_builder(_family.builder),
        weights_present=_family.weights_present,
        hub_files=_family.hub_files,
    )

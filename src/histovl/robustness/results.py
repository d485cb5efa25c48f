"""The sweep's vocabulary, shared by the sweep and its writer: the fixed CSV columns, one
condition (corruption × level), and what a sweep returns.

Both `histovl.robustness.sweep` (which produces these) and `histovl.robustness.outputs` (which
writes them) import this module; neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from histovl.robustness.registry import BUILTIN_NAMESPACE, Corruption

CSV_COLUMNS = ("model", "corruption", "severity", "accuracy", "f1_macro", "f1_weighted", "ha@5", "ha@10")
"""The fixed columns of robustness.csv (docs/interfaces.md), in order."""


@dataclass
class RobustnessResult:
    """What a sweep produced (also written to `out`).

    Attributes:
        table: one row per model × mitigation × corruption × severity with `CSV_COLUMNS` plus
            ``mitigation``, ``n`` and the CI bounds (``<metric>_lo`` / ``<metric>_hi``).
        conditions: full metric dicts (with CIs) per row, in table order.
        encode_stats: per row, how many embeddings came from the cache and how many were encoded.
    """

    table: pd.DataFrame
    conditions: list[dict[str, Any]]
    encode_stats: list[dict[str, Any]]
    out: Path | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Condition:
    """One corruption at one level (``corruption is None``: the clean baseline)."""

    corruption: Corruption | None
    level: int

    @property
    def name(self) -> str:
        c = self.corruption
        return "none" if c is None else (c.name if c.namespace == BUILTIN_NAMESPACE else c.key)

    @property
    def parameter(self) -> float | None:
        """The level's raw parameter (sigma, factor, ...), None for the clean baseline."""
        if self.corruption is None:
            return None
        value = self.corruption.parameters.get(self.level)
        return None if value is None else float(value)


def levels_by_name(conditions: Sequence[Condition]) -> dict[str, list[int]]:
    """Corruption name -> its levels, in plan order (the clean baseline left out)."""
    out: dict[str, list[int]] = {}
    for c in conditions:
        if c.corruption is not None:
            out.setdefault(c.name, []).append(c.level)
    return out


@dataclass
class GalleryTile:
    """The report gallery's tile, decoded only when its figure is drawn (not memoised): a fully
    cached sweep then decodes no image and imports no torch."""

    load: Callable[[], Any]
    """Returns the tile: float [3, S, S] in [0, 1] at the model's input size."""
    key: str | None
    """The tile's content key (its corruptions are seeded from it)."""
    model: str
    """The weights id of the model whose preprocessing sized the tile."""

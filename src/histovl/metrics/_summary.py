"""The parts of a metrics block that single-label and multi-label evaluation share.

Both `classification_metrics` and `multilabel_metrics` return a JSON-ready dict that starts the
same way (``n``, the point estimates, ``ci95``, ``ci_skipped``, ``ci_level``, ``n_boot``,
``bootstrap_unit``, ``n_groups``) and report precision/recall/F1 per class or label the same
way; the key order is part of the output (``metrics.json`` is compared byte for byte).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from histovl.metrics.bootstrap import group_codes, percentile_interval


def replicate_intervals(
    replicates: Mapping[str, NDArray[np.float64]] | None, names: Sequence[str], ci: float
) -> tuple[dict[str, list[float | None]], dict[str, int]]:
    """The ``ci95`` and ``ci_skipped`` blocks of `names` from bootstrap replicates.

    ``replicates=None`` (bootstrap switched off, ``n_boot=0``) gives ``[None, None]`` intervals
    and no skipped resamples.
    """
    if replicates is None:
        return {m: [None, None] for m in names}, {m: 0 for m in names}
    intervals = {m: percentile_interval(replicates[m], ci) for m in names}
    return {m: iv.as_list() for m, iv in intervals.items()}, {m: iv.n_skipped for m, iv in intervals.items()}


def metrics_head(
    n: int,
    point: Mapping[str, float | None],
    intervals: dict[str, list[float | None]],
    skipped: dict[str, int],
    *,
    ci: float,
    n_boot: int,
    groups: ArrayLike | None,
) -> dict[str, Any]:
    """``n``, the point estimates and the bootstrap fields, in metrics.json order."""
    codes = group_codes(groups, n)
    return {
        "n": int(n),
        **point,
        "ci95": intervals,
        "ci_skipped": skipped,
        "ci_level": ci,
        "n_boot": int(n_boot),
        "bootstrap_unit": "group" if codes is not None else "item",
        "n_groups": None if codes is None else int(codes.max()) + 1,
    }


def precision_recall_f1(
    precision: NDArray[np.float64], recall: NDArray[np.float64], f1: NDArray[np.float64], c: int
) -> dict[str, float | None]:
    """One class's (or label's) precision, recall and F1, undefined ones as None."""
    return {"precision": none_if_nan(precision[c]), "recall": none_if_nan(recall[c]), "f1": none_if_nan(f1[c])}


def none_if_nan(value: Any) -> float | None:
    """float, or None for NaN (undefined metrics are JSON null, never NaN)."""
    f = float(value)
    return None if np.isnan(f) else f

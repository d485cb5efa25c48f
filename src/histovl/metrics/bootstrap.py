"""Percentile bootstrap confidence intervals, optionally resampling whole groups.

Every resample is represented as a vector of *multiplicities*: ``counts[i]`` says how many times
item ``i`` was drawn. For a statistic that does not depend on the order of items (all the metrics
in this package), evaluating it on ``np.repeat(items, counts)`` is the same as evaluating it on
the drawn sample, and a weighted implementation can use ``counts`` directly as sample weights.
Both the generic path (`bootstrap_ci`, which hands resampled arrays to any metric function) and the
vectorised classification path (`histovl.metrics.classification`) draw their resamples from
`resample_counts`, so for one seed they see exactly the same resamples.

Grouped bootstrap: with ``groups`` (patient or slide id per item) whole groups are drawn with
replacement and every item of a drawn group enters the resample once per draw. Items of one
patient are correlated, so resampling items would understate the uncertainty.

Undefined resamples (the metric function returns NaN, e.g. AUROC when a resample holds a single
class) are skipped and counted, never silently averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: resamples generated per chunk: bounds memory at chunk x n multiplicities.
DEFAULT_CHUNK = 128
#: at most this many multiplicities per chunk (x 8 bytes), whatever ``chunk`` asks for.
MAX_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class ConfidenceInterval:
    """A percentile bootstrap interval.

    Attributes:
        low, high: interval ends, or None when no resample gave a defined value.
        level: nominal coverage (0.95 for a 95% interval).
        n_valid: resamples where the metric was defined (used for the percentiles).
        n_skipped: resamples where it was undefined (NaN) and therefore left out.
    """

    low: float | None
    high: float | None
    level: float
    n_valid: int
    n_skipped: int

    def as_list(self) -> list[float | None]:
        """``[low, high]`` as written to ``metrics.json`` (``ci95``)."""
        return [self.low, self.high]


def group_codes(groups: ArrayLike | None, n: int) -> NDArray[np.int64] | None:
    """Map group ids to codes 0..G-1; a missing id (None/NaN/"") makes its item its own group.

    Raises:
        ValueError: when ``groups`` does not have one entry per item.
    """
    if groups is None:
        return None
    values = list(np.asarray(groups, dtype=object).ravel())
    if len(values) != n:
        raise ValueError(
            f"groups has {len(values)} entries but there are {n} items; pass one group id per item"
        )
    codes: dict[Any, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, value in enumerate(values):
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            key: Any = ("__singleton__", i)
        else:
            key = value
        out[i] = codes.setdefault(key, len(codes))
    return out


def resample_counts(
    n: int,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[NDArray[np.int64]]:
    """Yield bootstrap multiplicities in chunks of shape ``[<=chunk, n]``.

    Chunks are capped at ``MAX_CHUNK_ELEMENTS`` entries (64 MiB of int64) so a million items
    does not allocate gigabytes; the resamples do not depend on the chunk size.

    Without groups each resample draws ``n`` items uniformly with replacement. With groups it
    draws ``G`` groups with replacement (G = number of distinct groups) and gives every item the
    multiplicity of its group, so resample sizes vary with the sizes of the drawn groups.

    Example:
        >>> chunks = list(resample_counts(4, n_boot=3, seed=0))
        >>> chunks[0].shape, int(chunks[0].sum(axis=1)[0])
        ((3, 4), 4)
    """
    if n <= 0:
        raise ValueError("cannot bootstrap an empty data set (n = 0)")
    codes = group_codes(groups, n)
    rng = np.random.default_rng(seed)
    n_units = n if codes is None else int(codes.max()) + 1
    chunk = max(1, min(chunk, MAX_CHUNK_ELEMENTS // max(n, n_units)))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        draws = rng.integers(0, n_units, size=(size, n_units))
        offsets = (np.arange(size, dtype=np.int64) * n_units)[:, None]
        unit_counts = np.bincount((draws + offsets).ravel(), minlength=size * n_units).reshape(
            size, n_units
        )
        yield unit_counts if codes is None else unit_counts[:, codes]
        done += size


def percentile_interval(values: ArrayLike, level: float = 0.95) -> ConfidenceInterval:
    """Percentile interval of bootstrap replicates; NaN replicates are skipped and counted."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {level}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    skipped = int(arr.size - finite.size)
    if finite.size == 0:
        return ConfidenceInterval(None, None, level, 0, skipped)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(low), float(high), level, int(finite.size), skipped)


def bootstrap_cis(
    metric_fn: Callable[..., Mapping[str, float]],
    *arrays: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, ConfidenceInterval]:
    """Like `bootstrap_ci` for a function that returns several named metrics at once.

    Computing all metrics from one resample shares the work (one confusion matrix for accuracy,
    balanced accuracy and both F1 scores).
    """
    replicates = bootstrap_replicates(metric_fn, *arrays, groups=groups, n_boot=n_boot, seed=seed)
    return {name: percentile_interval(vals, ci) for name, vals in replicates.items()}


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``.

    Each resample indexes every array along its first axis with the same items. ``metric_fn``
    returns NaN where the metric is undefined for a resample; such resamples are skipped and
    counted in ``n_skipped``. Exceptions propagate (they signal a bug, not an undefined value).

    Args:
        metric_fn: order-independent statistic of the arrays (e.g. an sklearn metric).
        *arrays: arrays with one row per item.
        groups: optional group id per item (patient/slide); whole groups are resampled.
        n_boot: number of resamples.
        seed: seed of the resampling; the same seed gives the same interval.
        ci: nominal coverage of the interval.

    Example:
        >>> import numpy as np
        >>> from sklearn.metrics import accuracy_score
        >>> y = np.array([0, 1, 1, 0, 1, 1, 0, 1]); p = np.array([0, 1, 0, 0, 1, 1, 1, 1])
        >>> iv = bootstrap_ci(accuracy_score, y, p, n_boot=200, seed=0)
        >>> iv.low <= accuracy_score(y, p) <= iv.high
        True
    """
    result = bootstrap_cis(
        lambda *a: {"value": metric_fn(*a)}, *arrays, groups=groups, n_boot=n_boot, seed=seed, ci=ci
    )
    return result["value"]


def bootstrap_replicates(
    metric_fn: Callable[..., Mapping[str, float]],
    *arrays: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, NDArray[np.float64]]:
    """The raw replicate values (NaN where undefined) of a multi-metric function, per metric."""
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"arrays must have the same number of rows, got {[len(a) for a in arrs]}")
    values: dict[str, list[float]] = {}
    item_index = np.arange(n)
    for counts in resample_counts(n, groups=groups, n_boot=n_boot, seed=seed):
        for row in counts:
            idx = np.repeat(item_index, row)
            out = metric_fn(*(a[idx] for a in arrs))
            for name, value in out.items():
                values.setdefault(name, []).append(_as_float(value))
    return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def _as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def interval_dict(
    intervals: Mapping[str, ConfidenceInterval], names: Sequence[str]
) -> dict[str, list[float | None]]:
    """``{metric: [low, high]}`` for the names given (the ``ci95`` block of metrics.json)."""
    return {name: intervals[name].as_list() for name in names}

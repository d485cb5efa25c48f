"""Every pair of compared runs: paired bootstrap differences, McNemar, DeLong, Holm.

For runs r1..rk the pairs are (ri, rj) with i < j, in input order; "difference" is always
``ri - rj``. McNemar's exact test is on accuracy (the items each run gets right); DeLong's test is
on AUROC and only for binary tasks (scores of the second class). With more than two runs each
test's p-values are Holm-adjusted across the pairs (``p_holm``), one family per test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from histovl.compare.runs import LoadedRun
from histovl.compare.stats import (
    PairedDifference,
    delong_test,
    discordant_counts,
    holm,
    mcnemar_exact,
    paired_bootstrap_differences,
)

#: comparison.csv columns, in order.
COMPARISON_COLUMNS = (
    "run_a", "run_b", "metric", "value_a", "value_b", "difference", "ci_low", "ci_high",
    "test", "statistic", "p_value", "p_holm",
)


@dataclass
class PairResult:
    """One pair's statistics (p_holm filled in once every pair is known)."""

    a: str
    b: str
    differences: dict[str, PairedDifference]
    mcnemar: dict[str, Any]
    delong: dict[str, Any] | None


def compare_pairs(
    runs: Sequence[LoadedRun], y: np.ndarray, groups: Sequence[str | None] | None, *,
    metrics: Sequence[str], n_boot: int, seed: int, n_bins: int,
) -> list[PairResult]:
    """The statistics of every pair (i < j), Holm-adjusted across pairs when there are > 2 runs."""
    group_array = None if groups is None else np.array(groups, dtype=object)
    pairs = []
    for ra, rb in combinations(runs, 2):
        diffs = paired_bootstrap_differences(
            y, ra.probs, rb.probs, metrics, groups=group_array, n_boot=n_boot, seed=seed, n_bins=n_bins
        )
        correct_a, correct_b = ra.probs.argmax(axis=1) == y, rb.probs.argmax(axis=1) == y
        n_ab, n_ba = discordant_counts(correct_a, correct_b)
        mcnemar = {"a_right_b_wrong": n_ab, "a_wrong_b_right": n_ba, "p": mcnemar_exact(correct_a, correct_b)}
        pairs.append(PairResult(ra.name, rb.name, diffs, mcnemar, _delong(y, ra, rb)))
    _adjust(pairs, len(runs))
    return pairs


def _delong(y: np.ndarray, ra: LoadedRun, rb: LoadedRun) -> dict[str, Any] | None:
    """DeLong on the second class's scores, for two-class runs with both classes present."""
    if ra.probs.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    diff, p = delong_test((y == 1).astype(np.int64), ra.probs[:, 1], rb.probs[:, 1])
    return {"positive_class": ra.class_names[1], "auroc_difference": diff, "p": p}


def _adjust(pairs: list[PairResult], n_runs: int) -> None:
    """``p_holm`` per test across pairs (equal to ``p`` with two runs: a family of one)."""
    families = [[p.mcnemar for p in pairs], [p.delong for p in pairs if p.delong is not None]]
    for family in families:
        if not family:
            continue
        raw = np.array([np.nan if t["p"] is None else t["p"] for t in family], dtype=np.float64)
        adjusted = holm(raw) if n_runs > 2 else raw
        for test, value in zip(family, adjusted, strict=True):
            test["p_holm"] = None if not np.isfinite(value) else float(value)


def comparison_frame(pairs: Sequence[PairResult]) -> pd.DataFrame:
    """comparison.csv: one row per (pair, metric), the test and its p-values on the rows it
    concerns (accuracy: McNemar; auroc_macro of a binary task: DeLong)."""
    rows = []
    for pair in pairs:
        for metric, d in pair.differences.items():
            test, statistic, p, p_holm = _test_for(pair, metric)
            rows.append({
                "run_a": pair.a, "run_b": pair.b, "metric": metric,
                "value_a": _num(d.a), "value_b": _num(d.b), "difference": _num(d.difference),
                "ci_low": _num(d.low), "ci_high": _num(d.high),
                "test": test, "statistic": statistic, "p_value": p, "p_holm": p_holm,
            })
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _test_for(pair: PairResult, metric: str) -> tuple[str | None, str | None, float | None, float | None]:
    if metric == "accuracy":
        m = pair.mcnemar
        return ("mcnemar_exact", f"discordant {m['a_right_b_wrong']}/{m['a_wrong_b_right']}",
                _num(m["p"]), _num(m.get("p_holm")))
    if metric == "auroc_macro" and pair.delong is not None:
        d = pair.delong
        return "delong", f"positive class {d['positive_class']}", _num(d["p"]), _num(d.get("p_holm"))
    return None, None, None, None


def summary_lines(table: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "auroc_macro", "ece")) -> list[str]:
    """One line per pair and metric: ``a − b  metric: +d [95% CI lo, hi]  p = ... (test)``."""
    lines = []
    for row in table[table["metric"].isin(list(metrics))].itertuples(index=False):
        diff = _num(row.difference)
        lo, hi, p = _num(row.ci_low), _num(row.ci_high), _num(row.p_value)
        ci = f" [95% CI {lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else ""
        test = f"  p = {p:.4g} ({row.test})" if p is not None else ""
        shown = "n/a" if diff is None else f"{diff:+.4f}"
        lines.append(f"{row.run_a} − {row.run_b}  {row.metric}: {shown}{ci}{test}")
    return lines


def pairs_json(pairs: Sequence[PairResult]) -> list[dict[str, Any]]:
    """The ``pairs`` block of metrics.json (NaN as null)."""
    return [
        {
            "run_a": p.a, "run_b": p.b,
            "differences": {
                m: {"a": _num(d.a), "b": _num(d.b), "difference": _num(d.difference),
                    "ci95": [_num(d.low), _num(d.high)], "ci_skipped": d.n_skipped}
                for m, d in p.differences.items()
            },
            "mcnemar": {k: _num(v) if isinstance(v, float) else v for k, v in p.mcnemar.items()},
            "delong": None if p.delong is None else {k: _num(v) if isinstance(v, float) else v for k, v in p.delong.items()},
        }
        for p in pairs
    ]


def _num(value: Any) -> float | None:
    """float, or None for None/NaN (JSON null)."""
    if value is None:
        return None
    f = float(value)
    return None if not np.isfinite(f) else f

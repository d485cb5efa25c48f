"""Every pair of compared runs: paired bootstrap differences, McNemar, DeLong, Holm.

For runs r1..rk the pairs are (ri, rj) with i < j, in input order; "difference" is always
``ri - rj``. McNemar's exact test is on accuracy (the items each run gets right); DeLong's test is
on AUROC: for binary tasks on the second class's scores (the ``auroc_macro`` row), for more than
two classes one vs rest per class (rows ``auroc_ovr:<class>``; the macro AUROC keeps its paired
bootstrap interval). With more than two runs each test's p-values are Holm-adjusted across the
pairs (``p_holm``), one family per test; the one-vs-rest tests are one family over every pair and
class, adjusted also for two runs.
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
    delong_one_vs_rest,
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
    #: more than two classes: DeLong one vs rest per class (`delong_classes`), else None
    delong_classes: list[dict[str, Any]] | None = None


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
        pairs.append(PairResult(ra.name, rb.name, diffs, mcnemar, _delong(y, ra, rb), delong_classes(y, ra, rb)))
    _adjust(pairs, len(runs))
    return pairs


def _delong(y: np.ndarray, ra: LoadedRun, rb: LoadedRun) -> dict[str, Any] | None:
    """DeLong on the second class's scores, for two-class runs with both classes present."""
    if ra.probs.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    diff, p = delong_test((y == 1).astype(np.int64), ra.probs[:, 1], rb.probs[:, 1])
    return {"positive_class": ra.class_names[1], "auroc_difference": diff, "p": p}


def delong_classes(y: np.ndarray, ra: LoadedRun, rb: LoadedRun) -> list[dict[str, Any]] | None:
    """More than two classes: DeLong's test for each class one vs rest (its score against the
    rest; the per-class AUROCs ``auroc_macro`` averages), with a normal-theory 95% CI of the
    difference. Classes absent from the labels (or holding every image) have no test."""
    if ra.probs.shape[1] <= 2:
        return None
    tests = []
    for name, res in zip(ra.class_names, delong_one_vs_rest(y, ra.probs, rb.probs), strict=True):
        if res is None:
            continue
        lo, hi = res.ci95()
        tests.append({"class": name, "auroc_a": res.auroc_a, "auroc_b": res.auroc_b,
                      "auroc_difference": res.difference, "se": res.se, "ci95": [lo, hi], "p": res.p})
    return tests


def _adjust(pairs: list[PairResult], n_runs: int) -> None:
    """``p_holm`` per test across pairs (equal to ``p`` with two runs: a family of one). The
    one-vs-rest DeLong tests form one family over every (pair, class), adjusted also for two runs."""
    families = [[p.mcnemar for p in pairs], [p.delong for p in pairs if p.delong is not None]]
    per_class = [t for p in pairs for t in (p.delong_classes or [])]
    for family, always in ((families[0], False), (families[1], False), (per_class, True)):
        if not family:
            continue
        raw = np.array([np.nan if t["p"] is None else t["p"] for t in family], dtype=np.float64)
        adjusted = holm(raw) if (n_runs > 2 or always) else raw
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
        for t in pair.delong_classes or []:
            rows.append({
                "run_a": pair.a, "run_b": pair.b, "metric": f"auroc_ovr:{t['class']}",
                "value_a": _num(t["auroc_a"]), "value_b": _num(t["auroc_b"]),
                "difference": _num(t["auroc_difference"]), "ci_low": _num(t["ci95"][0]), "ci_high": _num(t["ci95"][1]),
                "test": "delong_ovr", "statistic": f"{t['class']} vs rest", "p_value": _num(t["p"]),
                "p_holm": _num(t.get("p_holm")),
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
            "delong_one_vs_rest": None if p.delong_classes is None else [
                {k: _num(v) if isinstance(v, float) else ([_num(x) for x in v] if isinstance(v, list) else v)
                 for k, v in t.items()} for t in p.delong_classes],
        }
        for p in pairs
    ]


def _num(value: Any) -> float | None:
    """float, or None for None/NaN (JSON null)."""
    if value is None:
        return None
    f = float(value)
    return None if not np.isfinite(f) else f

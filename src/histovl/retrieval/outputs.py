"""What a retrieval evaluation writes: the predictions table and the HTML report with a gallery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.reports import GridItem, Report
from histovl.retrieval.evaluation import FAMILIES, FIXED_METRICS
from histovl.retrieval.search import SearchResult

VOTE_K = 5
"""The cut-off of the k-NN vote written as ``prediction`` (matches ``mmv@5``)."""


def _relative(path: str, root: str | Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def retrieval_predictions_frame(
    paths: Sequence[str],
    labels: Sequence[str],
    result: SearchResult,
    *,
    class_names: Sequence[str],
    groups: Sequence[str | None] | None = None,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """``predictions.csv``: one row per query with its top-K paths, labels and scores.

    Columns: ``path``, ``label``, [``group``], ``prediction`` (majority class of the top 5, ties to
    the class ranked first, as in mMV@5), ``score:<class>`` (that class's share of the top-5
    votes), then ``top<j>_path``, ``top<j>_label``, ``top<j>_score`` for j = 1..K.
    """
    from histovl.retrieval.metrics import majority_vote

    names = [str(c) for c in class_names]
    code = {c: i for i, c in enumerate(names)}
    ids = result.ids
    vote_k = min(VOTE_K, ids.shape[1])
    ret_codes = np.where(ids >= 0, np.array([code[labels[j]] for j in ids.ravel().clip(0)]).reshape(ids.shape), -1)
    winner = majority_vote(ret_codes, vote_k)
    frame = pd.DataFrame({"path": [_relative(p, root) for p in paths], "label": list(labels)})
    if groups is not None:
        frame["group"] = list(groups)
    frame["prediction"] = [names[w] if w >= 0 else "" for w in winner]
    top = ret_codes[:, :vote_k]
    for c, name in enumerate(names):
        frame[f"score:{name}"] = (top == c).sum(axis=1) / vote_k
    columns: dict[str, list[Any]] = {}
    for j in range(ids.shape[1]):
        col = ids[:, j]
        columns[f"top{j + 1}_path"] = [_relative(paths[i], root) if i >= 0 else "" for i in col]
        columns[f"top{j + 1}_label"] = [labels[i] if i >= 0 else "" for i in col]
        columns[f"top{j + 1}_score"] = [float(s) if i >= 0 else None for i, s in zip(col, result.scores[:, j], strict=True)]
    return pd.concat([frame, pd.DataFrame(columns)], axis=1)


def pick_gallery_queries(labels: Sequence[str], n: int, seed: int) -> list[int]:
    """Up to `n` query positions, taking classes in turn (a fixed seed gives the same picks)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i in rng.permutation(len(labels)).tolist():
        by_class.setdefault(labels[i], []).append(i)
    picks: list[int] = []
    queues = [by_class[c] for c in sorted(by_class)]
    while len(picks) < n and any(queues):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    return picks


def build_retrieval_report(
    metrics: Mapping[str, Any],
    *,
    paths: Sequence[str],
    labels: Sequence[str],
    result: SearchResult,
    run_record: Mapping[str, Any] | None,
    title: str = "Image retrieval (leave-one-out)",
    subtitle: str = "",
    n_gallery: int = 8,
    gallery_k: int = 5,
    seed: int = 0,
) -> Report:
    """Summary table with CIs, metrics at every cut-off, a gallery of queries, provenance.

    In the gallery each row is one query (unmarked, first) followed by its top results, framed
    green when the result has the query's class and red when not.
    """
    report = Report(title, subtitle=subtitle)
    unit = metrics.get("bootstrap_unit", "item")
    report.add_metrics(
        metrics,
        names=[*FIXED_METRICS, "n"],
        title="Summary",
        caption=(
            f"95% percentile bootstrap intervals over {metrics.get('n_boot')} resamples of {unit}s. "
            "HA@K: all top-K share the query's class; recall@K: any does; mMV@K: their majority "
            "does; mAP@K: average precision normalised by min(K, relevant items)."
        ),
    )
    ks = sorted({int(key.split("@")[1]) for key in metrics if "@" in key and key.split("@")[0] in FAMILIES})
    table = pd.DataFrame(
        [{"k": k, **{f: metrics.get(f"{f}@{k}") for f in FAMILIES}} for k in ks]
    )
    report.add_table(table, title="Every metric at every cut-off")
    if metrics.get("exclusion"):
        report.add_text(str(metrics["exclusion"]), title="What a query may not retrieve")
    for q in pick_gallery_queries(labels, n_gallery, seed):
        items = [GridItem(paths[q], f"query: {labels[q]}", None)]
        for j in range(min(gallery_k, result.ids.shape[1])):
            i = int(result.ids[q, j])
            if i < 0:
                continue
            items.append(
                GridItem(paths[i], f"#{j + 1} {labels[i]} ({result.scores[q, j]:.3f})", labels[i] == labels[q])
            )
        report.add_image_grid(items, title=f"Query {Path(paths[q]).name} ({labels[q]})")
    if run_record is not None:
        report.add_provenance(run_record)
    return report

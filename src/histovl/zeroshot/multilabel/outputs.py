"""Shared multi-label evaluation outputs (used by `histovl multilabel` and `histovl cmm`).

metrics.json (``n``, ``macc``, ``f1_macro``, ``f1_micro``, ``exact_match``, ``per_label``,
``ci95``), predictions.csv (``path``, ``labels``, ``predictions``, ``score:<label>``), run.json
and report.html, all through `histovl.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.data.records import ImageRecord, ImageSet

SUMMARY = ("macc", "f1_macro", "f1_micro", "exact_match")


def label_matrix(records: Sequence[ImageRecord], class_names: Sequence[str]) -> np.ndarray:
    """Binary [N, C] matrix of the records' label sets in `class_names` order."""
    index = {c: i for i, c in enumerate(class_names)}
    y = np.zeros((len(records), len(class_names)), dtype=np.int64)
    for row, rec in enumerate(records):
        for lab in rec.label_set:
            if lab not in index:
                raise ValueError(f"{rec.path} has label {lab!r}, which is not in the prompt set {list(class_names)}")
            y[row, index[lab]] = 1
    return y


def require_multilabel(image_set: ImageSet) -> None:
    """Refuse single-label data with a message that says where it belongs."""
    if not image_set.multilabel:
        raise ValueError(
            f"{image_set.source} is single-label (class folders or a `label` column); multi-label "
            "commands need a manifest with a `labels` column (';'-separated). Build one with "
            "`histovl data mosaic`, or use `histovl zeroshot` for single-label data."
        )


def evaluate_multilabel(
    records: Sequence[ImageRecord],
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """`histovl.metrics.multilabel_metrics` on scores thresholded at 0.5 (the paper's eq. 6)."""
    from histovl.metrics import multilabel_metrics

    y_true = label_matrix(records, class_names)
    groups = [r.group for r in records]
    has_groups = any(g is not None for g in groups)
    metrics: dict[str, Any] = multilabel_metrics(
        y_true, scores, list(class_names), threshold=0.5,
        groups=np.array([str(g) for g in groups]) if has_groups else None, n_boot=n_boot, seed=seed,
    )
    return metrics


def write_multilabel_outputs(
    out: str | Path,
    *,
    title: str,
    command: str,
    metrics: Mapping[str, Any],
    records: Sequence[ImageRecord],
    root: Path,
    predictions: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    models: Sequence[Any],
    prompt_set: Any | None,
    seed: int,
    inputs: Sequence[Path],
    skipped: Sequence[Mapping[str, str]],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write the four standard outputs into `out`; returns the predictions table."""
    from histovl.reports import (
        Report,
        build_run_record,
        multilabel_predictions_frame,
        per_class_bar_figure,
        write_evaluation_outputs,
    )

    frame = multilabel_predictions_frame(
        [r.path for r in records], [r.label_set for r in records], predictions, scores, class_names,
        root=root,
    )
    record = build_run_record(
        command=command, config=config, models=models, prompt_set=prompt_set, seed=seed,
        inputs=inputs, skipped=skipped, extra=extra,
    )
    report = Report(title, subtitle=f"{len(records)} images, {len(class_names)} labels")
    report.add_metrics(metrics, names=[k for k in SUMMARY if k in metrics] + ["n"], title="Summary",
                       caption="mAcc = mean over labels of per-label accuracy with sigma(logit) >= 0.5 "
                               "(HistoCLIP eq. 6); 95% bootstrap intervals.")
    per_label = metrics.get("per_label") or {}
    if isinstance(per_label, Mapping) and per_label:
        table = pd.DataFrame([{"label": k, **{m: v for m, v in dict(v).items() if not isinstance(v, list | dict)}}
                              for k, v in per_label.items()])
        report.add_table(table, title="Per label")
        f1 = {k: dict(v).get("f1") for k, v in per_label.items()}
        if all(x is None or isinstance(x, int | float) for x in f1.values()):
            report.add_figure("f1_per_label", per_class_bar_figure(f1), title="F1 per label")
    if extra and "timing_s" in extra:
        report.add_table(pd.DataFrame([extra["timing_s"]]), title="Time (seconds)")
    report.add_provenance(record)
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=record, report=report)
    return frame

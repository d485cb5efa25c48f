"""Writing the zero-shot and fusion-ablation output folders through `histovl.reports`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histovl._io import atomic_open
from histovl.outputs_guard import staged_folder
from histovl.reports import (
    Report,
    Table,
    build_classification_report,
    build_run_record,
    predictions_frame,
    write_evaluation_outputs,
)
from histovl.zeroshot.classifier import TextClassifier

if TYPE_CHECKING:
    import pandas as pd

    from histovl.models.encoder import Encoder


def write_zeroshot_outputs(
    out_dir: Path,
    *,
    command: str,
    metrics: dict[str, Any],
    predictions: Table,
    encoders: Sequence[Encoder],
    classifiers: Sequence[TextClassifier],
    prompt_set: Any,
    image_set: Any,
    records: Sequence[Any],
    probs: np.ndarray,
    skipped: list[dict[str, str]],
    seed: int,
    config: dict[str, Any],
    sensitivity: Any = None,
) -> None:
    """metrics.json, predictions.csv, run.json (with the exact prompts used) and report.html;
    with a prompt-sensitivity result also prompt_sensitivity.csv and its report section."""
    record = build_run_record(
        command=command,
        config=config,
        models=[e.card for e in encoders],
        prompt_set=prompt_set,
        seed=seed,
        inputs=[str(p) for p in image_set.paths],
        skipped=skipped,
        extra={
            "weights_ids": [e.weights_id for e in encoders],
            "logit_scales": [c.logit_scale for c in classifiers],
            "prompts_used": [c.prompts for c in classifiers],
        },
    )
    names = ", ".join(e.card.name for e in encoders)
    report = build_classification_report(
        f"Zero-shot classification — {names}",
        metrics,
        predictions,
        record,
        image_root=image_set.root,
        subtitle=f"prompt set {getattr(prompt_set, 'name', '?')} · data {image_set.source} · n = {metrics['n']}",
        figure_cache=config.get("cache"),  # the run's cache folder (None with --no-cache)
    )
    extra = None
    if sensitivity is not None:
        from histovl.zeroshot.sensitivity import write_sensitivity_section

        write_sensitivity_section(report, sensitivity)
        extra = {"prompt_sensitivity.csv": sensitivity.table}
    write_evaluation_outputs(out_dir, metrics=metrics, predictions=predictions, run_record=record, report=report,
                             extra_tables=extra)


def write_ablation_outputs(out_dir: Path, **parts: Any) -> None:
    """ablation.csv plus the standard outputs, staged: the folder replaces `out_dir` as a whole."""
    with staged_folder(out_dir) as stage:
        _write_ablation_outputs(stage, **parts)


def _write_ablation_outputs(
    out_dir: Path,
    *,
    table: pd.DataFrame,
    metrics: list[dict[str, Any]],
    best: tuple[str, str],
    best_probs: np.ndarray,
    records: Sequence[Any],
    image_set: Any,
    encoders: Sequence[Encoder],
    prompt_set: Any,
    cost: Any,
    seed: int,
    config: dict[str, Any],
) -> None:
    """ablation.csv plus the standard outputs; predictions.csv holds the best configuration's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "ablation.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False)
    class_names = list(prompt_set.classes)
    preds = predictions_frame(
        [r.path for r in records], [r.label for r in records], best_probs, class_names, root=image_set.root
    )
    record = build_run_record(
        command="ablate-fusion", config=config, models=[e.card for e in encoders], prompt_set=prompt_set,
        seed=seed, inputs=[str(p) for p in image_set.paths], extra={"cost": vars(cost), "best": list(best)},
    )
    report = Report(
        "Fusion ablation — " + ", ".join(e.card.name for e in encoders),
        subtitle=f"prompt set {getattr(prompt_set, 'name', '?')} · n = {len(records)}",
    )
    report.add_table(table, title="Ablation (HistoAlign Table III layout)")
    report.add_text(
        f"Cost: {cost.image_passes} image passes ({cost.images_encoded} images encoded, "
        f"{cost.images_from_cache} from cache), {cost.prompts_encoded} distinct prompts encoded. "
        f"Best by macro F1: {best[0]} — {best[1]}.",
        title="Cost and best configuration",
    )
    report.add_provenance(record)
    summary = {"rows": metrics, "best": {"configuration": best[0], "alignment": best[1]}, "cost": vars(cost)}
    write_evaluation_outputs(out_dir, metrics=summary, predictions=preds, run_record=record, report=report)

"""`histovl ablate-fusion`: HistoAlign's Table III for any set of encoders.

The run is the zero-shot steps (`histovl.zeroshot.steps`) with its own middle: score every encoder
on the images all of them could read (`histovl.zeroshot.multi_encoder.score_encoders`), list the
configurations (`ablation_rows`), evaluate each (`_evaluate_rows`), and write the table with the
standard outputs (`histovl.zeroshot.outputs.write_ablation_outputs`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from histovl.models.encoder import Encoder
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.reproducibility import seed_everything
from histovl.zeroshot.fusion import EncoderScores
from histovl.zeroshot.multi_encoder import FusionCost, ablation_rows, score_encoders
from histovl.zeroshot.steps import (
    classification_metrics_for,
    kept_records,
    load_encoders,
    load_labelled_inputs,
)
from histovl.zeroshot.views import DEFAULT_VIEWS

ABLATION_COLUMNS = ["configuration", "alignment", "accuracy", "precision", "recall", "f1_macro", "f1_weighted", "auroc"]
_CI_KEYS = ("accuracy", "f1_macro", "f1_weighted", "auroc_macro")


@dataclass(frozen=True)
class FusionAblationConfig:
    """What `histovl ablate-fusion` computes (the run options are in `RunOptions`).

    Attributes:
        views: image views for the many-to-many rows.
        aggregator: how many-to-many aggregates the views x prompts similarities.
        allow_cross_pairs: also score encoder A's images against encoder B's texts.
        allow_missing_classes: allow prompt-set classes with no images.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    views: tuple[str, ...] = DEFAULT_VIEWS
    aggregator: str = "mean"
    allow_cross_pairs: bool = False
    allow_missing_classes: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))


@dataclass
class AblationResult:
    """The ablation table (fixed columns first, then CI columns) and per-row metrics."""

    table: pd.DataFrame
    metrics: list[dict[str, Any]]
    cost: FusionCost
    out: Path | None


def ablate_fusion(
    models: Sequence[str | Encoder], data: PathArg | Any, prompts: PathArg | Any,
    out: PathArg | None = None, config: FusionAblationConfig | None = None,
    options: RunOptions | None = None, **overrides: Any,
) -> AblationResult:
    """Score every single encoder (one-to-one, prompt ensemble, many-to-many), cross pairs when
    allowed, and the joint and many-to-many fusions, on the same images, with 95% CIs.

    Each encoder is loaded once and each view of each image encoded once (cached), so every
    configuration reuses the same embeddings.

    Args:
        models: model specs or loaded `Encoder` objects (one or more).
        data: a class folder, a CSV manifest, or an `ImageSet` (single-label).
        prompts: a shipped prompt-set name, a YAML path, or a `PromptSet`.
        out: output folder; None computes without writing.
        config: what to compute (`FusionAblationConfig`).
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``views=("identity", "hflip")``, ``n_boot=0``).

    Example:
        >>> ablate_fusion(["histovl-lite", "plip"], "tiles/", "breakhis-v1", "runs/abl")  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, FusionAblationConfig, options)
    if len(models) < 1:
        raise ValueError("give at least one --model")
    seed_everything(opts.seed)
    prompt_set, image_set, class_names = load_labelled_inputs(
        data, prompts, opts, allow_missing_classes=cfg.allow_missing_classes
    )
    encoders = load_encoders(models, opts)
    cost = FusionCost()
    aligned = score_encoders(
        encoders, image_set.paths, prompt_set, views=cfg.views, aggregator=cfg.aggregator, many_to_many=True,
        options=opts, cost=cost,
    )
    _tell_apart(aligned.scores, models)
    records = kept_records(image_set, aligned.ok)
    configs = ablation_rows(encoders, aligned.scores, aligned.identity, prompt_set, allow_cross_pairs=cfg.allow_cross_pairs)
    rows, all_metrics = _evaluate_rows(configs, records, class_names, opts)
    table = pd.DataFrame(rows)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.zeroshot.outputs import write_ablation_outputs

        best = max(range(len(configs)), key=lambda i: rows[i]["f1_macro"] if rows[i]["f1_macro"] is not None else -1)
        write_ablation_outputs(
            out_dir, table=table, metrics=all_metrics, best=(configs[best][0], configs[best][1]),
            best_probs=configs[best][2], records=records, image_set=image_set, encoders=encoders,
            prompt_set=prompt_set, cost=cost, seed=opts.seed,
            config={**config_record(cfg), **opts.record(), "data": str(image_set.source)},
        )
    return AblationResult(table, all_metrics, cost, out_dir)


def _tell_apart(scores: Sequence[EncoderScores], models: Sequence[Any]) -> None:
    """Two encoders of one name (e.g. two fine-tunes) get distinct row names: the model folder's
    name where the spec is a path, else their position."""
    names = [s.name for s in scores]
    for i, s in enumerate(scores):
        if names.count(s.name) > 1:
            spec = models[i]
            is_path = isinstance(spec, str | os.PathLike) and Path(str(spec)).exists()
            tag = Path(str(spec)).name if is_path else f"#{i + 1}"
            s.name = f"{s.name} ({tag})" if tag != s.name else f"{s.name}#{i + 1}"


def _macro(per_class: dict[str, dict[str, Any]], key: str) -> float | None:
    vals = [v.get(key) for v in per_class.values()]
    good = [float(v) for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(good)) if good else None


def _evaluate_rows(
    configs: list[tuple[str, str, np.ndarray]], records: list[Any], class_names: list[str], opts: RunOptions
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One table row (fixed columns, then CI columns) and one metrics entry per configuration."""
    rows, all_metrics = [], []
    for name, alignment, probs in configs:
        m = classification_metrics_for(records, probs, class_names, opts)
        row = {
            "configuration": name, "alignment": alignment, "accuracy": m["accuracy"],
            "precision": _macro(m["per_class"], "precision"), "recall": _macro(m["per_class"], "recall"),
            "f1_macro": m["f1_macro"], "f1_weighted": m["f1_weighted"], "auroc": m["auroc_macro"],
        }
        for key in _CI_KEYS:
            lo, hi = m["ci95"].get(key) or (None, None)
            row[f"{key}_ci_lo"], row[f"{key}_ci_hi"] = lo, hi
        rows.append(row)
        all_metrics.append({"configuration": name, "alignment": alignment, **m})
    return rows, all_metrics

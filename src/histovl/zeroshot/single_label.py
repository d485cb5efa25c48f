"""`histovl zeroshot`: single-label zero-shot classification, end to end.

files → data (validated) → embed (cache) → text classifier (memoised) → probabilities
      → metrics with CIs → metrics.json, predictions.csv, run.json, report.html

The run is four named steps: `_prepare` (every input checked before any model work), `_score_one`
or `_score_fused` (encode and score), `_evaluate` (metrics and the predictions table), and the
writer in `histovl.zeroshot.outputs`. The steps `ablate_fusion` and `multilabel` share with it are
in `histovl.zeroshot.steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.reports import Table, predictions_table
from histovl.reproducibility import seed_run
from histovl.zeroshot.classifier import Aggregate, TextClassifier, build_text_classifier
from histovl.zeroshot.steps import (
    SkippedInputsError,
    classification_metrics_for,
    encode_with_options,
    kept_records,
    load_encoders,
    load_labelled_inputs,
    no_image_read,
    write_failed_run,
)
from histovl.zeroshot.views import DEFAULT_VIEWS

if TYPE_CHECKING:
    import pandas as pd

    from histovl.models.encoder import Encoder


@dataclass(frozen=True)
class ZeroshotConfig:
    """What `histovl zeroshot` computes (the run options are in `RunOptions`).

    Attributes:
        fusion: with several models, the registered fusion rule (see `histovl.zeroshot.fusion`).
        fusion_weights: one weight per model for weighted fusion; None = equal weights.
        views: image views for the many-to-many fusion (several models only).
        m2m_aggregator: how m2m aggregates the views x prompts similarities.
        aggregate: ``mean`` (one weight per class) or ``max`` (best description per class).
        allow_missing_classes: allow prompt-set classes with no images.
        per_template: also score each template alone and each class description alone, and
            report the spread (prompt_sensitivity.csv; `histovl.zeroshot.sensitivity`).
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    fusion: str | None = None
    fusion_weights: tuple[float, ...] | None = None
    views: tuple[str, ...] = DEFAULT_VIEWS
    m2m_aggregator: str = "mean"
    aggregate: Aggregate = "mean"
    allow_missing_classes: bool = False
    per_template: bool = False

    def __post_init__(self) -> None:
        if self.fusion_weights is not None:
            object.__setattr__(self, "fusion_weights", tuple(float(w) for w in self.fusion_weights))
        object.__setattr__(self, "views", tuple(self.views))


@dataclass
class ZeroShotResult:
    """What a zero-shot run produced (also written to `out`)."""

    metrics: dict[str, Any]
    table: Table
    """The per-image predictions as written to predictions.csv (`predictions` is this table as a
    DataFrame); a `Table`, so that a run that only writes its outputs never imports pandas."""
    out: Path | None
    probabilities: np.ndarray
    class_names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    fusion_cost: Any = None
    """With several models: a `FusionCost` (image passes, images encoded, prompts encoded, seconds)."""
    prompt_sensitivity: Any = None
    """With ``per_template``: a `SensitivityResult` (per-variant table, the metrics.json block)."""

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """predictions.csv as a pandas DataFrame: path, label, prediction, score:<class>..."""
        return self.table.to_frame()


@dataclass
class _Scores:
    probs: np.ndarray
    ok: np.ndarray
    classifiers: list[TextClassifier]
    skipped: dict[str, str]
    batch_size_used: int | None = None
    fusion_cost: Any = None
    embeddings: np.ndarray | None = None


def zeroshot(
    model: str | Encoder | Sequence[str | Encoder], data: PathArg | Any, prompts: PathArg | Any,
    out: PathArg | None = None, config: ZeroshotConfig | None = None, options: RunOptions | None = None, *,
    command: str = "histovl zeroshot", **overrides: Any,
) -> ZeroShotResult:
    """Zero-shot classify a labelled image set and write every output of docs/interfaces.md.

    Args:
        model: a model spec (``histovl-lite``, ``open_clip:ViT-B-32:w.safetensors``, ...), a
            loaded `Encoder`, or several of them together with ``config.fusion``.
        data: a class folder, a CSV manifest, or an `ImageSet`.
        prompts: a shipped prompt-set name, a YAML path, or a `PromptSet`.
        out: output folder; None computes without writing.
        config: what to compute (`ZeroshotConfig`).
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``n_boot=0``), for interactive use.

    Example:
        >>> r = zeroshot("histovl-lite", "tiles/", "lung-he-v1", out="runs/lung")  # doctest: +SKIP
        >>> r.metrics["f1_macro"], r.metrics["ci95"]["f1_macro"]  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, ZeroshotConfig, options)
    seed_run(opts.seed)
    prompt_set, image_set, class_names, models = _prepare(model, data, prompts, cfg, opts)
    encoders = load_encoders(models, opts)
    try:
        scores = (_score_one if len(encoders) == 1 else _score_fused)(encoders, image_set.paths, prompt_set, cfg, opts)
        records = kept_records(image_set, scores.ok, allow_missing_classes=cfg.allow_missing_classes, skipped=scores.skipped)
    except SkippedInputsError as err:  # still say why in run.json (docs/reliability.md, "skips")
        if out is not None:
            config_rec = {**config_record(cfg), **opts.record(), "data": str(image_set.source)}
            write_failed_run(out, err, command=command, config=config_rec, prompt_set=prompt_set, image_set=image_set, seed=opts.seed)
        raise
    metrics, preds = _evaluate(records, scores.probs, class_names, image_set.root, opts)
    skipped_list = [{"path": p, "reason": r} for p, r in scores.skipped.items()]
    metrics["n_skipped"] = len(skipped_list)
    sensitivity = _prompt_sensitivity(encoders, prompt_set, scores, records, class_names, cfg, opts, metrics)

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.zeroshot.outputs import write_zeroshot_outputs

        write_zeroshot_outputs(
            out_dir, command=command, metrics=metrics, predictions=preds, encoders=encoders,
            classifiers=scores.classifiers, prompt_set=prompt_set, image_set=image_set,
            records=records, probs=scores.probs, skipped=skipped_list, seed=opts.seed, sensitivity=sensitivity,
            config=_run_config(cfg, opts, image_set, scores, n_encoders=len(encoders)),
        )
    return ZeroShotResult(metrics, preds, out_dir, scores.probs, class_names, skipped_list, scores.fusion_cost, sensitivity)


def _prepare(
    model: Any, data: Any, prompts: Any, cfg: ZeroshotConfig, opts: RunOptions
) -> tuple[Any, Any, list[str], list[Any]]:
    """Load and check every input before any model work, so a typo costs nothing."""
    prompt_set, image_set, class_names = load_labelled_inputs(
        data, prompts, opts, allow_missing_classes=cfg.allow_missing_classes
    )
    models = list(model) if isinstance(model, list | tuple) else [model]
    if cfg.per_template and len(models) > 1:
        raise ValueError("--per-template scores one model's prompts: run it once per --model, without --fusion")
    if len(models) > 1 and cfg.fusion is None:
        raise ValueError("several models were given: choose how to combine them with --fusion (e.g. mean-prob)")
    if cfg.fusion_weights is not None:
        from histovl.zeroshot.fusion import check_fusion_weights

        check_fusion_weights(len(models), cfg.fusion_weights)
    return prompt_set, image_set, class_names, models


def _score_one(encoders: list[Encoder], paths: list[str], prompt_set: Any, cfg: ZeroshotConfig, opts: RunOptions) -> _Scores:
    """One model: encode (cache first) and score with its text classifier."""
    enc = encoders[0]
    res = encode_with_options(enc, paths, opts)
    if not res.ok.any():
        raise no_image_read(len(paths), {str(f.path): f.reason for f in res.failures})
    clf = build_text_classifier(enc, prompt_set, cfg.aggregate)
    return _Scores(
        probs=clf.probabilities(res.embeddings), ok=res.ok, classifiers=[clf], embeddings=res.embeddings,
        skipped={f.path: f.reason for f in res.failures},
        batch_size_used=res.batch_size_used if res.n_encoded else None,  # after any OOM back-off
    )


def _score_fused(encoders: list[Encoder], paths: list[str], prompt_set: Any, cfg: ZeroshotConfig, opts: RunOptions) -> _Scores:
    """Several models: score each on the images all of them could read, then fuse."""
    from histovl.zeroshot.fusion import NEEDS_M2M, fuse
    from histovl.zeroshot.multi_encoder import FusionCost, score_encoders

    cost = FusionCost()
    aligned = score_encoders(
        encoders, paths, prompt_set, views=cfg.views, aggregator=cfg.m2m_aggregator,
        many_to_many=(cfg.fusion or "") in NEEDS_M2M, options=opts, cost=cost,
    )
    classifiers = [build_text_classifier(enc, prompt_set) for enc in encoders]
    weights = list(cfg.fusion_weights) if cfg.fusion_weights is not None else None
    probs = fuse(cfg.fusion or "", aligned.scores, weights)
    return _Scores(probs=probs, ok=aligned.ok, classifiers=classifiers, skipped=aligned.skipped(paths), fusion_cost=cost)


def _evaluate(
    records: list[Any], probs: np.ndarray, class_names: list[str], root: Any, opts: RunOptions
) -> tuple[dict[str, Any], Table]:
    """Metrics with grouped bootstrap CIs, and the per-image predictions table."""
    metrics = classification_metrics_for(records, probs, class_names, opts)
    preds = predictions_table([r.path for r in records], [str(r.label) for r in records], probs, class_names, root=root)
    return metrics, preds


def _prompt_sensitivity(
    encoders: list[Encoder], prompt_set: Any, scores: _Scores, records: list[Any], class_names: list[str],
    cfg: ZeroshotConfig, opts: RunOptions, metrics: dict[str, Any],
) -> Any:
    """With ``per_template``: every template / description alone (`histovl.zeroshot.sensitivity`);
    its summary joins metrics.json under ``prompt_sensitivity``. None otherwise."""
    if not cfg.per_template or scores.embeddings is None:
        return None
    from histovl.zeroshot.sensitivity import sensitivity_for_run

    result = sensitivity_for_run(encoders[0], prompt_set, scores.embeddings, records, class_names, cfg.aggregate, opts)
    metrics["prompt_sensitivity"] = result.summary
    return result


def _run_config(cfg: ZeroshotConfig, opts: RunOptions, image_set: Any, scores: _Scores, *, n_encoders: int) -> dict[str, Any]:
    """run.json's ``config``: the command's config, the run options, and what the run resolved."""
    recorded = {**config_record(cfg), **opts.record()}
    if n_encoders == 1:
        recorded["views"] = None  # views only act with several models
    return {
        **recorded,
        "data": str(image_set.source),
        "batch_size_used": scores.batch_size_used,
        "fusion_cost": vars(scores.fusion_cost) if scores.fusion_cost is not None else None,
    }

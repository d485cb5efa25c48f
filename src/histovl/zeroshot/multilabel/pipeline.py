"""`histovl multilabel`: one zero-shot multi-label strategy, end to end.

files -> data (multi-label manifest, validated) -> embed (cache) -> text classifier (memoised)
      -> strategy -> metrics with CIs -> metrics.json, predictions.csv, run.json, report.html

The run is the zero-shot steps (`histovl.zeroshot.steps`) with a strategy in the middle:
`_prepare` (every input checked before any model work), `_encode_and_decide` (encode, then
`run_strategy`), `evaluate_multilabel`, and `write_multilabel_outputs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

from histovl.data.records import ImageSet
from histovl.embed import EmbeddingResult
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.reproducibility import seed_run
from histovl.zeroshot.multilabel.outputs import (
    evaluate_multilabel,
    require_multilabel,
    write_multilabel_outputs,
)
from histovl.zeroshot.multilabel.prompts import TextEmbeddingMemo
from histovl.zeroshot.multilabel.strategies import (
    MultilabelDecision,
    baseline_decision,
    check_powerset_size,
    ovr_decision,
    powerset_decision,
    topk_decision,
)
from histovl.zeroshot.steps import (
    SkippedInputsError,
    checked_records,
    encode_with_options,
    kept_records,
    load_encoders,
    load_labelled_inputs,
    write_failed_run,
)

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

Strategy = Literal["baseline", "ovr", "powerset", "topk"]
STRATEGIES: tuple[str, ...] = ("baseline", "ovr", "powerset", "topk")


def _check_strategy_name(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class MultilabelConfig:
    """What `histovl multilabel` computes (the run options are in `RunOptions`).

    Attributes:
        strategy: ``baseline``, ``ovr``, ``powerset`` or ``topk`` (see `strategies`).
        force_powerset: allow power-set prompting beyond 16 labels.
        allow_missing_classes: allow prompt-set classes with no images.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    strategy: Strategy = "baseline"
    force_powerset: bool = False
    allow_missing_classes: bool = False

    def __post_init__(self) -> None:
        _check_strategy_name(self.strategy)


@dataclass
class MultilabelResult:
    """What a multi-label run produced (also written to `out` when given)."""

    metrics: dict[str, Any]
    decision: MultilabelDecision
    class_names: list[str]
    predictions: pd.DataFrame | None
    out: Path | None
    timing_s: dict[str, float] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    """``{"path", "reason"}`` per unreadable image left out (``on_error="skip"``)."""


def check_strategy_inputs(strategy: str, prompt_set: Any, *, force_powerset: bool = False) -> None:
    """Refuse a strategy the prompt set cannot serve, before any model or image work.

    Raises:
        ValueError: unknown strategy, or ``ovr``/``powerset``/``topk`` without a `negative` prompt.
        HistovlError: ``powerset`` with more than 16 labels and no `force_powerset`.
    """
    _check_strategy_name(strategy)
    if strategy == "baseline":
        return
    if not prompt_set.negative:
        raise ValueError(
            f"strategy {strategy!r} needs the prompt set's `negative` prompt (e.g. "
            f"negative: \"an image with nothing in it.\"); {prompt_set.name!r} has none"
        )
    if strategy == "powerset":
        check_powerset_size(len(prompt_set.classes), len(prompt_set.templates), force=force_powerset)


def run_strategy(
    strategy: str,
    image_emb: np.ndarray,
    encoder: Encoder,
    prompt_set: Any,
    *,
    force_powerset: bool = False,
    memo: TextEmbeddingMemo | None = None,
) -> MultilabelDecision:
    """Apply one strategy to image embeddings, building text embeddings from `prompt_set`."""
    from histovl.zeroshot.classifier import build_text_classifier

    check_strategy_inputs(strategy, prompt_set, force_powerset=force_powerset)
    clf = build_text_classifier(encoder, prompt_set, "mean")
    scale = float(clf.logit_scale)
    if strategy == "baseline":
        return baseline_decision(image_emb, clf.weights, scale)
    negative = prompt_set.negative
    memo = memo or TextEmbeddingMemo(encoder)
    if strategy == "ovr":
        return ovr_decision(image_emb, clf.weights, memo.encode([negative])[0], scale)
    descriptions = [prompt_set.classes[c][0] for c in clf.class_names]
    if strategy == "powerset":
        return powerset_decision(
            image_emb, memo, descriptions, prompt_set.templates, negative, scale, force=force_powerset
        )
    return topk_decision(image_emb, clf.weights, memo, descriptions, prompt_set.templates, negative, logit_scale=scale)


def multilabel(
    model: str | Encoder, data: PathArg | Any, prompts: PathArg | Any, out: PathArg | None = None,
    config: MultilabelConfig | None = None, options: RunOptions | None = None, **overrides: Any,
) -> MultilabelResult:
    """Zero-shot multi-label classification with one of HistoCLIP's strategies.

    Args:
        model: model spec or loaded `Encoder`.
        data: multi-label manifest (``labels`` column) or a multi-label `ImageSet`.
        prompts: prompt-set name, YAML path or `PromptSet`; ``ovr``, ``powerset`` and ``topk``
            need its ``negative`` prompt.
        out: output folder; None computes without writing.
        config: what to compute (`MultilabelConfig`: strategy, force_powerset, ...).
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``strategy="topk"``, ``n_boot=0``).

    Example:
        >>> r = multilabel("histovl-lite", "mosaics/test.csv", "lung-he-v1", "runs/ml", strategy="topk")  # doctest: +SKIP
        >>> r.metrics["macc"]  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, MultilabelConfig, options)
    seed_run(opts.seed)  # torch is seeded when (if) a model loads
    prompt_set, image_set, class_names = _prepare(data, prompts, cfg, opts)
    encoder = load_encoders([model], opts)[0]
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        res, decision, memo = _encode_and_decide(encoder, image_set, prompt_set, cfg, opts, timing)
        records = kept_records(image_set, res.ok)
    except SkippedInputsError as err:  # still say why in run.json (docs/reliability.md, "skips")
        if out is not None:
            config_rec = {**config_record(cfg), **opts.record(), "data": str(image_set.source)}
            write_failed_run(out, err, command="multilabel", config=config_rec, prompt_set=prompt_set, image_set=image_set, seed=opts.seed)
        raise
    metrics = evaluate_multilabel(records, decision.scores, class_names, n_boot=opts.n_boot, seed=opts.seed)
    timing["total"] = round(time.perf_counter() - t0, 3)
    skipped = [{"path": str(f.path), "reason": f.reason} for f in res.failures]
    metrics["n_skipped"] = len(skipped)
    frame = None
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        frame = write_multilabel_outputs(
            out_dir, title=f"Multi-label zero-shot ({cfg.strategy})", command="multilabel", metrics=metrics,
            records=records, root=image_set.root, predictions=decision.predictions, scores=decision.scores,
            class_names=class_names, models=[encoder.card], prompt_set=prompt_set, seed=opts.seed,
            inputs=image_set.paths, skipped=skipped,
            config={**config_record(cfg), **opts.record(), "data": str(image_set.source)},
            extra={"timing_s": timing, "strategy_info": decision.info,
                   "prompts_encoded": memo.n_encoded, "prompts_requested": memo.n_requested},
        )
    return MultilabelResult(metrics, decision, class_names, frame, out_dir, timing, skipped)


def _prepare(data: Any, prompts: Any, cfg: MultilabelConfig, opts: RunOptions) -> tuple[Any, ImageSet, list[str]]:
    """Load and check every input, the strategy's needs included, before any model work."""
    prompt_set, image_set, class_names = load_labelled_inputs(
        data, prompts, opts, allow_missing_classes=cfg.allow_missing_classes, require=require_multilabel
    )
    check_strategy_inputs(cfg.strategy, prompt_set, force_powerset=cfg.force_powerset)
    return prompt_set, image_set, class_names


def _encode_and_decide(
    encoder: Encoder, image_set: ImageSet, prompt_set: Any, cfg: MultilabelConfig, opts: RunOptions,
    timing: dict[str, float],
) -> tuple[EmbeddingResult, MultilabelDecision, TextEmbeddingMemo]:
    """Encode the images (cache first), then apply the strategy; seconds of each go in `timing`."""
    t0 = time.perf_counter()
    res = encode_with_options(encoder, image_set.paths, opts)
    checked_records(image_set, res, cfg.allow_missing_classes)  # nothing read, or a class emptied by skips
    t1 = time.perf_counter()
    memo = TextEmbeddingMemo(encoder)
    decision = run_strategy(cfg.strategy, res.embeddings, encoder, prompt_set, force_powerset=cfg.force_powerset, memo=memo)
    timing["embed"], timing["strategy"] = round(t1 - t0, 3), round(time.perf_counter() - t1, 3)
    return res, decision, memo

"""`histovl multilabel`: one zero-shot multi-label strategy, end to end.

files -> data (multi-label manifest, validated) -> embed (cache) -> text classifier (memoised)
      -> strategy -> metrics with CIs -> metrics.json, predictions.csv, run.json, report.html
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from histovl.data.records import ImageSet
from histovl.models.encoder import Encoder
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

Strategy = Literal["baseline", "ovr", "powerset", "topk"]
STRATEGIES: tuple[str, ...] = ("baseline", "ovr", "powerset", "topk")


@dataclass
class MultilabelResult:
    """What a multi-label run produced (also written to `out` when given)."""

    metrics: dict[str, Any]
    decision: MultilabelDecision
    class_names: list[str]
    predictions: pd.DataFrame | None
    out: Path | None
    timing_s: dict[str, float] = field(default_factory=dict)


def check_strategy_inputs(strategy: str, prompt_set: Any, *, force_powerset: bool = False) -> None:
    """Refuse a strategy the prompt set cannot serve, before any model or image work.

    Raises:
        ValueError: unknown strategy, or ``ovr``/``powerset``/``topk`` without a `negative` prompt.
        HistovlError: ``powerset`` with more than 16 labels and no `force_powerset`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
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
    model: str | Encoder,
    data: str | os.PathLike[str] | Any,
    prompts: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    strategy: Strategy = "baseline",
    force_powerset: bool = False,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    allow_missing_classes: bool = False,
    allow_absolute_paths: bool = False,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> MultilabelResult:
    """Zero-shot multi-label classification with one of HistoCLIP's strategies.

    Args:
        model: model spec or loaded `Encoder`.
        data: multi-label manifest (``labels`` column) or a multi-label `ImageSet`.
        prompts: prompt-set name, YAML path or `PromptSet`; ``ovr``, ``powerset`` and ``topk``
            need its ``negative`` prompt.
        out: output folder; None computes without writing.
        strategy: ``baseline``, ``ovr``, ``powerset`` or ``topk`` (see `strategies`).
        force_powerset: allow power-set prompting beyond 16 labels.

    Example:
        >>> r = multilabel("histovl-lite", "mosaics/test.csv", "lung-he-v1", "runs/ml", strategy="topk")  # doctest: +SKIP
        >>> r.metrics["macc"]  # doctest: +SKIP
    """
    from histovl.data import load_image_set, validate_labels
    from histovl.embed import EmbeddingCache, encode_images
    from histovl.models import load_model
    from histovl.prompts import load_prompt_set
    from histovl.reproducibility import seed_everything

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    seed_everything(seed)
    prompt_set = prompts if hasattr(prompts, "classes") else load_prompt_set(prompts)
    image_set: ImageSet = data if isinstance(data, ImageSet) else load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    require_multilabel(image_set)
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)
    check_strategy_inputs(strategy, prompt_set, force_powerset=force_powerset)  # before any encoding
    encoder = model if isinstance(model, Encoder) else load_model(str(model), device=device, trust_checkpoint=trust_checkpoint)

    t0 = time.perf_counter()
    res = encode_images(
        encoder, image_set.paths, cache=EmbeddingCache(cache) if use_cache else None, batch_size=batch_size,
        num_workers=num_workers, on_error=on_error, progress=progress, seed=seed,
    )
    t1 = time.perf_counter()
    memo = TextEmbeddingMemo(encoder)
    decision = run_strategy(strategy, res.embeddings, encoder, prompt_set, force_powerset=force_powerset, memo=memo)
    t2 = time.perf_counter()
    records = [r for r, ok in zip(image_set.records, res.ok, strict=True) if ok]
    metrics = evaluate_multilabel(records, decision.scores, class_names, n_boot=n_boot, seed=seed)
    timing = {"embed": round(t1 - t0, 3), "strategy": round(t2 - t1, 3), "total": round(time.perf_counter() - t0, 3)}
    skipped = [{"path": str(f.path), "reason": f.reason} for f in res.failures]
    metrics["n_skipped"] = len(skipped)
    frame = None
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        frame = write_multilabel_outputs(
            out_dir, title=f"Multi-label zero-shot ({strategy})", command="multilabel", metrics=metrics,
            records=records, root=image_set.root, predictions=decision.predictions, scores=decision.scores,
            class_names=class_names, models=[encoder.card], prompt_set=prompt_set, seed=seed,
            inputs=image_set.paths, skipped=skipped,
            config={"strategy": strategy, "force_powerset": force_powerset, "batch_size": batch_size,
                    "on_error": on_error, "n_boot": n_boot, "device": device, "data": str(image_set.source)},
            extra={"timing_s": timing, "strategy_info": decision.info,
                   "prompts_encoded": memo.n_encoded, "prompts_requested": memo.n_requested},
        )
    return MultilabelResult(metrics, decision, class_names, frame, out_dir, timing)

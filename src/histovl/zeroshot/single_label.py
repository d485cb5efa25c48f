"""`histovl zeroshot`: single-label zero-shot classification, end to end.

files → data (validated) → embed (cache) → text classifier (memoised) → probabilities
      → metrics with CIs → metrics.json, predictions.csv, run.json, report.html
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.embed import EmbeddingCache, encode_images
from histovl.embed.engine import OnError
from histovl.models.encoder import Encoder
from histovl.reports import predictions_frame
from histovl.reproducibility import seed_everything
from histovl.zeroshot.classifier import Aggregate, TextClassifier, build_text_classifier


@dataclass
class ZeroShotResult:
    """What a zero-shot run produced (also written to `out`)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    out: Path | None
    probabilities: np.ndarray
    class_names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    fusion_cost: Any = None
    """With several models: a `FusionCost` (image passes, images encoded, prompts encoded, seconds)."""


def zeroshot(
    model: str | Encoder | Sequence[str | Encoder],
    data: str | os.PathLike[str] | Any,
    prompts: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    fusion: str | None = None,
    fusion_weights: Sequence[float] | None = None,
    views: Sequence[str] = ("identity", "hflip", "vflip", "zoom-0.75"),
    m2m_aggregator: str = "mean",
    aggregate: Aggregate = "mean",
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: OnError = "raise",
    allow_missing_classes: bool = False,
    allow_absolute_paths: bool = False,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    command: str = "histovl zeroshot",
) -> ZeroShotResult:
    """Zero-shot classify a labelled image set and write every output of INTERFACES.md.

    Args:
        model: a model spec (``histovl-lite``, ``open_clip:ViT-B-32:w.safetensors``, ...), a
            loaded `Encoder`, or several of them together with `fusion`.
        data: a class folder, a CSV manifest, or an `ImageSet`.
        prompts: a shipped prompt-set name, a YAML path, or a `PromptSet`.
        out: output folder; None computes without writing.
        fusion: with several models, the registered fusion rule (see `histovl.zeroshot.fusion`).
        aggregate: ``mean`` (one weight per class) or ``max`` (best description per class).
        cache: embedding cache folder (default `~/.cache/histovl/embeddings`).
        on_error: ``skip`` keeps going past unreadable images and records them in run.json.
        n_boot: bootstrap resamples for the 95% CIs (grouped by the data's `group` column).

    Example:
        >>> r = zeroshot("histovl-lite", "tiles/", "lung-he-v1", out="runs/lung")  # doctest: +SKIP
        >>> r.metrics["f1_macro"], r.metrics["ci95"]["f1_macro"]  # doctest: +SKIP
    """
    from histovl.data import load_image_set, validate_labels
    from histovl.metrics import classification_metrics
    from histovl.models import load_model
    from histovl.prompts import load_prompt_set

    seed_everything(seed)
    prompt_set = load_prompt_set(prompts)
    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError(
            f"{image_set.source} holds multi-label data (a `labels` column); "
            "use `histovl multilabel` for it, or give a `label` column for single-label zero-shot"
        )
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)

    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if len(models) > 1 and fusion is None:
        raise ValueError("several models were given: choose how to combine them with --fusion (e.g. mean-prob)")
    if fusion_weights is not None:  # checked before any encoding, so a typo costs nothing
        from histovl.zeroshot.fusion import check_fusion_weights

        check_fusion_weights(len(models), fusion_weights)
    encoders = [
        m if isinstance(m, Encoder) else load_model(str(m), device=device, trust_checkpoint=trust_checkpoint)
        for m in models
    ]
    fusion_cost = None
    batch_size_used: int | None = None  # after any out-of-memory back-off (RELIABILITY.md)
    store = EmbeddingCache(cache) if use_cache else None
    paths = image_set.paths
    skipped: dict[str, str] = {}
    classifiers: list[TextClassifier] = []
    if len(encoders) == 1:
        enc = encoders[0]
        res = encode_images(
            enc, paths, cache=store, batch_size=batch_size, num_workers=num_workers,
            on_error=on_error, progress=progress, seed=seed,
        )
        skipped.update({f.path: f.reason for f in res.failures})
        batch_size_used = res.batch_size_used if res.n_encoded else None
        ok = res.ok
        if not ok.any():
            raise ValueError(f"no image of {len(paths)} could be read; see the skipped list for reasons")
        clf = build_text_classifier(enc, prompt_set, aggregate)
        classifiers.append(clf)
        probs = clf.probabilities(res.embeddings)
    else:
        from histovl.zeroshot.fusion import NEEDS_M2M, fuse
        from histovl.zeroshot.multi_encoder import FusionCost, score_encoder

        cost = FusionCost()
        scores, oks = [], []
        for enc in encoders:
            s, ok_e, _ = score_encoder(
                enc, paths, prompt_set, views=views, aggregator=m2m_aggregator,
                many_to_many=(fusion or "") in NEEDS_M2M, cache=store, batch_size=batch_size,
                num_workers=num_workers, on_error="skip" if on_error == "skip" else "raise",
                progress=progress, seed=seed, cost=cost,
            )
            scores.append(s)
            oks.append(ok_e)
            classifiers.append(build_text_classifier(enc, prompt_set))
        ok = np.logical_and.reduce(oks)
        for ok_e, s in zip(oks, scores, strict=True):  # align every encoder on the common images
            keep = ok[ok_e]
            s.logits = s.logits[keep]
            s.m2m_logits = s.m2m_logits[keep] if s.m2m_logits is not None else None
        for p, good in zip(paths, ok, strict=True):
            if not good:
                skipped[str(p)] = "unreadable (skipped)"
        if not ok.any():
            raise ValueError(f"no image of {len(paths)} could be read; see the skipped list for reasons")
        probs = fuse(fusion or "", scores, fusion_weights)
        fusion_cost = cost

    records = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
    index = {c: i for i, c in enumerate(class_names)}
    y_true = np.array([index[str(r.label)] for r in records])
    groups = [r.group for r in records]
    metrics = classification_metrics(
        y_true, probs, class_names, groups=np.array(groups, dtype=object) if any(g is not None for g in groups) else None,
        n_boot=n_boot, seed=seed,
    )
    preds = predictions_frame(
        [r.path for r in records], [str(r.label) for r in records], probs, class_names, root=image_set.root
    )
    skipped_list = [{"path": p, "reason": r} for p, r in skipped.items()]
    metrics["n_skipped"] = len(skipped_list)

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.zeroshot.outputs import write_zeroshot_outputs

        write_zeroshot_outputs(
            out_dir, command=command, metrics=metrics, predictions=preds, encoders=encoders,
            classifiers=classifiers, prompt_set=prompt_set, image_set=image_set,
            records=records, probs=probs, skipped=skipped_list, seed=seed,
            config={
                "fusion": fusion, "aggregate": aggregate, "batch_size": batch_size, "batch_size_used": batch_size_used, "on_error": on_error,
                "n_boot": n_boot, "allow_missing_classes": allow_missing_classes, "device": device,
                "data": str(image_set.source), "cache": str(store.root) if store else None,
                "views": list(views) if len(encoders) > 1 else None, "m2m_aggregator": m2m_aggregator,
                "fusion_cost": vars(fusion_cost) if fusion_cost is not None else None,
            },
        )
    return ZeroShotResult(metrics, preds, out_dir, probs, class_names, skipped_list, fusion_cost)

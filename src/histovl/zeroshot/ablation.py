"""`histovl ablate-fusion`: HistoAlign's Table III for any set of encoders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.embed import EmbeddingCache
from histovl.embed.engine import OnError
from histovl.models.encoder import Encoder
from histovl.reproducibility import seed_everything
from histovl.zeroshot.multi_encoder import FusionCost, ablation_rows, score_encoder
from histovl.zeroshot.views import DEFAULT_VIEWS

ABLATION_COLUMNS = ["configuration", "alignment", "accuracy", "precision", "recall", "f1_macro", "f1_weighted", "auroc"]


@dataclass
class AblationResult:
    """The ablation table (fixed columns first, then CI columns) and per-row metrics."""

    table: pd.DataFrame
    metrics: list[dict[str, Any]]
    cost: FusionCost
    out: Path | None


def _macro(per_class: dict[str, dict[str, Any]], key: str) -> float | None:
    vals = [v.get(key) for v in per_class.values()]
    good = [float(v) for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(good)) if good else None


def ablate_fusion(
    models: Sequence[str | Encoder],
    data: str | os.PathLike[str] | Any,
    prompts: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    views: Sequence[str] = DEFAULT_VIEWS,
    aggregator: str = "mean",
    allow_cross_pairs: bool = False,
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
) -> AblationResult:
    """Score every single encoder (one-to-one, prompt ensemble, many-to-many), cross pairs when
    allowed, and the joint and many-to-many fusions, on the same images, with 95% CIs.

    Each encoder is loaded once and each view of each image encoded once (cached), so every
    configuration reuses the same embeddings.

    Example:
        >>> ablate_fusion(["histovl-lite", "plip"], "tiles/", "breakhis-v1", "runs/abl")  # doctest: +SKIP
    """
    from histovl.data import load_image_set, validate_labels
    from histovl.metrics import classification_metrics
    from histovl.models import load_model
    from histovl.prompts import load_prompt_set

    if len(models) < 1:
        raise ValueError("give at least one --model")
    seed_everything(seed)
    prompt_set = load_prompt_set(prompts)
    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)
    encoders = [m if isinstance(m, Encoder) else load_model(str(m), device=device, trust_checkpoint=trust_checkpoint) for m in models]
    store = EmbeddingCache(cache) if use_cache else None
    cost = FusionCost()
    scored = [
        score_encoder(
            e, image_set.paths, prompt_set, views=views, aggregator=aggregator, many_to_many=True,
            cache=store, batch_size=batch_size, num_workers=num_workers, on_error=on_error,
            progress=progress, seed=seed, cost=cost,
        )
        for e in encoders
    ]
    ok = np.logical_and.reduce([ok_e for _, ok_e, _ in scored])
    scores, ident = [], []
    names = [e.card.name for e in encoders]
    for i, (s, ok_e, emb) in enumerate(scored):
        if names.count(s.name) > 1:  # two encoders of one name (e.g. two fine-tunes): keep rows apart
            spec = models[i]
            tag = Path(str(spec)).name if isinstance(spec, (str, os.PathLike)) and Path(str(spec)).exists() else f"#{i + 1}"
            s.name = f"{s.name} ({tag})" if tag != s.name else f"{s.name}#{i + 1}"
        keep = ok[ok_e]
        s.logits = s.logits[keep]
        s.m2m_logits = s.m2m_logits[keep] if s.m2m_logits is not None else None
        scores.append(s)
        ident.append(emb["identity"][keep])
    records = [r for r, k in zip(image_set.records, ok, strict=True) if k]
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[str(r.label)] for r in records])
    groups = [r.group for r in records]
    g = np.array(groups, dtype=object) if any(x is not None for x in groups) else None

    rows, all_metrics = [], []
    configs = ablation_rows(encoders, scores, ident, prompt_set, allow_cross_pairs=allow_cross_pairs)
    for name, alignment, probs in configs:
        m = classification_metrics(y, probs, class_names, groups=g, n_boot=n_boot, seed=seed)
        row = {
            "configuration": name, "alignment": alignment, "accuracy": m["accuracy"],
            "precision": _macro(m["per_class"], "precision"), "recall": _macro(m["per_class"], "recall"),
            "f1_macro": m["f1_macro"], "f1_weighted": m["f1_weighted"], "auroc": m["auroc_macro"],
        }
        for key in ("accuracy", "f1_macro", "f1_weighted", "auroc_macro"):
            lo, hi = m["ci95"].get(key) or (None, None)
            row[f"{key}_ci_lo"], row[f"{key}_ci_hi"] = lo, hi
        rows.append(row)
        all_metrics.append({"configuration": name, "alignment": alignment, **m})
    table = pd.DataFrame(rows)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.zeroshot.outputs import write_ablation_outputs

        best = max(range(len(configs)), key=lambda i: rows[i]["f1_macro"] if rows[i]["f1_macro"] is not None else -1)
        write_ablation_outputs(
            out_dir, table=table, metrics=all_metrics, best=(configs[best][0], configs[best][1]),
            best_probs=configs[best][2], records=records, image_set=image_set, encoders=encoders,
            prompt_set=prompt_set, cost=cost, seed=seed,
            config={"views": list(views), "aggregator": aggregator, "allow_cross_pairs": allow_cross_pairs,
                    "n_boot": n_boot, "data": str(image_set.source)},
        )
    return AblationResult(table, all_metrics, cost, out_dir)

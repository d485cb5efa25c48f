"""Scoring one encoder for fusion, and the HistoAlign-style ablation over encoder combinations."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histovl.embed import EmbeddingCache, encode_images
from histovl.embed.engine import OnError
from histovl.models.encoder import Encoder
from histovl.zeroshot.classifier import PromptSetLike, build_text_classifier, encode_prompts
from histovl.zeroshot.fusion import EncoderScores, fuse, many_to_many_scores, softmax
from histovl.zeroshot.views import DEFAULT_VIEWS, make_view


@dataclass
class FusionCost:
    """What a fused run cost: image passes, prompts encoded, seconds per encoder."""

    image_passes: int = 0
    images_encoded: int = 0
    images_from_cache: int = 0
    prompts_encoded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def encoder_identity(enc: Encoder) -> str:
    return f"{enc.weights_id}:{enc.card.preprocessing_key()}"


def score_encoder(
    enc: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    prompt_set: PromptSetLike,
    *,
    views: Sequence[str] = DEFAULT_VIEWS,
    aggregator: str = "mean",
    many_to_many: bool = True,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: OnError = "raise",
    progress: bool = True,
    seed: int = 0,
    cost: FusionCost | None = None,
) -> tuple[EncoderScores, np.ndarray, dict[str, np.ndarray]]:
    """Encode the views of every image and score them against `prompt_set`.

    Returns:
        (scores over the readable images, ok mask over `paths`, per-view embeddings [n_ok, D]).
    """
    t0 = time.perf_counter()
    view_names = list(views) if many_to_many else ["identity"]
    if "identity" not in view_names:
        view_names = ["identity", *view_names]
    emb: dict[str, np.ndarray] = {}
    ok = np.ones(len(paths), dtype=bool)
    full: dict[str, np.ndarray] = {}
    for v in view_names:
        res = encode_images(
            enc, paths, cache=cache, transform=make_view(v), batch_size=batch_size,
            num_workers=num_workers, on_error=on_error, progress=progress, seed=seed,
        )
        arr = np.zeros((len(paths), res.embeddings.shape[1]), np.float32)
        arr[res.ok] = res.embeddings
        full[v] = arr
        ok &= res.ok
        if cost is not None:
            cost.image_passes += 1
            cost.images_encoded += res.n_encoded
            cost.images_from_cache += res.n_cached
    for v in view_names:
        emb[v] = full[v][ok]

    clf = build_text_classifier(enc, prompt_set)
    logits = clf.logits(emb["identity"])
    m2m = None
    if many_to_many:
        per_class = [[t.replace("{}", d) for d in prompt_set.classes[c] for t in prompt_set.templates] for c in clf.class_names]
        prompt_emb = [encode_prompts(enc, ps) for ps in per_class]
        if cost is not None:
            cost.prompts_encoded += len({p for ps in per_class for p in ps})
        m2m = clf.logit_scale * many_to_many_scores([emb[v] for v in view_names], prompt_emb, aggregator)
    if cost is not None:
        cost.seconds[enc.card.name] = cost.seconds.get(enc.card.name, 0.0) + time.perf_counter() - t0
    return EncoderScores(enc.card.name, logits, m2m, encoder_identity(enc)), ok, emb


def one_prompt_logits(enc: Encoder, prompt_set: PromptSetLike, image_emb: np.ndarray, scale: float) -> np.ndarray:
    """Literal one-to-one: the first description through the first template, one prompt per class."""
    prompts = [prompt_set.templates[0].replace("{}", prompt_set.classes[c][0]) for c in prompt_set.classes]
    t = encode_prompts(enc, prompts)
    return scale * (torch.as_tensor(image_emb) @ t.T).numpy()


def ablation_rows(
    encoders: Sequence[Encoder],
    scores: Sequence[EncoderScores],
    identity_emb: Sequence[np.ndarray],
    prompt_set: PromptSetLike,
    *,
    allow_cross_pairs: bool = False,
) -> list[tuple[str, str, np.ndarray]]:
    """The configurations of HistoAlign's Table III as (configuration, alignment, probabilities)."""
    rows: list[tuple[str, str, np.ndarray]] = []
    for enc, s, e in zip(encoders, scores, identity_emb, strict=True):
        rows.append((f"{s.name} only", "one-to-one", softmax(one_prompt_logits(enc, prompt_set, e, enc.logit_scale))))
        rows.append((f"{s.name} only", "one-to-one (prompt ensemble)", softmax(s.logits)))
        if s.m2m_logits is not None:
            rows.append((f"{s.name} only", "many-to-many", softmax(s.m2m_logits)))
    if allow_cross_pairs:
        for i, (_ei, si) in enumerate(zip(encoders, scores, strict=True)):
            for j, ej in enumerate(encoders):
                if i == j:
                    continue
                clf_j = build_text_classifier(ej, prompt_set)
                if clf_j.weights.shape[-1] != identity_emb[i].shape[1]:
                    warnings.warn(
                        f"cross pair {si.name} images × {scores[j].name} texts skipped: embedding sizes differ",
                        stacklevel=2,
                    )
                    continue
                rows.append(
                    (f"cross pair ({si.name} images × {scores[j].name} texts)", "one-to-one",
                     clf_j.probabilities(identity_emb[i]))
                )
    if len(scores) > 1:
        rows.append(("all encoders", "joint fusion (mean-prob)", fuse("mean-prob", scores)))
        rows.append(("all encoders", "joint fusion (mean-logit-z)", fuse("mean-logit-z", scores)))
        if all(s.m2m_logits is not None for s in scores):
            rows.append(("all encoders", "many-to-many fusion (m2m)", fuse("m2m", scores)))
    return rows


def run_config(**kwargs: Any) -> dict[str, Any]:
    """JSON-ready copy of a config dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}

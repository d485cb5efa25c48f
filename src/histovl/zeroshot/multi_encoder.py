"""Scoring several encoders on the same images for fusion, and the HistoAlign-style ablation rows."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from histovl.models.encoder import Encoder
from histovl.options import RunOptions
from histovl.zeroshot.classifier import PromptSetLike, build_text_classifier, encode_prompts
from histovl.zeroshot.fusion import EncoderScores, fuse, many_to_many_scores, softmax
from histovl.zeroshot.steps import encode_with_options, no_image_read
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


def _score_encoder(
    enc: Encoder, paths: Sequence[str | os.PathLike[str]], prompt_set: PromptSetLike, view_names: list[str],
    aggregator: str | None, opts: RunOptions, cost: FusionCost,
) -> tuple[EncoderScores, np.ndarray, dict[str, np.ndarray]]:
    """Encode the views of every image and score them against `prompt_set` (many-to-many too
    unless `aggregator` is None).

    Returns:
        (scores over the readable images, ok mask over `paths`, per-view embeddings [n_ok, D]).
    """
    t0 = time.perf_counter()
    ok, emb = _encode_views(enc, paths, view_names, opts, cost)
    clf = build_text_classifier(enc, prompt_set)
    logits = clf.logits(emb["identity"])
    m2m = None
    if aggregator is not None:
        per_class = [[t.replace("{}", d) for d in prompt_set.classes[c] for t in prompt_set.templates] for c in clf.class_names]
        prompt_emb = [encode_prompts(enc, ps) for ps in per_class]
        cost.prompts_encoded += len({p for ps in per_class for p in ps})
        m2m = clf.logit_scale * many_to_many_scores([emb[v] for v in view_names], prompt_emb, aggregator)
    cost.seconds[enc.card.name] = cost.seconds.get(enc.card.name, 0.0) + time.perf_counter() - t0
    return EncoderScores(enc.card.name, logits, m2m, encoder_identity(enc)), ok, emb


def _encode_views(
    enc: Encoder, paths: Sequence[str | os.PathLike[str]], view_names: list[str], opts: RunOptions, cost: FusionCost
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each view of every image, cache first; returns (read in every view, per-view embeddings of those)."""
    ok = np.ones(len(paths), dtype=bool)
    full: dict[str, np.ndarray] = {}
    for v in view_names:
        res = encode_with_options(enc, paths, opts, transform=make_view(v))
        arr = np.zeros((len(paths), res.embeddings.shape[1]), np.float32)
        arr[res.ok] = res.embeddings
        full[v] = arr
        ok &= res.ok
        cost.image_passes += 1
        cost.images_encoded += res.n_encoded
        cost.images_from_cache += res.n_cached
    return ok, {v: full[v][ok] for v in view_names}


@dataclass
class AlignedScores:
    """Several encoders scored on the images every one of them could read."""

    scores: list[EncoderScores]
    """One per encoder, in order, over the common images."""
    ok: np.ndarray
    """Mask over the input paths: read by every encoder."""
    identity: list[np.ndarray]
    """Per encoder, the identity-view embeddings of the common images."""

    def skipped(self, paths: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
        """``{path: reason}`` for every input left out."""
        return {str(p): "unreadable (skipped)" for p, good in zip(paths, self.ok, strict=True) if not good}


def score_encoders(
    encoders: Sequence[Encoder],
    paths: Sequence[str | os.PathLike[str]],
    prompt_set: PromptSetLike,
    *,
    views: Sequence[str] = DEFAULT_VIEWS,
    aggregator: str = "mean",
    many_to_many: bool = True,
    options: RunOptions | None = None,
    cost: FusionCost | None = None,
) -> AlignedScores:
    """Score each encoder on its views of every image (`views` and `aggregator` act with
    `many_to_many`; the identity view is always encoded), then cut every encoder's scores to the
    images all of them could read. `options` gives the encoding's cache, batch size, workers,
    on_error, progress and seed; `cost` collects passes, prompts and seconds.

    Raises:
        ValueError: no image could be read by every encoder.
    """
    opts = options if options is not None else RunOptions()
    view_names = list(views) if many_to_many else ["identity"]
    if "identity" not in view_names:
        view_names = ["identity", *view_names]
    m2m_aggregator = aggregator if many_to_many else None
    spent = cost if cost is not None else FusionCost()
    scored = [_score_encoder(e, paths, prompt_set, view_names, m2m_aggregator, opts, spent) for e in encoders]
    ok = np.logical_and.reduce([ok_e for _, ok_e, _ in scored])
    if not ok.any():
        raise no_image_read(len(paths))
    scores, identity = [], []
    for s, ok_e, emb in scored:
        keep = ok[ok_e]
        s.logits = s.logits[keep]
        s.m2m_logits = s.m2m_logits[keep] if s.m2m_logits is not None else None
        scores.append(s)
        identity.append(emb["identity"][keep])
    return AlignedScores(scores, ok, identity)


def one_prompt_logits(enc: Encoder, prompt_set: PromptSetLike, image_emb: np.ndarray, scale: float) -> np.ndarray:
    """Literal one-to-one: the first description through the first template, one prompt per class."""
    prompts = [prompt_set.templates[0].replace("{}", prompt_set.classes[c][0]) for c in prompt_set.classes]
    t = encode_prompts(enc, prompts)
    return scale * (torch.as_tensor(image_emb) @ torch.as_tensor(t).T).numpy()


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


"""`histovl robustness`: every model × corruption × level, zero-shot and image→image retrieval.

The protocol is the PathCLIP study's (``../shared/seeds/004``, sections 3.2–3.5):

- zero-shot: the corrupted images are classified with the model's text classifier (built once
  per model from the prompt set); accuracy, macro and weighted F1 with bootstrap 95 % CIs.
- retrieval: each corrupted image is a query against the gallery of all *clean* images; its own
  clean copy (and, when the data has a ``group`` column, every image of its group) is excluded,
  so a query can only score by finding other images of its class. HA@K = 1 when all top-K
  results share the query's class.
- ``none`` (severity 0) is the clean baseline: the same retrieval as `histovl retrieve`.

Doing the least work: each model is loaded once; its text classifier is built once; files are
hashed once and decoded once into memory (shared by models with equal preprocessing); every
corrupted view is encoded once and cached under a key with the corruption and level, so an
interrupted or extended sweep resumes where it stopped and gives exactly the same numbers.

Example:
    >>> r = robustness(["histovl-lite"], "tiles/", "lung-he-v1", out="runs/robust")  # doctest: +SKIP
    >>> r.table.head()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.embed.cache import EmbeddingCache, content_keys
from histovl.embed.engine import ImageTransform, OnError
from histovl.embed.in_memory import DecodedImages, encode_decoded
from histovl.models.encoder import Encoder
from histovl.robustness.corruptions import BUILTIN_CORRUPTIONS
from histovl.robustness.registry import BUILTIN_NAMESPACE, Corruption, get_corruption

log = logging.getLogger(__name__)

CSV_COLUMNS = ("model", "corruption", "severity", "accuracy", "f1_macro", "f1_weighted", "ha@5", "ha@10")
"""The fixed columns of robustness.csv (INTERFACES.md), in order."""


@dataclass
class RobustnessResult:
    """What a sweep produced (also written to `out`).

    Attributes:
        table: one row per model × mitigation × corruption × severity with `CSV_COLUMNS` plus
            ``mitigation``, ``n`` and the CI bounds (``<metric>_lo`` / ``<metric>_hi``).
        conditions: full metric dicts (with CIs) per row, in table order.
        encode_stats: per row, how many embeddings came from the cache and how many were encoded.
    """

    table: pd.DataFrame
    conditions: list[dict[str, Any]]
    encode_stats: list[dict[str, Any]]
    out: Path | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Condition:
    """One corruption at one level (``corruption is None``: the clean baseline)."""

    corruption: Corruption | None
    level: int

    @property
    def name(self) -> str:
        c = self.corruption
        return "none" if c is None else (c.name if c.namespace == BUILTIN_NAMESPACE else c.key)


def plan_conditions(
    corruptions: Sequence[str] | None, levels: Sequence[int] | Mapping[str, Sequence[int]] | None
) -> list[Condition]:
    """``none`` first, then each corruption's requested levels (all by default).

    `levels` may be one list applied to every corruption (each keeps the levels it has, e.g.
    ``(1, 2)`` selects −/+ nothing for the signed colour corruptions' ``-2, -1``) or a mapping
    corruption -> levels.
    """
    chosen = [get_corruption(n) for n in (corruptions or BUILTIN_CORRUPTIONS)]
    out = [Condition(None, 0)]
    used: set[int] = set()
    for c in chosen:
        if levels is None:
            wanted = list(c.levels)
        elif isinstance(levels, Mapping):
            wanted = [c.check_level(int(x)) for x in levels.get(c.name, levels.get(c.key, c.levels))]
        else:
            wanted = [int(x) for x in levels if int(x) in c.levels]
            used.update(wanted)
        out.extend(Condition(c, lv) for lv in wanted)
    if levels is not None and not isinstance(levels, Mapping):
        unknown = sorted(set(int(x) for x in levels) - used)
        if unknown:
            raise ValueError(f"level(s) {unknown} belong to none of the chosen corruptions")
    return out


def robustness(
    models: str | Encoder | Sequence[str | Encoder],
    data: str | os.PathLike[str] | Any,
    prompts: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str] | None = None,
    *,
    corruptions: Sequence[str] | None = None,
    levels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    k: Sequence[int] = (5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    stain_normalisation: bool = False,
    stain_reference: str | os.PathLike[str] | None = None,
    exclude_same_group: bool = True,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: OnError = "raise",
    allow_missing_classes: bool = False,
    allow_absolute_paths: bool = False,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    save_predictions: bool = True,
    progress: bool = True,
    command: str = "histovl robustness",
) -> RobustnessResult:
    """Run the robustness sweep and (with `out`) write every output.

    Args:
        models: model specs or loaded encoders; each is loaded once and freed after its rows.
        data: a class folder, CSV manifest or `ImageSet` with single labels.
        prompts: prompt-set name, YAML path or `PromptSet`.
        out: folder for robustness.csv, robustness_detail.csv, metrics.json, predictions.csv,
            run.json and report.html with figures; None computes only.
        corruptions: registered names (default: the study's seven).
        levels: which levels (default: all of each corruption), see `plan_conditions`.
        k: retrieval cut-offs (5 and 10 are always computed for the CSV).
        n_boot: bootstrap resamples for the CIs (grouped when the data has groups).
        stain_normalisation: also run every condition with Macenko normalisation, reported as
            rows with ``mitigation = macenko`` (and ``<model>+macenko`` in robustness.csv).
        stain_reference: the reference tile (default: the first readable image of the data).
        exclude_same_group: keep a query's group out of its retrieval results.
        cache: embedding cache folder (default `~/.cache/histovl/embeddings`).
    """
    from histovl.data import load_image_set, validate_labels
    from histovl.models import load_model
    from histovl.prompts import load_prompt_set
    from histovl.reproducibility import seed_everything
    from histovl.robustness.evaluation import ConditionScorer
    from histovl.zeroshot.classifier import build_text_classifier

    seed_everything(seed)
    prompt_set = load_prompt_set(prompts)
    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError("robustness needs single-label data (a `label` column or class folders)")
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)
    conditions = plan_conditions(corruptions, levels)
    ks = sorted({int(x) for x in k} | {5, 10})
    specs: list[str | Encoder] = (
        [m for m in models] if isinstance(models, list | tuple) else [models]  # type: ignore[list-item]
    )
    if not specs:
        raise ValueError("give at least one model")
    store = EmbeddingCache(cache) if use_cache else None
    paths = image_set.paths
    keys = content_keys(paths)
    notes: list[str] = []
    mitigations = ["none"]
    if stain_normalisation:
        from histovl.robustness.stain import INSTALL_HINT, stain_available

        if stain_available():
            mitigations.append("macenko")
        else:
            log.warning(INSTALL_HINT)
            notes.append(f"stain normalisation skipped: {INSTALL_HINT}")

    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    predictions: list[pd.DataFrame] = []
    cards, weights_ids, gallery_tile = [], [], None
    labels_used: list[str] = []
    bank: DecodedImages | None = None
    skipped: dict[str, str] = {}
    for spec in specs:
        encoder = spec if isinstance(spec, Encoder) else load_model(str(spec), device=device, trust_checkpoint=trust_checkpoint)
        label = _label_for(encoder, spec, labels_used)
        labels_used.append(label)
        cards.append(encoder.card)
        weights_ids.append(encoder.weights_id)
        classifier = build_text_classifier(encoder, prompt_set)
        if bank is None or bank.preprocess != encoder.preprocess:
            bank = DecodedImages(paths, encoder.preprocess, keys=keys, on_error=on_error, num_workers=num_workers, progress=progress)
        clean = encode_decoded(encoder, bank, cache=store, batch_size=batch_size, seed=seed, progress=progress)
        skipped.update({f.path: f.reason for f in clean.failures})
        if not clean.ok.any():
            raise ValueError(f"no image of {len(paths)} could be read; see the skipped list for reasons")
        scorer = ConditionScorer(
            image_set, clean.ok, clean.embeddings, classifier, class_names, ks=ks, n_boot=n_boot,
            seed=seed, exclude_same_group=exclude_same_group,
        )
        stain_tf = None
        if "macenko" in mitigations:
            stain_tf = _stain_transform(bank, stain_reference, encoder)
        if gallery_tile is None:
            from histovl.data import read_rgb

            first = int(np.flatnonzero(clean.ok)[0])
            gallery_tile = (encoder.preprocess.to_unnormalised(read_rgb(paths[first])), keys[first])
        for mitigation in mitigations:
            for cond in conditions:
                transform: ImageTransform | None = None if cond.corruption is None else cond.corruption.transform(cond.level, seed=seed)
                if mitigation == "macenko":
                    assert stain_tf is not None
                    transform = stain_tf.with_inner(transform)
                res = clean if (transform is None) else encode_decoded(
                    encoder, bank, transform=transform, cache=store, batch_size=batch_size, seed=seed, progress=progress,
                )
                if not np.array_equal(res.ok, clean.ok):
                    raise RuntimeError(f"{cond.name}:{cond.level} encoded a different set of images than the clean run")
                metrics, probs = scorer.score(res.embeddings)
                row = {"model": label if mitigation == "none" else f"{label}+{mitigation}",
                       "corruption": cond.name, "severity": cond.level}
                row.update({m: metrics[m] for m in CSV_COLUMNS[3:]})
                rows.append(row)
                details.append({"model": label, "mitigation": mitigation, "corruption": cond.name,
                                "severity": cond.level, "parameter": _parameter(cond), **metrics})
                stats.append({"model": label, "mitigation": mitigation, "corruption": cond.name, "severity": cond.level,
                              "transform": transform.key if transform is not None else "none",
                              "n_cached": res.n_cached, "n_encoded": res.n_encoded,
                              "stain_fallbacks": getattr(transform, "n_fallback", 0)})
                if save_predictions:
                    predictions.append(scorer.predictions(probs, label, mitigation, cond.name, cond.level))
                log.info("%s %s %s:%d acc=%.4f ha@5=%.4f", label, mitigation, cond.name, cond.level,
                         metrics["accuracy"], metrics["ha@5"])
        if not isinstance(spec, Encoder):
            del encoder  # free the weights before the next model

    from histovl.robustness.evaluation import detail_frame

    table = detail_frame(details)
    result = RobustnessResult(
        table=table, conditions=details, encode_stats=stats, out=Path(out) if out is not None else None,
        skipped=[{"path": p, "reason": r} for p, r in skipped.items()], notes=notes,
    )
    if out is not None:
        from histovl.robustness.outputs import write_robustness_outputs

        write_robustness_outputs(
            Path(out), result, rows=rows, predictions=predictions, cards=cards, weights_ids=weights_ids,
            prompt_set=prompt_set, image_set=image_set, seed=seed, command=command, gallery_tile=gallery_tile,
            config={
                "models": [str(s) if not isinstance(s, Encoder) else s.card.name for s in specs],
                "model_labels": labels_used, "corruptions": [c.name for c in conditions[1:]],
                "levels": _levels_by_name(conditions),
                "k": ks, "n_boot": n_boot, "stain_normalisation": stain_normalisation,
                "stain_reference": str(stain_reference) if stain_reference else None,
                "exclude_same_group": exclude_same_group, "batch_size": batch_size, "on_error": on_error,
                "device": device, "data": str(image_set.source), "cache": str(store.root) if store else None,
            },
        )
    return result


def _label_for(encoder: Encoder, spec: str | Encoder, used: Sequence[str]) -> str:
    """The model's card name; its spec, or ``name#i``, when another model already has it."""
    name = encoder.card.name
    if name not in used:
        return name
    if isinstance(spec, str) and spec not in used:
        return spec
    i = 2
    while f"{name}#{i}" in used:
        i += 1
    return f"{name}#{i}"


def _parameter(cond: Condition) -> float | None:
    if cond.corruption is None:
        return None
    value = cond.corruption.parameters.get(cond.level)
    return None if value is None else float(value)


def _levels_by_name(conditions: Sequence[Condition]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c in conditions[1:]:
        out.setdefault(c.name, []).append(c.level)
    return out


def _stain_transform(bank: DecodedImages, reference: str | os.PathLike[str] | None, encoder: Encoder) -> Any:
    """Macenko fitted on `reference`, or on the first readable image of the data."""
    from histovl.data import read_rgb
    from histovl.robustness.stain import MacenkoTransform

    if reference is None:
        reference = next(p for i, p in enumerate(bank.paths) if i not in bank.failures)
    return MacenkoTransform(encoder.preprocess.to_unnormalised(read_rgb(os.fspath(reference))))

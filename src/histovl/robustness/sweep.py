"""`histovl robustness`: every model × corruption × level, zero-shot and image→image retrieval.

The protocol is the PathCLIP study's (sections 3.2–3.5; see docs/robustness.md):

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

The run is named steps: `_prepare` (every input checked before any model work), `_sweep_model`
(one model: clean encoding, scorer, then `_run_condition` per mitigation × condition), and
`_write` (the writer in `histovl.robustness.outputs`).

Example:
    >>> r = robustness(["histovl-lite"], "tiles/", "lung-he-v1", out="runs/robust")  # doctest: +SKIP
    >>> r.table.head()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from histovl.embed.cache import EmbeddingCache, cache_for, content_keys
from histovl.embed.engine import EmbeddingResult, ImageTransform
from histovl.embed.in_memory import DecodedImages, encode_cached, encode_decoded
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.robustness.corruptions import BUILTIN_CORRUPTIONS
from histovl.robustness.registry import get_corruption
from histovl.robustness.results import (
    CSV_COLUMNS,
    Condition,
    GalleryTile,
    RobustnessResult,
    levels_by_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from histovl.models.encoder import Encoder
    from histovl.robustness.evaluation import ConditionScorer

log = logging.getLogger(__name__)

Levels = Sequence[int] | Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class RobustnessConfig:
    """What `histovl robustness` computes (the run options are in `RunOptions`).

    Attributes:
        corruptions: registered names (None: the study's seven).
        levels: which levels (None: all of each corruption), see `plan_conditions`.
        k: retrieval cut-offs (5 and 10 are always computed for the CSV).
        stain_normalisation: also run every condition with Macenko normalisation, reported as
            rows with ``mitigation = macenko`` (and ``<model>+macenko`` in robustness.csv).
        stain_reference: the reference tile (None: the first readable image of the data).
        exclude_same_group: keep a query's group out of its retrieval results.
        allow_missing_classes: allow prompt-set classes with no images.
        save_predictions: write the per-image predictions.csv rows.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    corruptions: tuple[str, ...] | None = None
    levels: tuple[int, ...] | Mapping[str, tuple[int, ...]] | None = None
    k: tuple[int, ...] = (5, 10)
    stain_normalisation: bool = False
    stain_reference: str | None = None
    exclude_same_group: bool = True
    allow_missing_classes: bool = False
    save_predictions: bool = True

    def __post_init__(self) -> None:
        if self.corruptions is not None:
            object.__setattr__(self, "corruptions", tuple(self.corruptions))
        if isinstance(self.levels, Mapping):
            object.__setattr__(self, "levels", {str(n): tuple(v) for n, v in self.levels.items()})
        elif self.levels is not None:
            object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "k", tuple(self.k))
        if self.stain_reference is not None:
            object.__setattr__(self, "stain_reference", os.fspath(self.stain_reference))


def plan_conditions(corruptions: Sequence[str] | None, levels: Levels | None) -> list[Condition]:
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


@dataclass
class _Plan:
    """The checked inputs of a sweep (`_prepare`)."""

    prompt_set: Any
    image_set: Any
    class_names: list[str]
    conditions: list[Condition]
    ks: list[int]
    specs: list[str | Encoder]
    mitigations: list[str]
    notes: list[str]
    keys: list[str | None]


@dataclass
class _Collected:
    """What the sweep accumulates over models and conditions, in row order."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[pd.DataFrame] = field(default_factory=list)
    cards: list[Any] = field(default_factory=list)
    weights_ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    gallery_tile: GalleryTile | None = None
    bank: DecodedImages | None = None


@dataclass
class _ModelRun:
    """One loaded model's fixed parts while its conditions run."""

    encoder: Encoder
    label: str
    clean: EmbeddingResult
    scorer: ConditionScorer
    inputs: tuple[Sequence[str], Sequence[str | None]]
    """The image paths and their content keys."""
    stain_tf: Any = None


def robustness(
    models: str | Encoder | Sequence[str | Encoder], data: PathArg | Any, prompts: PathArg | Any,
    out: PathArg | None = None, config: RobustnessConfig | None = None, options: RunOptions | None = None,
    *, command: str = "histovl robustness", **overrides: Any,
) -> RobustnessResult:
    """Run the robustness sweep and (with `out`) write every output.

    Args:
        models: model specs or loaded encoders; each is loaded once and freed after its rows.
        data: a class folder, CSV manifest or `ImageSet` with single labels.
        prompts: prompt-set name, YAML path or `PromptSet`.
        out: folder for robustness.csv, robustness_detail.csv, metrics.json, predictions.csv,
            run.json and report.html with figures; None computes only.
        config: what to compute (`RobustnessConfig`: corruptions, levels, k, stain normalisation, ...).
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``n_boot=0, corruptions=["blur"]``).
    """
    from histovl.reproducibility import seed_run
    from histovl.robustness.evaluation import detail_frame

    cfg, opts = split_overrides(overrides, config, RobustnessConfig, options)
    seed_run(opts.seed)  # seeds torch when it is imported (a fully cached sweep never imports it)
    plan = _prepare(models, data, prompts, cfg, opts)
    store = cache_for(opts)
    acc = _Collected()
    for spec in plan.specs:
        _sweep_model(spec, plan, cfg, opts, store, acc)
    result = RobustnessResult(
        table=detail_frame(acc.details), conditions=acc.details, encode_stats=acc.stats,
        out=Path(out) if out is not None else None,
        skipped=[{"path": p, "reason": r} for p, r in acc.skipped.items()], notes=plan.notes,
    )
    if out is not None:
        _write(Path(out), result, plan, cfg, opts, acc, command)
    return result


def _prepare(models: Any, data: Any, prompts: Any, cfg: RobustnessConfig, opts: RunOptions) -> _Plan:
    """Load and check every input before any model work, so a typo costs nothing."""
    from histovl.data import load_image_set, validate_labels
    from histovl.prompts import load_prompt_set

    prompt_set = load_prompt_set(prompts)
    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError("robustness needs single-label data (a `label` column or class folders)")
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=cfg.allow_missing_classes)
    conditions = plan_conditions(cfg.corruptions, cfg.levels)
    ks = sorted({int(x) for x in cfg.k} | {5, 10})
    specs: list[str | Encoder] = list(models) if isinstance(models, list | tuple) else [models]
    if not specs:
        raise ValueError("give at least one model")
    keys = content_keys(image_set.paths)
    mitigations, notes = _mitigations(cfg)
    return _Plan(prompt_set, image_set, class_names, conditions, ks, specs, mitigations, notes, keys)


def _mitigations(cfg: RobustnessConfig) -> tuple[list[str], list[str]]:
    """``none``, plus ``macenko`` when asked for and torchstain is there (else a note)."""
    if not cfg.stain_normalisation:
        return ["none"], []
    from histovl.robustness._stain_support import INSTALL_HINT, stain_available

    if stain_available():
        return ["none", "macenko"], []
    log.warning(INSTALL_HINT)
    return ["none"], [f"stain normalisation skipped: {INSTALL_HINT}"]


def _sweep_model(
    spec: str | Encoder, plan: _Plan, cfg: RobustnessConfig, opts: RunOptions,
    store: EmbeddingCache | None, acc: _Collected,
) -> None:
    """One model: load it, encode the clean images, then every mitigation × condition.

    The encoder is a local of this call, so a model loaded from a spec is freed before the next.
    """
    from histovl.embed.encoders import open_encoder
    from histovl.robustness.evaluation import ConditionScorer
    from histovl.zeroshot.classifier import build_text_classifier

    encoder = open_encoder(spec, opts)  # the model loads only if an image or prompt misses the cache
    label = _label_for(encoder, spec, acc.labels)
    acc.labels.append(label)
    acc.cards.append(encoder.card)
    acc.weights_ids.append(encoder.weights_id)
    classifier = build_text_classifier(encoder, plan.prompt_set)
    paths = plan.image_set.paths

    def bank() -> DecodedImages:  # built (and decoded) only when an embedding misses the cache
        if acc.bank is None or acc.bank.preprocess != encoder.preprocess:
            acc.bank = DecodedImages(paths, encoder.preprocess, keys=plan.keys, on_error=opts.on_error,
                                     num_workers=opts.workers, progress=opts.progress)
        return acc.bank

    inputs = (plan.image_set.paths, plan.keys)
    clean = _encode(encoder, bank, None, inputs, opts, store)
    acc.skipped.update({f.path: f.reason for f in clean.failures})
    if not clean.ok.any():
        raise ValueError(f"no image of {len(paths)} could be read; see the skipped list for reasons")
    scorer = ConditionScorer(
        plan.image_set, clean.ok, clean.embeddings, classifier, plan.class_names, ks=plan.ks,
        n_boot=opts.n_boot, seed=opts.seed, exclude_same_group=cfg.exclude_same_group,
    )
    run = _ModelRun(encoder, label, clean, scorer, inputs)
    if "macenko" in plan.mitigations:
        from histovl.robustness.stain_lazy import lazy_macenko

        run.stain_tf = lazy_macenko(cfg.stain_reference, paths, plan.keys, clean.ok, encoder,
                                    store.root if store is not None else None)
    if acc.gallery_tile is None:
        first = int(np.flatnonzero(clean.ok)[0])
        acc.gallery_tile = GalleryTile(_tile_loader(encoder, paths[first]), plan.keys[first], encoder.weights_id)
    for mitigation in plan.mitigations:
        for cond in plan.conditions:
            _run_condition(run, mitigation, cond, bank, cfg, opts, store, acc)


def _encode(
    encoder: Encoder, bank: Callable[[], DecodedImages], transform: ImageTransform | None,
    inputs: tuple[Sequence[str], Sequence[str | None]], opts: RunOptions, store: EmbeddingCache | None,
) -> EmbeddingResult:
    """One condition's embeddings: from the cache when all are there (nothing decoded), else
    decoded once into the bank and encoded (`histovl.embed.in_memory`)."""
    cached = encode_cached(encoder, inputs[0], inputs[1], transform=transform, cache=store,
                           on_error=opts.on_error, batch_size=opts.batch_size)
    if cached is not None:
        return cached
    return encode_decoded(encoder, bank(), transform=transform, cache=store, batch_size=opts.batch_size,
                          seed=opts.seed, progress=opts.progress)


def _tile_loader(encoder: Encoder, path: str) -> Callable[[], Any]:
    """Decodes the gallery tile when called. A model that is not loaded is not kept alive for it:
    a lazy encoder's preprocessing comes from its card."""
    from histovl.data import read_rgb

    if not getattr(encoder, "is_lazy_encoder", False) or getattr(encoder, "is_loaded", True):
        tile = encoder.preprocess.to_unnormalised(read_rgb(path))
        return lambda: tile
    card = encoder.card

    def load() -> Any:
        from histovl.models.preprocess import Preprocess

        return Preprocess.from_card(card).to_unnormalised(read_rgb(path))

    return load


def _run_condition(
    run: _ModelRun, mitigation: str, cond: Condition, bank: Callable[[], DecodedImages], cfg: RobustnessConfig,
    opts: RunOptions, store: EmbeddingCache | None, acc: _Collected,
) -> None:
    """Encode one condition (cache first), score it, and append its rows."""
    transform: ImageTransform | None = None if cond.corruption is None else cond.corruption.transform(cond.level, seed=opts.seed)
    if mitigation == "macenko":
        assert run.stain_tf is not None
        transform = run.stain_tf.with_inner(transform)
    res = run.clean if transform is None else _encode(run.encoder, bank, transform, run.inputs, opts, store)
    if not np.array_equal(res.ok, run.clean.ok):
        raise RuntimeError(f"{cond.name}:{cond.level} encoded a different set of images than the clean run")
    metrics, probs = run.scorer.score(res.embeddings)
    label = run.label
    row = {"model": label if mitigation == "none" else f"{label}+{mitigation}", "corruption": cond.name, "severity": cond.level}
    row.update({m: metrics[m] for m in CSV_COLUMNS[3:]})
    acc.rows.append(row)
    acc.details.append({"model": label, "mitigation": mitigation, "corruption": cond.name,
                        "severity": cond.level, "parameter": cond.parameter, **metrics})
    acc.stats.append({"model": label, "mitigation": mitigation, "corruption": cond.name, "severity": cond.level,
                      "transform": transform.key if transform is not None else "none",
                      "n_cached": res.n_cached, "n_encoded": res.n_encoded,
                      "stain_fallbacks": getattr(transform, "n_fallback", 0)})
    if cfg.save_predictions:
        acc.predictions.append(run.scorer.predictions(probs, label, mitigation, cond.name, cond.level))
    log.info("%s %s %s:%d acc=%.4f ha@5=%.4f", label, mitigation, cond.name, cond.level,
             metrics["accuracy"], metrics["ha@5"])


def _write(
    out: Path, result: RobustnessResult, plan: _Plan, cfg: RobustnessConfig, opts: RunOptions,
    acc: _Collected, command: str,
) -> None:
    """Every output file, through `histovl.robustness.outputs`."""
    from histovl.robustness.outputs import write_robustness_outputs

    write_robustness_outputs(
        out, result, rows=acc.rows, predictions=acc.predictions, cards=acc.cards, weights_ids=acc.weights_ids,
        prompt_set=plan.prompt_set, image_set=plan.image_set, seed=opts.seed, command=command,
        gallery_tile=acc.gallery_tile, config=_run_config(plan, cfg, opts, acc),
    )


def _run_config(plan: _Plan, cfg: RobustnessConfig, opts: RunOptions, acc: _Collected) -> dict[str, Any]:
    """run.json's ``config``: the command's config, the run options, and what the run resolved."""
    return {
        **config_record(cfg),
        **opts.record(),
        "models": [str(s) if isinstance(s, str | os.PathLike) else s.card.name for s in plan.specs],
        "model_labels": list(acc.labels),
        "corruptions": [c.name for c in plan.conditions[1:]],
        "levels": levels_by_name(plan.conditions),
        "k": plan.ks,
        "data": str(plan.image_set.source),
    }


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

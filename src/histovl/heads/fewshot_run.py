"""`histovl fewshot eval` and `histovl fewshot fit`: the few-shot protocol on cached embeddings.

eval: support (+ query) data -> every image encoded once (embedding cache) -> leak-free support
      pool and query set (`histovl.heads.fewshot_split`) -> for each method x shots x seed: draw
      the support, fit the head (`histovl.heads.fewshot`), score the query -> per-run metrics,
      mean/std over seeds and a bootstrap CI of the seed-mean per method x shots, zero-shot as the
      0-shot row -> fewshot.csv, metrics.json, support_ids.csv, split.csv, fewshot_f1.png,
      run.json, report.html (`histovl.heads.fewshot_outputs`).
fit:  labelled data -> embeddings -> one head -> a head folder (head.json, head.safetensors,
      run.json) that `histovl.heads.fewshot.load_head` reads back.

Steps are named: `_prepare` (every input checked before any model work), `_encode`, `_split`,
`_run_grid`, `_summarise`; docs/fewshot.md describes the protocol and its outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from histovl.embed import cache_for, encode_images
from histovl.embed.runtimes import runtime_encoder
from histovl.errors import HistovlError
from histovl.heads.fewshot import (
    KNN_K,
    METHODS,
    TEXT_LINEAR_STEPS,
    TEXT_METHODS,
    EncoderInfo,
    FewshotHead,
    make_head,
)
from histovl.heads.fewshot_split import (
    PoolSplit,
    Shots,
    check_shots,
    draw_orders,
    leakage_units,
    split_pool,
    support_indices,
)
from histovl.models.encoder import Encoder
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.reproducibility import seed_everything

DEFAULT_SHOTS: tuple[Shots, ...] = (1, 2, 4, 8, 16, "all")
#: the per-run metrics (fewshot.csv columns after method, shots, seed).
FEWSHOT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro")


def parse_shots(value: str | Iterable[Any]) -> tuple[Shots, ...]:
    """``"1,2,all"`` or ``[1, 2, "all"]`` -> ``(1, 2, "all")``: positive integers, ascending, then all."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    ints: set[int] = set()
    want_all = False
    for item in items:
        if str(item).lower() == "all":
            want_all = True
            continue
        try:
            k = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"--shots takes positive integers and 'all', got {item!r}") from None
        if k < 1 or str(k) != str(item).strip():
            raise ValueError(f"--shots takes positive integers and 'all', got {item!r}")
        ints.add(k)
    if not ints and not want_all:
        raise ValueError("--shots is empty; give e.g. 1,2,4,8,16,all")
    return (*sorted(ints), *(("all",) if want_all else ()))


@dataclass(frozen=True)
class FewshotConfig:
    """What `histovl fewshot eval` computes (the run options are in `RunOptions`).

    Attributes:
        methods: few-shot methods (`histovl.heads.fewshot.METHODS`); None = all that apply
            (``tip`` and ``text-linear`` need a prompt set).
        shots: images per class in the support set; ``"all"`` = the whole support pool.
        seeds: support draws per shot count (seed values ``options.seed + i``); ``all`` runs once.
        query_fraction: with one data set, the share of images (whole groups) queried.
        near_duplicates: also keep near-duplicate copies (rotations, flips) on one side.
        knn_k: neighbours of the ``knn`` method.
        text_linear_steps: L-BFGS iterations of ``text-linear`` (0 = zero-shot).
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    methods: tuple[str, ...] | None = None
    shots: tuple[Shots, ...] = DEFAULT_SHOTS
    seeds: int = 5
    query_fraction: float = 0.3
    near_duplicates: bool = True
    knn_k: int = KNN_K
    text_linear_steps: int = TEXT_LINEAR_STEPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", parse_shots(self.shots))
        if self.methods is not None:
            methods = tuple(dict.fromkeys(self.methods))
            unknown = [m for m in methods if m not in METHODS]
            if unknown or not methods:
                raise ValueError(f"unknown few-shot method(s) {unknown}; choose from {', '.join(METHODS)}")
            object.__setattr__(self, "methods", methods)
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if not 0.0 < self.query_fraction < 1.0:
            raise ValueError(f"query_fraction must be between 0 and 1, got {self.query_fraction}")


@dataclass(frozen=True)
class FewshotFitConfig:
    """What `histovl fewshot fit` fits: one method and its settings."""
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    method: str = "linear"
    knn_k: int = KNN_K
    text_linear_steps: int = TEXT_LINEAR_STEPS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown few-shot method {self.method!r}; choose from {', '.join(METHODS)}")


@dataclass
class FewshotResult:
    """What a few-shot evaluation produced (also written to `out`)."""

    table: pd.DataFrame
    metrics: dict[str, Any]
    supports: pd.DataFrame
    out: Path | None
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class FewshotFitResult:
    """A fitted head and where it was saved."""

    head: FewshotHead
    out: Path | None
    n: int
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Inputs:
    support: Any
    query: Any | None
    prompt_set: Any | None
    classes: list[str]
    methods: tuple[str, ...]


@dataclass
class _Items:
    """Every readable image of the run, support set first, with its embedding."""

    records: list[Any]
    labels: np.ndarray
    embeddings: np.ndarray
    is_query: np.ndarray | None
    skipped: list[dict[str, str]]


@dataclass
class _Grid:
    rows: list[dict[str, Any]]
    supports: list[dict[str, Any]]
    replicates: dict[tuple[str, Shots], list[dict[str, np.ndarray]]]
    chosen: dict[tuple[str, Shots], list[dict[str, Any]]]


def fewshot_eval(
    model: str | Encoder, support: PathArg | Any, query: PathArg | Any | None = None,
    prompts: PathArg | Any | None = None, out: PathArg | None = None, config: FewshotConfig | None = None,
    options: RunOptions | None = None, *, command: str = "histovl fewshot eval", **overrides: Any,
) -> FewshotResult:
    """Evaluate few-shot heads against zero-shot on one data set (split by group) or two (cross-site).

    Args:
        model: a model spec or a loaded `Encoder`.
        support: labelled data the supports are drawn from (class folder, manifest, `ImageSet`).
        query: labelled data to evaluate on; None splits `support` by group (``query_fraction``).
        prompts: a prompt set: adds the zero-shot row and the ``tip``/``text-linear`` methods.
        out: output folder; None computes without writing.
        config: what to compute (`FewshotConfig`).
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``shots=(1, 4), n_boot=0``).

    Example:
        >>> r = fewshot_eval("histovl-lite", "train/", "test/", "lung-he-v1", "runs/fs")  # doctest: +SKIP
        >>> r.metrics["results"]["linear"]["16"]["mean"]["f1_macro"]  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, FewshotConfig, options)
    seed_everything(opts.seed)
    inputs = _prepare(support, query, prompts, cfg, opts)
    encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
    items = _encode(encoder, inputs, opts)
    split = _split(items, cfg, opts)
    check_shots(_pool_counts(items, split, inputs.classes), cfg.shots, _pool_phrase(split, inputs, cfg.near_duplicates))
    classifier = _text_classifier(encoder, inputs)
    scorer = _QueryScorer(items, split, inputs.classes, opts)
    grid = _run_grid(items, split, inputs, classifier, EncoderInfo.of(encoder), scorer, cfg, opts)
    zero_shot = scorer.full(classifier.probabilities(items.embeddings[split.query])) if classifier is not None else None
    metrics = _summarise(grid, zero_shot, items, split, inputs, scorer, cfg, opts)
    table = pd.DataFrame(grid.rows, columns=["method", "shots", "seed", *FEWSHOT_METRICS])
    supports = pd.DataFrame(grid.supports)
    if out is not None:
        from histovl.heads.fewshot_outputs import write_fewshot_outputs

        write_fewshot_outputs(
            Path(out), command=command, table=table, metrics=metrics, supports=supports,
            split_table=_split_table(items, split, inputs), encoder=encoder, prompt_set=inputs.prompt_set,
            config={**config_record(cfg), **opts.record(), **_resolved(inputs, cfg)},
            inputs=[str(r.path) for r in _all_records(inputs)], skipped=items.skipped, seed=opts.seed,
        )
    return FewshotResult(table, metrics, supports, Path(out) if out is not None else None, items.skipped)


# ---- steps ---------------------------------------------------------------------------------------


def _prepare(support: Any, query: Any, prompts: Any, cfg: FewshotConfig, opts: RunOptions) -> _Inputs:
    """Load and check every input before any model work, so a typo costs nothing."""
    from histovl.data import validate_labels

    support_set = _labelled_set(support, opts)
    query_set = _labelled_set(query, opts) if query is not None else None
    prompt_set = _prompt_set(prompts)
    classes = list(prompt_set.classes) if prompt_set is not None else sorted(support_set.classes)
    counts = validate_labels(support_set, classes)
    if query_set is not None:
        validate_labels(query_set, classes, allow_missing_classes=True)
    methods = _resolve_methods(cfg.methods, prompt_set is not None)
    check_shots(counts, cfg.shots, "in the support data")
    return _Inputs(support_set, query_set, prompt_set, classes, methods)


def _labelled_set(data: Any, opts: RunOptions) -> Any:
    from histovl.data.loading import load_single_label_set

    return load_single_label_set(data, task="few-shot evaluation", allow_absolute_paths=opts.allow_absolute_paths)


def _prompt_set(prompts: Any) -> Any:
    if prompts is None:
        return None
    from histovl.prompts import load_prompt_set

    return load_prompt_set(prompts)


def _resolve_methods(methods: tuple[str, ...] | None, have_prompts: bool) -> tuple[str, ...]:
    if methods is None:
        return METHODS if have_prompts else tuple(m for m in METHODS if m not in TEXT_METHODS)
    needs_text = [m for m in methods if m in TEXT_METHODS]
    if needs_text and not have_prompts:
        raise HistovlError(f"method(s) {', '.join(needs_text)} start from the zero-shot classifier: give --prompts")
    return methods


def _encode(encoder: Encoder, inputs: _Inputs, opts: RunOptions) -> _Items:
    """Encode every distinct image once (cache first); drop unreadable ones (``--on-error skip``)."""
    records = _all_records(inputs)
    paths = list(dict.fromkeys(str(r.path) for r in records))
    res = encode_images(
        encoder, paths, cache=cache_for(opts), batch_size=opts.batch_size, num_workers=opts.workers,
        on_error=opts.on_error, progress=opts.progress, seed=opts.seed,
    )
    row_of = {p: int(row) for p, row in zip(np.asarray(paths)[res.ok], range(int(res.ok.sum())), strict=True)}
    keep = [i for i, r in enumerate(records) if str(r.path) in row_of]
    if not keep:
        raise HistovlError(f"no image of {len(paths)} could be read; see the skipped list for reasons")
    kept = [records[i] for i in keep]
    n_support = len(inputs.support)
    is_query = np.array([i >= n_support for i in keep]) if inputs.query is not None else None
    return _Items(
        records=kept, labels=np.array([str(r.label) for r in kept], dtype=object),
        embeddings=res.embeddings[[row_of[str(r.path)] for r in kept]], is_query=is_query,
        skipped=[{"path": str(f.path), "reason": f.reason} for f in res.failures],
    )


def _all_records(inputs: _Inputs) -> list[Any]:
    return list(inputs.support.records) + (list(inputs.query.records) if inputs.query is not None else [])


def _split(items: _Items, cfg: FewshotConfig, opts: RunOptions) -> PoolSplit:
    """Units from paths, data groups and (optionally) near-duplicates; then pool and query."""
    links = [[f"path:{r.path}"] + ([f"group:{r.group}"] if r.group not in (None, "") else []) for r in items.records]
    if cfg.near_duplicates:
        paths = list(dict.fromkeys(str(r.path) for r in items.records))
        dup = dict(zip(paths, near_duplicate_ids(paths, opts), strict=True))
        for keys, r in zip(links, items.records, strict=True):
            keys.append(f"dup:{dup[str(r.path)]}")
    units = leakage_units(links)
    if items.is_query is None and len(set(units.tolist())) < 2:
        raise HistovlError("every image falls in one group (slide, patient or near-duplicate copy): nothing can be held out as a query set; give --query")
    split = split_pool(items.records, units, items.is_query, query_fraction=cfg.query_fraction, seed=opts.seed)
    if len(split.query) == 0:
        raise HistovlError("the query set is empty after the split; give more data or --query")
    return split


def near_duplicate_ids(paths: list[str], opts: RunOptions) -> list[str]:
    """`histovl.data.near_duplicate_groups` of `paths`, kept in the embedding cache folder.

    The grouping decodes every image again, the largest cost of a re-run on cached embeddings
    (docs/fewshot.md, Speed). Its result depends only on the images' content and the detector's
    threshold, so it is stored as ``<cache>/near-duplicates/<hash>.json`` (content key -> group)
    under a hash of both, written atomically, and reused by any later run on the same images.
    """
    import hashlib
    import json

    from histovl._io import atomic_write_json
    from histovl.data import near_duplicate_groups
    from histovl.data.splits import DEFAULT_MAX_DISTANCE
    from histovl.embed.cache import content_keys

    cache = cache_for(opts)
    keys = content_keys(paths) if cache is not None else []
    if cache is None or any(k is None for k in keys):
        return near_duplicate_groups(paths, workers=opts.workers)
    payload = json.dumps({"version": 1, "max_distance": DEFAULT_MAX_DISTANCE, "keys": sorted(set(keys))})
    target = cache.root / "near-duplicates" / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"
    if target.is_file():
        stored = json.loads(target.read_text(encoding="utf-8"))
        return [str(stored[k]) for k in keys]
    groups = near_duplicate_groups(paths, workers=opts.workers)
    by_key: dict[str, str] = {}
    for key, group in zip(keys, groups, strict=True):
        by_key.setdefault(str(key), group)  # identical files are one group anyway
    atomic_write_json(target, by_key)
    return [by_key[str(k)] for k in keys]


def _pool_counts(items: _Items, split: PoolSplit, classes: list[str]) -> dict[str, int]:
    pool_labels = items.labels[split.pool].tolist()
    return {c: pool_labels.count(c) for c in classes}


def _pool_phrase(split: PoolSplit, inputs: _Inputs, near_duplicates: bool) -> str:
    if inputs.query is None:
        return "in the support pool (the data minus the groups held out as the query set)"
    hint = "; if support and query share no image, try --no-near-duplicates" if near_duplicates and split.n_removed else ""
    return f"in the support pool ({split.n_removed} support image(s) removed for sharing a group or near-duplicate with the query{hint})"


def _text_classifier(encoder: Encoder, inputs: _Inputs) -> Any:
    if inputs.prompt_set is None:
        return None
    from histovl.zeroshot.classifier import build_text_classifier

    return build_text_classifier(encoder, inputs.prompt_set, "mean")


def _seeds(cfg: FewshotConfig, opts: RunOptions) -> list[int]:
    return [opts.seed + i for i in range(cfg.seeds)]


def _run_grid(items: _Items, split: PoolSplit, inputs: _Inputs, classifier: Any, info: EncoderInfo,
              scorer: _QueryScorer, cfg: FewshotConfig, opts: RunOptions) -> _Grid:
    """Every method x shots x seed: draw, fit, score the query; collect bootstrap replicates."""
    grid = _Grid([], [], {}, {})
    orders = {seed: draw_orders(split.pool, items.labels, split.units, inputs.classes, seed) for seed in _seeds(cfg, opts)}
    for shots in cfg.shots:
        for seed in _seeds(cfg, opts)[: 1 if shots == "all" else None]:
            idx = support_indices(orders[seed], shots, split.pool)
            grid.supports.extend(_support_rows(items, idx, shots, seed))
            for method in inputs.methods:
                head = make_head(method, inputs.classes, encoder=info, classifier=classifier, random_state=seed,
                                 knn_k=cfg.knn_k, steps=cfg.text_linear_steps)
                head.fit(items.embeddings[idx], items.labels[idx].tolist())
                point, reps = scorer.score(head.predict_proba(items.embeddings[split.query]))
                grid.rows.append({"method": method, "shots": shots, "seed": seed, **point})
                grid.replicates.setdefault((method, shots), []).append(reps)
                grid.chosen.setdefault((method, shots), []).append({"seed": seed, **head.chosen()})
    return grid


def _support_rows(items: _Items, idx: np.ndarray, shots: Shots, seed: int) -> list[dict[str, Any]]:
    return [
        {"seed": seed, "shots": shots, "class": items.labels[i], "path": str(items.records[i].path),
         "group": items.records[i].group or ""}
        for i in idx.tolist()
    ]


class _QueryScorer:
    """Point metrics and bootstrap replicates on the query set (the same resamples for every run)."""

    def __init__(self, items: _Items, split: PoolSplit, classes: list[str], opts: RunOptions) -> None:
        index = {c: i for i, c in enumerate(classes)}
        self.classes = classes
        self.y = np.array([index[v] for v in items.labels[split.query]], dtype=np.int64)
        units = split.units[split.query]
        self.groups = units if len(set(units.tolist())) < len(units) else None
        self.n_boot, self.seed = opts.n_boot, opts.seed

    def score(self, probs: np.ndarray) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
        from histovl.metrics.classification import classification_replicates

        point = point_metrics(self.y, probs)
        if self.n_boot == 0:
            return point, {}
        reps = classification_replicates(self.y, probs, probs.argmax(axis=1), len(self.classes),
                                         groups=self.groups, n_boot=self.n_boot, seed=self.seed)
        return point, {k: reps[k] for k in FEWSHOT_METRICS}

    def full(self, probs: np.ndarray) -> dict[str, Any]:
        from histovl.metrics import classification_metrics

        return classification_metrics(self.y, probs, self.classes, groups=self.groups, n_boot=self.n_boot, seed=self.seed)


def point_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """The five metrics of one run, as `classification_metrics` defines them (None if undefined).

    Computed with the bootstrap's vectorised definitions (`histovl.metrics._weighted`, tested
    equal to scikit-learn) at unit weights: about 1 ms instead of ~40 ms of scikit-learn input
    checks per call, which was a third of the grid's time.
    """
    from histovl.metrics import _weighted

    ones = np.ones((1, len(y)), dtype=np.int64)
    confusion = _weighted.confusion_from_weights(ones, y, probs.argmax(axis=1), probs.shape[1])
    values = _weighted.metrics_from_confusion(confusion)
    values["auroc_macro"] = _weighted.auroc_macro_from_per_class(_weighted.auroc_ovr_from_weights(ones, y, probs))
    return {k: (None if np.isnan(values[k][0]) else float(values[k][0])) for k in FEWSHOT_METRICS}


def _summarise(grid: _Grid, zero_shot: dict[str, Any] | None, items: _Items, split: PoolSplit,
               inputs: _Inputs, scorer: _QueryScorer, cfg: FewshotConfig, opts: RunOptions) -> dict[str, Any]:
    """metrics.json: the zero-shot row, and per method x shots the mean, std and CI over seeds."""
    from histovl.metrics import percentile_interval

    results: dict[str, dict[str, Any]] = {m: {} for m in inputs.methods}
    frame = pd.DataFrame(grid.rows)
    for (method, shots), reps in grid.replicates.items():
        runs = frame[(frame["method"] == method) & (frame["shots"].astype(str) == str(shots))]
        block: dict[str, Any] = {"n_seeds": len(runs), "mean": {}, "std": {}, "ci95": {}}
        for metric in FEWSHOT_METRICS:
            values = runs[metric].dropna().astype(float)
            block["mean"][metric] = float(values.mean()) if len(values) else None
            block["std"][metric] = float(values.std(ddof=1)) if len(values) > 1 else None
            seed_mean = np.mean([r[metric] for r in reps], axis=0) if reps and reps[0] else None
            block["ci95"][metric] = percentile_interval(seed_mean).as_list() if seed_mean is not None else [None, None]
        block["chosen"] = grid.chosen[(method, shots)]
        results[method][str(shots)] = block
    zs = None if zero_shot is None else {k: zero_shot[k] for k in ("n", *FEWSHOT_METRICS, "ci95", "per_class")}
    pool_labels = items.labels[split.pool].tolist()
    return {
        "classes": inputs.classes, "methods": list(inputs.methods), "shots": [str(s) for s in cfg.shots],
        "seeds": _seeds(cfg, opts), "n_query": int(len(split.query)), "n_support_pool": int(len(split.pool)),
        "support_pool_per_class": {c: pool_labels.count(c) for c in inputs.classes},
        "n_removed_from_pool": split.n_removed, "n_units": int(len(set(split.units.tolist()))),
        "ci_level": 0.95, "n_boot": opts.n_boot,
        "bootstrap_unit": "group" if scorer.groups is not None else "item",
        "ci_of": "mean over seeds (each bootstrap resample of the query set scored for every seed)",
        "zero_shot": zs, "results": results, "n_skipped": len(items.skipped),
    }


def _split_table(items: _Items, split: PoolSplit, inputs: _Inputs) -> pd.DataFrame:
    role = np.full(len(items.records), "removed", dtype=object)
    role[split.pool] = "pool"
    role[split.query] = "query"
    return pd.DataFrame({
        "path": [str(r.path) for r in items.records], "label": items.labels, "group": [r.group or "" for r in items.records],
        "unit": split.units, "role": role,
    })


def _resolved(inputs: _Inputs, cfg: FewshotConfig) -> dict[str, Any]:
    return {
        "support": str(inputs.support.source), "query": str(inputs.query.source) if inputs.query is not None else None,
        "methods_run": list(inputs.methods), "classes": inputs.classes, "shots": [str(s) for s in cfg.shots],
    }


# ---- fit -----------------------------------------------------------------------------------------


def fewshot_fit(
    model: str | Encoder, data: PathArg | Any, out: PathArg | None = None,
    config: FewshotFitConfig | None = None, options: RunOptions | None = None, *,
    prompts: PathArg | Any | None = None, command: str = "histovl fewshot fit", **overrides: Any,
) -> FewshotFitResult:
    """Fit one few-shot head on every labelled image of `data` and save it as a head folder.

    Args:
        model: a model spec or a loaded `Encoder` (the head records its weights id).
        data: labelled images (class folder, manifest, `ImageSet`): the support set.
        out: the head folder (head.json, head.safetensors, run.json); None fits without saving.
        config: the method and its settings (`FewshotFitConfig`).
        options: the shared run options.
        prompts: a prompt set; needed by ``tip`` and ``text-linear``; with it the head's classes
            are the prompt set's, in its order.

    Example:
        >>> fewshot_fit("histovl-lite", "labelled/", "heads/lung", method="linear")  # doctest: +SKIP
        >>> load_head("heads/lung").classes  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, FewshotFitConfig, options)
    seed_everything(opts.seed)
    from histovl.data import validate_labels

    image_set = _labelled_set(data, opts)
    prompt_set = _prompt_set(prompts)
    classes = list(prompt_set.classes) if prompt_set is not None else sorted(image_set.classes)
    validate_labels(image_set, classes)
    _resolve_methods((cfg.method,), prompt_set is not None)
    encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
    inputs = _Inputs(image_set, None, prompt_set, classes, (cfg.method,))
    items = _encode(encoder, inputs, opts)
    head = make_head(cfg.method, classes, encoder=EncoderInfo.of(encoder), classifier=_text_classifier(encoder, inputs),
                     random_state=opts.seed, knn_k=cfg.knn_k, steps=cfg.text_linear_steps)
    head.fit(items.embeddings, items.labels.tolist())
    if out is not None:
        _write_head(Path(out), head, encoder, prompt_set, image_set, items, {**config_record(cfg), **opts.record()}, command, opts.seed)
    return FewshotFitResult(head, Path(out) if out is not None else None, len(items.records), items.skipped)


def _write_head(out: Path, head: FewshotHead, encoder: Encoder, prompt_set: Any, image_set: Any, items: _Items,
                config: dict[str, Any], command: str, seed: int) -> None:
    from histovl._io import atomic_write_json
    from histovl.outputs_guard import staged_folder
    from histovl.reports import build_run_record

    record = build_run_record(
        command=command, config={**config, "data": str(image_set.source)}, models=[encoder.card], prompt_set=prompt_set,
        seed=seed, inputs=[str(p) for p in image_set.paths], skipped=items.skipped,
        extra={"weights_id": encoder.weights_id, "method": head.method, "chosen": head.chosen(),
               "class_counts": head.class_counts_},
    )
    with staged_folder(out) as stage:  # the head replaces the previous one as a whole
        head.save(stage)
        atomic_write_json(stage / "run.json", record)


"""`stainalign_fit` and `stainalign_eval`: the library behind `histovl stainalign fit / eval`.

fit: pairs CSV → tile embeddings per slide → grouped CV of the aligned model and the
no-alignment baseline (metrics with CIs) → both models retrained on all pairs and saved
(``OUT/`` aligned, ``OUT/baseline/``) with the encoder spec and tile settings they need.

eval: a saved model (the *head*) + pairs CSV → H&E bags only → predictions, metrics with CIs,
heatmaps.

Outputs are staged (`histovl.outputs_guard.staged_folder`): models, heatmaps and reports replace
the previous run's as a whole, so an interrupted run leaves the previous results or none. The
slide tilings (``OUT/tiles``) are resumed in place, not staged, and carried over.

Both take (inputs, a typed config, `RunOptions`) and run as named steps: `_pair_bags` (tile,
embed and apply the skip policy), `cross_validate` and the final fits (fit) or the saved models'
predictions (eval), `_metrics_block`, and the writers.

fit runs unchanged under `torchrun` (docs/scale-out.md): the slides are split over the ranks for
tiling and embedding (then gathered), every rank runs the same folds and trains each model with
DDP, and rank 0 alone computes the metrics and writes; every rank returns the same metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from histovl.distributed import broadcast_object, distributed_job, rank_device, run_on_blocks
from histovl.embed.cache import EmbeddingCache, cache_for
from histovl.embed.runtimes import runtime_encoder, torch_weights_id
from histovl.metrics import classification_metrics
from histovl.models.encoder import Encoder
from histovl.options import RunOptions, config_record, resolve_options, split_overrides
from histovl.outputs_guard import staged_folder
from histovl.reports import build_classification_report, write_evaluation_outputs
from histovl.reports.run_record import build_run_record
from histovl.slides.figures import heatmap_image, save_png
from histovl.slides.tiling import TileSpec
from histovl.slides.tissue import TissueParams
from histovl.stainalign.bags import (
    SlideBag,
    embed_bags,
    read_pairs,
    slide_read_failure,
    slide_tiles,
)
from histovl.stainalign.evaluate import CrossValidationResult, cross_validate, summarise
from histovl.stainalign.model import (
    HistoStainAlign,
    StainAlignParams,
    is_model_folder,
    resolve_schedule,
)


@dataclass(frozen=True)
class StainAlignFitConfig:
    """What `histovl stainalign fit` trains and how it is evaluated (run options in `RunOptions`).

    Attributes:
        spec: how slide files are tiled (folders of tiles are used as they are).
        slide_mpp: µm per level-0 pixel for slide files that record none.
        params: the models' hyper-parameters (a partial mapping is completed with the
            defaults); ``align`` and ``random_state`` are set by the command: aligned model and
            baseline, trained from `RunOptions.seed`.
        cv_folds: grouped cross-validation folds.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    spec: TileSpec = field(default_factory=TileSpec)
    slide_mpp: float | None = None
    params: StainAlignParams = field(default_factory=StainAlignParams)
    cv_folds: int = 5

    def __post_init__(self) -> None:
        if self.spec is None:
            object.__setattr__(self, "spec", TileSpec())
        if not isinstance(self.params, StainAlignParams):
            object.__setattr__(self, "params", StainAlignParams.coerce(cast(Mapping[str, Any] | None, self.params)))

    def record(self) -> dict[str, Any]:
        """As run.json's ``config`` holds it (``align`` and ``random_state`` are per model)."""
        recorded = config_record(self)
        recorded["params"] = {k: v for k, v in recorded["params"].items() if k not in ("align", "random_state")}
        return recorded


# ---- slides to bags, and what on_error="skip" leaves out ------------------------------------------


@dataclass
class _Skips:
    """What ``on_error="skip"`` left out: the pairs as read, skipped files, dropped pairs."""

    pairs: pd.DataFrame
    skipped: list[dict[str, str]]
    dropped_pairs: list[dict[str, str]]

    def counts(self) -> dict[str, int]:
        n_tiles = sum(1 for s in self.skipped if "slide" in s)
        return {"n_skipped": len(self.skipped), "n_skipped_tiles": n_tiles, "n_dropped_pairs": len(self.dropped_pairs)}


@dataclass
class _PairBags:
    """The pairs kept (readable), the bags of each read column for them, and the skips."""

    pairs: pd.DataFrame
    bags: dict[str, list[SlideBag]]
    skips: _Skips

    def embeddings(self, column: str) -> list[np.ndarray]:
        return [b.embeddings for b in self.bags[column]]


def _pair_bags(
    encoder: Encoder, pairs: pd.DataFrame, work: Path, spec: TileSpec, slide_mpp: float | None, opts: RunOptions,
    columns: tuple[str, ...],
) -> _PairBags:
    """Tile and embed the slides of `columns` (H&E and IHC for fit, H&E for eval), then drop the
    pairs with an unreadable slide (``skip``; ``raise`` has stopped at the first bad file)."""
    cache = cache_for(opts)
    all_bags: dict[str, list[SlideBag | None]] = {}
    dropped: dict[str, str] = {}
    for column in columns:
        all_bags[column], column_dropped = _bags(encoder, list(pairs[column]), work, spec, cache, slide_mpp, opts)
        dropped.update(column_dropped)
    keep, skipped, lost = _skip_record(pairs, all_bags, dropped, columns)
    kept = {c: [cast(SlideBag, all_bags[c][i]) for i in keep] for c in columns}
    return _PairBags(pairs.iloc[keep].reset_index(drop=True), kept, _Skips(pairs, skipped, lost))


def _bags(
    encoder: Encoder, slides: list[str], work: Path, spec: TileSpec, cache: EmbeddingCache | None,
    slide_mpp: float | None, opts: RunOptions,
) -> tuple[list[SlideBag | None], dict[str, str]]:
    """Bags of `slides` and, under ``on_error="skip"``, why each dropped slide was dropped.

    A dropped slide's bag is None (it could not be opened) or has no rows (no tile was readable).

    In a torchrun job each rank tiles and embeds its own block of slides; the blocks are gathered
    in rank order, so every rank ends with all bags and the same dropped slides (the skip
    decisions are made once, by the rank that read the slide). Each slide is tiled (into its own
    work folder) and embedded by exactly one rank, so no two processes write the same tile
    files; the embedding cache takes concurrent writers. An error on one rank stops all.

    Under ``"skip"`` an unreadable tile is left out of its bag (listed in `SlideBag.skipped`); a
    slide that cannot be opened, or none of whose tiles can be read, is dropped.
    """
    unique = list(dict.fromkeys(slides))  # a slide listed twice is embedded once

    def embed_block(start: int, stop: int) -> list[tuple[SlideBag | None, str]]:
        mine = unique[start:stop]
        tiles, reasons = [], {}
        for slide in mine:
            try:
                tiles.append(slide_tiles(slide, work, spec, slide_mpp=slide_mpp))
            except Exception as err:
                if opts.on_error != "skip" or not slide_read_failure(err):
                    raise
                reasons[slide] = f"slide cannot be read: {err}"
        embedded = {os.fspath(b.slide): b for b in embed_bags(encoder, tiles, cache=cache, batch_size=opts.batch_size,
                                                              on_error=opts.on_error)} if tiles else {}
        out: list[tuple[SlideBag | None, str]] = []
        for slide in mine:
            bag = embedded.get(os.fspath(Path(slide)))
            if bag is not None and len(bag.embeddings) == 0:
                out.append((bag, f"none of its {len(bag.skipped)} tile(s) can be read"))
            else:
                out.append((bag, reasons.get(slide, "")))
        return out

    gathered = [item for part in run_on_blocks(len(unique), embed_block) for item in part]
    by_slide = dict(zip(unique, gathered, strict=True))
    dropped = {s: reason for s, (_, reason) in by_slide.items() if reason}
    return [by_slide[s][0] for s in slides], dropped


def _skip_record(
    pairs: pd.DataFrame, bags: Mapping[str, list[SlideBag | None]], dropped: dict[str, str], columns: tuple[str, ...]
) -> tuple[list[int], list[dict[str, str]], list[dict[str, str]]]:
    """Pairs to keep, the skipped files (tiles and dropped slides, each once) and the dropped pairs."""
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for column in columns:
        for slide, bag in zip(pairs[column], bags[column], strict=True):
            if slide in seen:
                continue
            seen.add(slide)
            if bag is not None:
                skipped.extend({**t, "slide": slide} for t in bag.skipped)
            if slide in dropped:
                skipped.append({"path": slide, "reason": f"{dropped[slide]}; its pair is dropped"})
    keep, lost = [], []
    for i in range(len(pairs)):
        why = [f"{c} {pairs[c].iloc[i]}: {dropped[pairs[c].iloc[i]]}" for c in columns if pairs[c].iloc[i] in dropped]
        if why:
            lost.append({"he_slide": str(pairs["he_slide"].iloc[i]), "ihc_slide": str(pairs["ihc_slide"].iloc[i]),
                         "reason": "; ".join(why)})
        else:
            keep.append(i)
    if not keep:
        first = lost[0]["reason"] if lost else "no pairs"
        raise ValueError(
            f"none of the {len(pairs)} pairs has readable slides, so nothing is left to {'train on' if 'ihc_slide' in columns else 'evaluate'} "
            f"(first: {first}); check the files listed in the pairs CSV"
        )
    return keep, skipped, lost


# ---- outputs shared by fit and eval --------------------------------------------------------------


def _relative(paths: list[str], root: Path) -> list[str]:
    base = os.path.realpath(root)
    return [os.path.relpath(p, base) if os.path.realpath(p).startswith(base + os.sep) else p for p in paths]


def _predictions(pairs: pd.DataFrame, root: Path, classes: list[str], probs: dict[str, np.ndarray], primary: str) -> pd.DataFrame:
    frame = pd.DataFrame({"path": _relative(list(pairs["he_slide"]), root), "label": list(pairs["label"])})
    frame["prediction"] = [classes[i] for i in probs[primary].argmax(axis=1)]
    for k, c in enumerate(classes):
        frame[f"score:{c}"] = probs[primary][:, k]
    for name, p in probs.items():
        if name == primary:
            continue
        frame[f"{name}_prediction"] = [classes[i] for i in p.argmax(axis=1)]
        for k, c in enumerate(classes):
            frame[f"{name}_score:{c}"] = p[:, k]
    frame["group"] = list(pairs["group"])
    return frame


def write_heatmaps(model: HistoStainAlign, bags: list[SlideBag], out_dir: Path, limit: int = 12) -> list[Path]:
    """Attention heatmap PNG per H&E slide (first `limit` slides), yellow = high attention."""
    written = []
    attention = model.attention([b.embeddings for b in bags[:limit]])
    for i, (bag, att) in enumerate(zip(bags[:limit], attention, strict=True)):
        path = out_dir / "heatmaps" / f"{i:03d}_{bag.slide.stem}.png"
        save_png(heatmap_image(bag.thumbnail, bag.tiles, att, bag.extent0, bag.level0_size), path)
        written.append(path)
    return written


def _metrics_block(pairs: pd.DataFrame, classes: list[str], probs: np.ndarray, opts: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stainalign summary (`summarise`) and the full metrics, CIs resampling whole groups."""
    full = classification_metrics(list(pairs["label"]), probs, classes, groups=list(pairs["group"]),
                                  n_boot=opts.n_boot, seed=opts.seed)
    return summarise(full), full


def _write(out: Path, metrics: dict[str, Any], frame: pd.DataFrame, full: dict[str, Any], *, title: str,
           subtitle: str = "", command: str, config: dict[str, Any], encoder: Encoder, seed: int,
           inputs: list[str], skips: _Skips, extra: dict[str, Any] | None = None) -> None:
    """metrics.json, predictions.csv, run.json and report.html; skipped files and dropped pairs
    are listed in run.json (``skipped``, ``extra.dropped_pairs``), `extra` joins ``extra``."""
    run_record = build_run_record(command=command, config=config, models=[encoder.card], prompt_set=None, seed=seed,
                                  inputs=inputs, skipped=skips.skipped,
                                  extra={"dropped_pairs": skips.dropped_pairs, **(extra or {})})
    report = build_classification_report(title, full, frame, run_record, n_examples=0, subtitle=subtitle)
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=run_record, report=report)


# ---- fit -----------------------------------------------------------------------------------------


def stainalign_fit(
    pairs_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: StainAlignFitConfig | None = None,
    options: RunOptions | None = None,
    *,
    model: str | Encoder = "histovl-lite",
    **overrides: Any,
) -> dict[str, Any]:
    """Cross-validate aligned vs baseline, then train both on all pairs and save them in `out`.

    Args:
        pairs_csv: the pairs CSV (``he_slide``, ``ihc_slide``, ``label``, ``marker``[, ``group``]);
            a pair whose ``label`` is empty joins the aligned model's alignment term only (it is
            in no test fold and not in the metrics).
        out: output folder: the aligned model, ``baseline/``, tiles, heatmaps and the standard outputs.
        config: what to train (`StainAlignFitConfig`; ``params`` may be a partial mapping).
        options: the shared run options (cache, on_error, device, n_boot, seed, ...).
        model: the tile encoder (a spec or a loaded `Encoder`).
        overrides: fields of either, as keywords (``params={"epochs": 30}``, ``n_boot=0``).

    Returns the metrics written to ``metrics.json`` (aligned model's keys at the top level, the
    baseline's under ``baseline``). The binary decision threshold of every model (each fold's,
    chosen on its training part, and the final models') is in ``run.json`` under
    ``extra.decision``.

    ``on_error="raise"`` stops at the first unreadable tile or slide with an error naming it.
    ``"skip"`` leaves an unreadable tile out of its slide's bag, and drops a pair whose H&E or IHC
    slide has no readable tile; every skipped tile and dropped slide is listed under ``skipped``
    in ``run.json`` (dropped pairs under ``extra.dropped_pairs``) and counted in ``metrics.json``
    (``n_skipped``, ``n_skipped_tiles``, ``n_dropped_pairs``). With no pair left it raises
    `ValueError`.

    Example:
        >>> stainalign_fit("pairs.csv", "runs/ki67", model="histovl-lite", cv_folds=5)  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, StainAlignFitConfig, options)
    out_dir = Path(out)
    with distributed_job() as ctx:
        opts = opts.replace(device=rank_device(ctx, opts.device))
        pairs = read_pairs(pairs_csv, allow_absolute_paths=opts.allow_absolute_paths)
        encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
        data = _pair_bags(encoder, pairs, out_dir / "tiles", cfg.spec, cfg.slide_mpp, opts, ("he_slide", "ihc_slide"))
        he_x, ihc_x = data.embeddings("he_slide"), data.embeddings("ihc_slide")
        labels, groups = list(data.pairs["label"]), list(data.pairs["group"])
        # "auto" is resolved once from the whole CSV, so every fold and the final model agree
        params = StainAlignParams.coerce(cfg.params, schedule=resolve_schedule(cfg.params.schedule, "" in labels))
        # every rank runs the same folds (same seed) and trains each model data-parallel
        cv = cross_validate(he_x, ihc_x, labels, groups, params=params, n_splits=cfg.cv_folds, seed=opts.seed)
        finals = {name: HistoStainAlign.from_params(params, align=align, random_state=opts.seed)
                  .fit(he_x, ihc_x if align else None, labels)
                  for name, align in (("aligned", True), ("baseline", False))}
        metrics: dict[str, Any] = {}
        if ctx.is_main:  # the models are the same on every rank: rank 0 evaluates and writes
            spec_name = encoder.card.name if isinstance(model, Encoder) else str(model)
            metrics = _write_fit_outputs(pairs_csv, out_dir, data, cv, finals, encoder, spec_name, cfg, opts, ctx.world_size)
        metrics = broadcast_object(metrics)  # the other ranks wait here for rank 0's outputs
    return metrics


def _write_fit_outputs(
    pairs_csv: str | os.PathLike[str], out: Path, data: _PairBags, cv: CrossValidationResult,
    finals: dict[str, HistoStainAlign], encoder: Encoder, model_spec: str, cfg: StainAlignFitConfig,
    opts: RunOptions, world_size: int,
) -> dict[str, Any]:
    """Cross-validated metrics of both models, the saved models, heatmaps and the standard outputs."""
    pairs = data.pairs.iloc[cv.labelled].reset_index(drop=True)  # the scored (labelled) pairs
    aligned, aligned_full = _metrics_block(pairs, cv.class_names, cv.probabilities["aligned"], opts)
    baseline, baseline_full = _metrics_block(pairs, cv.class_names, cv.probabilities["baseline"], opts)
    metrics = {
        **aligned,
        "model": "aligned",
        "baseline": baseline,
        "evaluation": f"grouped {cv.n_splits}-fold cross-validation (out-of-fold predictions, bootstrap over groups)",
        "marker": str(pairs["marker"].iloc[0]),
        "class_names": cv.class_names,
        "n_groups": len(set(pairs["group"])),
        "n_unlabelled": len(data.pairs) - len(pairs),
        "details": {"aligned": aligned_full, "baseline": baseline_full},
        **data.skips.counts(),
    }
    saved = {"encoder": model_spec, "weights_id": encoder.weights_id, "tile_spec": asdict(cfg.spec),
             "slide_mpp": cfg.slide_mpp, "marker": metrics["marker"]}
    frame = _predictions(pairs, Path(pairs_csv).parent, cv.class_names, cv.probabilities, "aligned")
    frame["fold"] = cv.folds
    config = {"pairs": os.fspath(pairs_csv), **cfg.record(), **opts.record(),
              "encoder": model_spec, "weights_id": encoder.weights_id, "marker": metrics["marker"],
              **({"world_size": world_size} if world_size > 1 else {})}
    read = data.skips.pairs
    with staged_folder(out) as stage:  # models, heatmaps and reports replace the previous run's whole
        for name, folder in (("aligned", stage), ("baseline", stage / "baseline")):
            finals[name].save(folder, extra={**saved, "variant": name})
        write_heatmaps(finals["aligned"], data.bags["he_slide"], stage)
        _write(stage, metrics, frame, aligned_full, title=f"HistoStainAlign ({metrics['marker']}): grouped CV, aligned model",
               subtitle=f"baseline (no alignment) weighted F1 {baseline['f1_weighted']:.3f}",
               command="stainalign fit", config=config, encoder=encoder, seed=opts.seed,
               inputs=list(dict.fromkeys(list(read["he_slide"]) + list(read["ihc_slide"]))), skips=data.skips,
               extra={"decision": _decision_record(cv, finals)})
    return metrics


def _decision_record(cv: CrossValidationResult, finals: dict[str, HistoStainAlign]) -> dict[str, Any]:
    """Per model: the decision threshold on P(second class) of the final model and of each CV
    fold's model (each chosen on its own training pairs; None: argmax, e.g. more than 2 classes)."""
    rule = ("binary: the threshold on P(second class) with the best balanced accuracy (accuracy without "
            "class weights) on the model's own labelled training pairs, closest to 0.5 among ties; "
            "folded into the reported probabilities as a prior correction (0.5 is the decision point)")
    record: dict[str, Any] = {"rule": rule, "positive_class": cv.class_names[-1] if len(cv.class_names) == 2 else None}
    for name, model in finals.items():
        record[name] = {"threshold": model.threshold_, "cv_fold_thresholds": cv.thresholds.get(name, []),
                        "schedule": model.schedule_,
                        "n_labelled": model.n_labelled_, "n_unlabelled": model.n_unlabelled_}
    return record


# ---- eval ----------------------------------------------------------------------------------------


def stainalign_eval(
    head: str | os.PathLike[str],
    pairs_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: RunOptions | None = None,
    *,
    model: str | Encoder | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Predict the IHC status from the H&E slides of `pairs_csv` (IHC slides are not read).

    `head` is the folder `stainalign_fit` wrote. The encoder and tile settings are the ones
    recorded at fit time (`model` overrides the encoder; its weights must be the same). When
    ``HEAD/baseline`` exists its metrics are reported under ``baseline``. Pairs with an empty
    ``label`` are predicted (``predictions.csv``) but not scored; at least one must be labelled. `options` (and its
    fields as keywords) and ``on_error`` as in `stainalign_fit` (only H&E slides are read, so
    only they can drop a pair).
    """
    opts = resolve_options(options, **overrides)
    aligned_model, meta = HistoStainAlign.load(head)
    encoder = runtime_encoder(model if model is not None else meta["encoder"], opts)  # --runtime (docs/runtime.md)
    # the head was trained on features of these weights under any runtime (the gate bounds the difference)
    if torch_weights_id(encoder.weights_id) != torch_weights_id(meta["weights_id"]):
        raise ValueError(
            f"the encoder's weights ({encoder.weights_id}) differ from those the model was trained on "
            f"({meta['weights_id']}); pass the same --model as at fit time"
        )
    pairs = read_pairs(pairs_csv, allow_absolute_paths=opts.allow_absolute_paths)
    unknown = sorted(set(pairs["label"]) - set(aligned_model.classes_) - {""})
    if unknown:
        raise ValueError(f"labels {unknown} were not seen in training (classes: {aligned_model.classes_})")
    spec = TileSpec(**{**meta["tile_spec"], "tissue": TissueParams(**meta["tile_spec"]["tissue"])})
    out_dir = Path(out)
    data = _pair_bags(encoder, pairs, out_dir / "tiles", spec, meta.get("slide_mpp"), opts, ("he_slide",))
    metrics, frame, full = _evaluate_saved(head, aligned_model, data, pairs_csv, meta, opts)
    with staged_folder(out_dir) as stage:  # heatmaps and reports replace the previous run's whole
        write_heatmaps(aligned_model, data.bags["he_slide"], stage)
        _write(stage, metrics, frame, full, title=f"HistoStainAlign ({meta.get('marker')}): evaluation",
               command="stainalign eval", encoder=encoder, seed=opts.seed,
               config={"head": os.fspath(head), "pairs": os.fspath(pairs_csv), **opts.record(), "encoder": meta["encoder"]},
               inputs=list(data.skips.pairs["he_slide"]), skips=data.skips)
    return metrics


def _evaluate_saved(
    head: str | os.PathLike[str], aligned_model: HistoStainAlign, data: _PairBags, pairs_csv: str | os.PathLike[str],
    meta: dict[str, Any], opts: RunOptions,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Metrics of the saved aligned model (and of ``baseline/`` when saved), and the predictions."""
    he_x = data.embeddings("he_slide")
    classes = list(aligned_model.classes_)
    probs = {"aligned": aligned_model.predict_proba(he_x)}
    if is_model_folder(Path(head) / "baseline"):
        baseline_model, _ = HistoStainAlign.load(Path(head) / "baseline")
        probs["baseline"] = baseline_model.predict_proba(he_x)
    scored = np.flatnonzero(data.pairs["label"].to_numpy() != "")
    if len(scored) == 0:
        raise ValueError(f"no pair in {pairs_csv} has a label, so there is nothing to score; fill the 'label' column")
    pairs = data.pairs.iloc[scored].reset_index(drop=True)
    summary, full = _metrics_block(pairs, classes, probs["aligned"][scored], opts)
    metrics: dict[str, Any] = {**summary, "model": "aligned", "marker": meta.get("marker"), "class_names": classes,
                               "n_unlabelled": len(data.pairs) - len(scored), "details": {"aligned": full},
                               **data.skips.counts()}
    if "baseline" in probs:
        metrics["baseline"], metrics["details"]["baseline"] = _metrics_block(pairs, classes, probs["baseline"][scored], opts)
    return metrics, _predictions(data.pairs, Path(pairs_csv).parent, classes, probs, "aligned"), full

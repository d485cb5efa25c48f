"""`stainalign_fit` and `stainalign_eval`: the library behind `histovl stainalign fit / eval`.

fit: pairs CSV → tile embeddings per slide → grouped CV of the aligned model and the
no-alignment baseline (metrics with CIs) → both models retrained on all pairs and saved
(``OUT/`` aligned, ``OUT/baseline/``) with the encoder spec and tile settings they need.

eval: a saved model + pairs CSV → H&E bags only → predictions, metrics with CIs, heatmaps.

fit runs unchanged under `torchrun` (docs/scale-out.md): the slides are split over the ranks for
tiling and embedding (then gathered), every rank runs the same folds and trains each model with
DDP, and rank 0 alone computes the metrics and writes; every rank returns the same metrics.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch

from histovl.distributed import (
    broadcast_object,
    cleanup_distributed,
    current_context,
    init_distributed,
    run_on_shards,
    shard_bounds,
)
from histovl.metrics import classification_metrics
from histovl.models.encoder import Encoder
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
from histovl.stainalign.model import HistoStainAlign


def _encoder(model: str | Encoder, device: str, trust_checkpoint: bool) -> tuple[Encoder, str]:
    if isinstance(model, Encoder):
        return model, model.card.name
    from histovl.models import load_model

    return load_model(model, device=device, trust_checkpoint=trust_checkpoint), str(model)


def _bags(
    encoder: Encoder, slides: list[str], work: Path, spec: TileSpec, cache: Any, slide_mpp: float | None,
    on_error: Literal["raise", "skip"] = "raise",
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
    ctx = current_context()
    start, stop = shard_bounds(len(unique), ctx.rank, ctx.world_size)
    mine = unique[start:stop]

    def embed_mine() -> list[tuple[SlideBag | None, str]]:
        tiles, reasons = [], {}
        for slide in mine:
            try:
                tiles.append(slide_tiles(slide, work, spec, slide_mpp=slide_mpp))
            except Exception as err:
                if on_error != "skip" or not slide_read_failure(err):
                    raise
                reasons[slide] = f"slide cannot be read: {err}"
        embedded = {os.fspath(b.slide): b for b in embed_bags(encoder, tiles, cache=cache, on_error=on_error)} if tiles else {}
        out: list[tuple[SlideBag | None, str]] = []
        for slide in mine:
            bag = embedded.get(os.fspath(Path(slide)))
            if bag is not None and len(bag.embeddings) == 0:
                out.append((bag, f"none of its {len(bag.skipped)} tile(s) can be read"))
            else:
                out.append((bag, reasons.get(slide, "")))
        return out

    gathered = [item for part in run_on_shards(embed_mine) for item in part]
    by_slide = dict(zip(unique, gathered, strict=True))
    dropped = {s: reason for s, (_, reason) in by_slide.items() if reason}
    return [by_slide[s][0] for s in slides], dropped


def _skip_record(
    pairs: pd.DataFrame, bags: dict[str, list[SlideBag | None]], dropped: dict[str, str], columns: tuple[str, ...]
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


@dataclass
class _Skips:
    """What ``on_error="skip"`` left out: the pairs as read, skipped files, dropped pairs."""

    pairs: pd.DataFrame
    skipped: list[dict[str, str]]
    dropped_pairs: list[dict[str, str]]
    on_error: str

    def counts(self) -> dict[str, int]:
        n_tiles = sum(1 for s in self.skipped if "slide" in s)
        return {"n_skipped": len(self.skipped), "n_skipped_tiles": n_tiles, "n_dropped_pairs": len(self.dropped_pairs)}


def _metrics_block(pairs: pd.DataFrame, classes: list[str], probs: np.ndarray, n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    full = classification_metrics(list(pairs["label"]), probs, classes, groups=list(pairs["group"]), n_boot=n_boot, seed=seed)
    return summarise(full), full


def stainalign_fit(
    pairs_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | Encoder = "histovl-lite",
    spec: TileSpec | None = None,
    slide_mpp: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    params: dict[str, Any] | None = None,
    cv_folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    allow_absolute_paths: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
) -> dict[str, Any]:
    """Cross-validate aligned vs baseline, then train both on all pairs and save them in `out_dir`.

    Returns the metrics written to ``metrics.json`` (aligned model's keys at the top level, the
    baseline's under ``baseline``).

    ``on_error="raise"`` stops at the first unreadable tile or slide with an error naming it.
    ``"skip"`` leaves an unreadable tile out of its slide's bag, and drops a pair whose H&E or IHC
    slide has no readable tile; every skipped tile and dropped slide is listed under ``skipped``
    in ``run.json`` (dropped pairs under ``extra.dropped_pairs``) and counted in ``metrics.json``
    (``n_skipped``, ``n_skipped_tiles``, ``n_dropped_pairs``). With no pair left it raises
    `ValueError`.

    Example:
        >>> stainalign_fit("pairs.csv", "runs/ki67", model="histovl-lite", cv_folds=5)  # doctest: +SKIP
    """
    from histovl.embed import EmbeddingCache

    owns_group = not torch.distributed.is_initialized()
    ctx = init_distributed()  # one process unless started by torchrun
    if ctx.backend == "nccl":
        device = str(ctx.device)  # one GPU per rank
    out = Path(out_dir)
    pairs = read_pairs(pairs_csv, allow_absolute_paths=allow_absolute_paths)
    spec = spec or TileSpec()
    encoder, model_spec = _encoder(model, device, trust_checkpoint)
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    all_pairs = pairs
    he_all, he_dropped = _bags(encoder, list(pairs["he_slide"]), out / "tiles", spec, cache, slide_mpp, on_error)
    ihc_all, ihc_dropped = _bags(encoder, list(pairs["ihc_slide"]), out / "tiles", spec, cache, slide_mpp, on_error)
    keep, skipped, lost = _skip_record(pairs, {"he_slide": he_all, "ihc_slide": ihc_all}, {**he_dropped, **ihc_dropped},
                                       ("he_slide", "ihc_slide"))
    pairs = pairs.iloc[keep].reset_index(drop=True)
    he = [cast(SlideBag, he_all[i]) for i in keep]
    ihc = [cast(SlideBag, ihc_all[i]) for i in keep]
    he_x, ihc_x = [b.embeddings for b in he], [b.embeddings for b in ihc]
    labels, groups = list(pairs["label"]), list(pairs["group"])

    # every rank runs the same folds (same seed) and trains each model data-parallel
    cv = cross_validate(he_x, ihc_x, labels, groups, params=params, n_splits=cv_folds, seed=seed)
    finals = {}
    for name, align in (("aligned", True), ("baseline", False)):
        finals[name] = HistoStainAlign(**{**(params or {}), "align": align, "random_state": seed})
        finals[name].fit(he_x, ihc_x if align else None, labels)
    metrics: dict[str, Any] = {}
    if ctx.is_main:  # the models are the same on every rank: rank 0 evaluates and writes
        metrics = _write_fit_outputs(pairs_csv, pairs, out, cv, finals, he, encoder, model_spec, spec, slide_mpp,
                                     params, cv_folds, n_boot, seed, ctx.world_size,
                                     _Skips(all_pairs, skipped, lost, on_error))
    metrics = broadcast_object(metrics)  # the other ranks wait here for rank 0's outputs
    if owns_group:
        cleanup_distributed()
    return metrics


def _write_fit_outputs(
    pairs_csv: str | os.PathLike[str], pairs: pd.DataFrame, out: Path, cv: CrossValidationResult,
    finals: dict[str, HistoStainAlign], he: list[SlideBag], encoder: Encoder, model_spec: str, spec: TileSpec,
    slide_mpp: float | None, params: dict[str, Any] | None, cv_folds: int, n_boot: int, seed: int, world_size: int,
    skips: _Skips,
) -> dict[str, Any]:
    groups = list(pairs["group"])
    aligned, aligned_full = _metrics_block(pairs, cv.class_names, cv.probabilities["aligned"], n_boot, seed)
    baseline, baseline_full = _metrics_block(pairs, cv.class_names, cv.probabilities["baseline"], n_boot, seed)
    metrics = {
        **aligned,
        "model": "aligned",
        "baseline": baseline,
        "evaluation": f"grouped {cv.n_splits}-fold cross-validation (out-of-fold predictions, bootstrap over groups)",
        "marker": str(pairs["marker"].iloc[0]),
        "class_names": cv.class_names,
        "n_groups": len(set(groups)),
        "details": {"aligned": aligned_full, "baseline": baseline_full},
        **skips.counts(),
    }
    record_extra = {
        "encoder": model_spec, "weights_id": encoder.weights_id, "tile_spec": asdict(spec),
        "slide_mpp": slide_mpp, "marker": metrics["marker"],
    }
    for name, folder in (("aligned", out), ("baseline", out / "baseline")):
        finals[name].save(folder, extra={**record_extra, "variant": name})
    write_heatmaps(finals["aligned"], he, out)

    frame = _predictions(pairs, Path(pairs_csv).parent, cv.class_names, cv.probabilities, "aligned")
    frame["fold"] = cv.folds
    config = {"pairs": os.fspath(pairs_csv), "params": params or {}, "cv_folds": cv_folds, "n_boot": n_boot,
              "on_error": skips.on_error, **record_extra}
    if world_size > 1:
        config["world_size"] = world_size
    all_pairs = skips.pairs
    record = build_run_record(
        command="stainalign fit", config=config, models=[encoder.card], prompt_set=None, seed=seed,
        inputs=list(dict.fromkeys(list(all_pairs["he_slide"]) + list(all_pairs["ihc_slide"]))),
        skipped=skips.skipped, extra={"dropped_pairs": skips.dropped_pairs},
    )
    report = build_classification_report(
        f"HistoStainAlign ({metrics['marker']}): grouped CV, aligned model", aligned_full, frame, record, n_examples=0,
        subtitle=f"baseline (no alignment) weighted F1 {baseline['f1_weighted']}",
    )
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=record, report=report)
    return metrics


def stainalign_eval(
    model_dir: str | os.PathLike[str],
    pairs_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | Encoder | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    allow_absolute_paths: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
) -> dict[str, Any]:
    """Predict the IHC status from the H&E slides of `pairs_csv` (IHC slides are not read).

    The encoder and tile settings are the ones recorded at fit time (`model` overrides the
    encoder; its weights must be the same). When ``MODEL_DIR/baseline`` exists its metrics are
    reported under ``baseline``. `on_error` as in `stainalign_fit` (only H&E slides are read, so
    only they can drop a pair).
    """
    from histovl.embed import EmbeddingCache

    aligned_model, meta = HistoStainAlign.load(model_dir)
    encoder, _ = _encoder(model if model is not None else meta["encoder"], device, trust_checkpoint)
    if encoder.weights_id != meta["weights_id"]:
        raise ValueError(
            f"the encoder's weights ({encoder.weights_id}) differ from those the model was trained on "
            f"({meta['weights_id']}); pass the same --model as at fit time"
        )
    pairs = read_pairs(pairs_csv, allow_absolute_paths=allow_absolute_paths)
    unknown = sorted(set(pairs["label"]) - set(aligned_model.classes_))
    if unknown:
        raise ValueError(f"labels {unknown} were not seen in training (classes: {aligned_model.classes_})")
    spec = TileSpec(**{**meta["tile_spec"], "tissue": TissueParams(**meta["tile_spec"]["tissue"])})
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    out = Path(out_dir)
    all_pairs = pairs
    he_all, dropped = _bags(encoder, list(pairs["he_slide"]), out / "tiles", spec, cache, meta.get("slide_mpp"), on_error)
    keep, skipped, lost = _skip_record(pairs, {"he_slide": he_all}, dropped, ("he_slide",))
    skips = _Skips(all_pairs, skipped, lost, on_error)
    pairs = pairs.iloc[keep].reset_index(drop=True)
    he = [cast(SlideBag, he_all[i]) for i in keep]
    he_x = [b.embeddings for b in he]
    classes = list(aligned_model.classes_)
    probs = {"aligned": aligned_model.predict_proba(he_x)}
    if (Path(model_dir) / "baseline" / "stainalign.json").is_file():
        baseline_model, _ = HistoStainAlign.load(Path(model_dir) / "baseline")
        probs["baseline"] = baseline_model.predict_proba(he_x)
    summary, full = _metrics_block(pairs, classes, probs["aligned"], n_boot, seed)
    metrics: dict[str, Any] = {**summary, "model": "aligned", "marker": meta.get("marker"), "class_names": classes,
                               "details": {"aligned": full}, **skips.counts()}
    if "baseline" in probs:
        metrics["baseline"], metrics["details"]["baseline"] = _metrics_block(pairs, classes, probs["baseline"], n_boot, seed)
    write_heatmaps(aligned_model, he, out)
    frame = _predictions(pairs, Path(pairs_csv).parent, classes, probs, "aligned")
    record = build_run_record(
        command="stainalign eval",
        config={"model_dir": os.fspath(model_dir), "pairs": os.fspath(pairs_csv), "n_boot": n_boot, "encoder": meta["encoder"],
                "on_error": on_error},
        models=[encoder.card], prompt_set=None, seed=seed, inputs=list(all_pairs["he_slide"]),
        skipped=skipped, extra={"dropped_pairs": lost},
    )
    report = build_classification_report(f"HistoStainAlign ({meta.get('marker')}): evaluation", full, frame, record, n_examples=0)
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=record, report=report)
    return metrics

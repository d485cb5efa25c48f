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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from histovl.metrics import classification_metrics
from histovl.models.encoder import Encoder
from histovl.reports import build_classification_report, write_evaluation_outputs
from histovl.reports.run_record import build_run_record
from histovl.slides.figures import heatmap_image, save_png
from histovl.slides.tiling import TileSpec
from histovl.slides.tissue import TissueParams
from histovl.stainalign.bags import SlideBag, embed_bags, read_pairs, slide_tiles
from histovl.stainalign.evaluate import CrossValidationResult, cross_validate, summarise
from histovl.stainalign.model import HistoStainAlign
from histovl.train.distributed import (
    broadcast_object,
    cleanup_distributed,
    current_context,
    init_distributed,
    run_on_shards,
    shard_bounds,
)


def _encoder(model: str | Encoder, device: str, trust_checkpoint: bool) -> tuple[Encoder, str]:
    if isinstance(model, Encoder):
        return model, model.card.name
    from histovl.models import load_model

    return load_model(model, device=device, trust_checkpoint=trust_checkpoint), str(model)


def _bags(encoder: Encoder, slides: list[str], work: Path, spec: TileSpec, cache: Any, slide_mpp: float | None) -> list[SlideBag]:
    """Bags of `slides`; in a torchrun job each rank tiles and embeds its own block of slides.

    The blocks are gathered in rank order, so every rank ends with all bags. Each slide is tiled
    (into its own work folder) and embedded by exactly one rank, so no two processes write the
    same tile files; the embedding cache takes concurrent writers. An error on one rank stops all.
    """
    unique = list(dict.fromkeys(slides))  # a slide listed twice is embedded once
    ctx = current_context()
    start, stop = shard_bounds(len(unique), ctx.rank, ctx.world_size)
    mine = unique[start:stop]

    def embed_mine() -> list[SlideBag]:
        if not mine:
            return []
        tiles = [slide_tiles(s, work, spec, slide_mpp=slide_mpp) for s in mine]
        return embed_bags(encoder, tiles, cache=cache)

    gathered = [bag for part in run_on_shards(embed_mine) for bag in part]
    by_slide = dict(zip(unique, gathered, strict=True))
    return [by_slide[s] for s in slides]


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
) -> dict[str, Any]:
    """Cross-validate aligned vs baseline, then train both on all pairs and save them in `out_dir`.

    Returns the metrics written to ``metrics.json`` (aligned model's keys at the top level, the
    baseline's under ``baseline``).

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
    he = _bags(encoder, list(pairs["he_slide"]), out / "tiles", spec, cache, slide_mpp)
    ihc = _bags(encoder, list(pairs["ihc_slide"]), out / "tiles", spec, cache, slide_mpp)
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
                                     params, cv_folds, n_boot, seed, ctx.world_size)
    metrics = broadcast_object(metrics)  # the other ranks wait here for rank 0's outputs
    if owns_group:
        cleanup_distributed()
    return metrics


def _write_fit_outputs(
    pairs_csv: str | os.PathLike[str], pairs: pd.DataFrame, out: Path, cv: CrossValidationResult,
    finals: dict[str, HistoStainAlign], he: list[SlideBag], encoder: Encoder, model_spec: str, spec: TileSpec,
    slide_mpp: float | None, params: dict[str, Any] | None, cv_folds: int, n_boot: int, seed: int, world_size: int,
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
    config = {"pairs": os.fspath(pairs_csv), "params": params or {}, "cv_folds": cv_folds, "n_boot": n_boot, **record_extra}
    if world_size > 1:
        config["world_size"] = world_size
    record = build_run_record(
        command="stainalign fit", config=config, models=[encoder.card], prompt_set=None, seed=seed,
        inputs=list(dict.fromkeys(list(pairs["he_slide"]) + list(pairs["ihc_slide"]))),
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
) -> dict[str, Any]:
    """Predict the IHC status from the H&E slides of `pairs_csv` (IHC slides are not read).

    The encoder and tile settings are the ones recorded at fit time (`model` overrides the
    encoder; its weights must be the same). When ``MODEL_DIR/baseline`` exists its metrics are
    reported under ``baseline``.
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
    he = _bags(encoder, list(pairs["he_slide"]), out / "tiles", spec, cache, meta.get("slide_mpp"))
    he_x = [b.embeddings for b in he]
    classes = list(aligned_model.classes_)
    probs = {"aligned": aligned_model.predict_proba(he_x)}
    if (Path(model_dir) / "baseline" / "stainalign.json").is_file():
        baseline_model, _ = HistoStainAlign.load(Path(model_dir) / "baseline")
        probs["baseline"] = baseline_model.predict_proba(he_x)
    summary, full = _metrics_block(pairs, classes, probs["aligned"], n_boot, seed)
    metrics: dict[str, Any] = {**summary, "model": "aligned", "marker": meta.get("marker"), "class_names": classes,
                               "details": {"aligned": full}}
    if "baseline" in probs:
        metrics["baseline"], metrics["details"]["baseline"] = _metrics_block(pairs, classes, probs["baseline"], n_boot, seed)
    write_heatmaps(aligned_model, he, out)
    frame = _predictions(pairs, Path(pairs_csv).parent, classes, probs, "aligned")
    record = build_run_record(
        command="stainalign eval",
        config={"model_dir": os.fspath(model_dir), "pairs": os.fspath(pairs_csv), "n_boot": n_boot, "encoder": meta["encoder"]},
        models=[encoder.card], prompt_set=None, seed=seed, inputs=list(pairs["he_slide"]),
    )
    report = build_classification_report(f"HistoStainAlign ({meta.get('marker')}): evaluation", full, frame, record, n_examples=0)
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=record, report=report)
    return metrics

"""`histovl predict`: apply a model with a prompt set or a fitted head to images or a slide.

inputs checked (prompt set / head, data or slide, classes) → model → head/encoder check
      → encode (cache) → class probabilities → [metrics when labelled] → outputs

Every input is checked before anything is written: an unknown prompt set, a head fitted on
another encoder, prompt classes that differ from the head's, a slide no backend opens, each
stops the run with one line and an untouched output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from histovl.models.encoder import Encoder
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.predict.geojson import OBJECT_TYPES, ObjectType
from histovl.predict.scoring import (
    POOLING_CHOICES,
    Pooling,
    Scorer,
    Sources,
    build_scorer,
    load_sources,
)
from histovl.reproducibility import seed_everything
from histovl.zeroshot.classifier import Aggregate

LabelsMode = Literal["auto", "ignore"]


@dataclass(frozen=True)
class PredictConfig:
    """What `histovl predict` computes (the run options are in `RunOptions`).

    Attributes:
        prompts: a prompt-set name, YAML path or `PromptSet` (zero-shot scoring).
        head: a few-shot head folder (``histovl fewshot fit``) or a loaded head; with `prompts`
            too, the head scores and the prompt set must name the same classes.
        aggregate: with prompts, ``mean`` or ``max`` over a class's descriptions.
        labels: ``auto`` uses labels when the data has them (a manifest ``label`` column, or
            sub-folders all named after classes) and adds metrics; ``ignore`` never does.
        as_slide: read a folder as one slide made of tiles (``tile_x<X>_y<Y>.png``), not as images.
        tile_size, mpp, magnification, slide_mpp, tissue_threshold, max_bad_tiles: slide tiling
            (as `histovl slides embed`; see `histovl.slides.TileSpec`).
        tiling: folder holding (or to hold) the slide's tiling; default ``<out>/tiling``.
        force: re-tile the slide even when the tiling folder holds a finished tiling.
        pooling: slide-level pooling, ``top-j`` (MI-Zero) or ``mean`` (docs/predict.md).
        top_j: tiles pooled per class with ``top-j``.
        geojson_object: QuPath object type of each tile feature: ``tile`` or ``annotation``.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    prompts: Any = None
    head: Any = None
    aggregate: Aggregate = "mean"
    labels: LabelsMode = "auto"
    as_slide: bool = False
    tile_size: int = 224
    mpp: float | None = None
    magnification: float | None = None
    slide_mpp: float | None = None
    tissue_threshold: float = 0.5
    max_bad_tiles: int | None = None
    tiling: Path | None = None
    force: bool = False
    pooling: Pooling = "top-j"
    top_j: int = 10
    geojson_object: ObjectType = "tile"

    def __post_init__(self) -> None:
        if self.tiling is not None and not isinstance(self.tiling, Path):
            object.__setattr__(self, "tiling", Path(os.fspath(self.tiling)))
        for name, value, choices in (("labels", self.labels, ("auto", "ignore")), ("pooling", self.pooling, POOLING_CHOICES),
                                     ("geojson_object", self.geojson_object, OBJECT_TYPES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        if self.top_j < 1:
            raise ValueError(f"top_j must be at least 1, not {self.top_j}")

    def tile_spec(self) -> Any:
        """The `histovl.slides.TileSpec` of the slide settings."""
        from histovl.slides import TileSpec

        return TileSpec(size=self.tile_size, mpp=self.mpp, magnification=self.magnification,
                        tissue_threshold=self.tissue_threshold, max_bad_tiles=self.max_bad_tiles)


@dataclass
class PredictResult:
    """What a predict run produced (also written to `out`).

    Attributes:
        kind: ``images`` or ``slide``.
        predictions: the predictions.csv table (one row per image, or per tile of a slide).
        probabilities: [n, C] class probabilities, rows as in `predictions`.
        metrics: metrics.json: `histovl zeroshot`'s metrics when labelled, else predicted counts.
        slide: slide.json (slides only): pooled scores, pooling, prediction, tile counts.
        n_encoded / n_cached: images (tiles) encoded now / read from the embedding cache.
    """

    kind: Literal["images", "slide"]
    predictions: pd.DataFrame
    probabilities: np.ndarray
    class_names: list[str]
    metrics: dict[str, Any]
    out: Path | None
    slide: dict[str, Any] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_encoded: int = 0
    n_cached: int = 0


def predict(
    model: str | Encoder, data: PathArg | Any, out: PathArg | None = None,
    config: PredictConfig | None = None, options: RunOptions | None = None, *,
    command: str = "histovl predict", **overrides: Any,
) -> PredictResult:
    """Classify images or a slide with a prompt set or a few-shot head; labels optional.

    Args:
        model: a model spec (``histovl-lite``, a fine-tuned model folder, ...) or an `Encoder`.
        data: a folder of images (flat or nested; class sub-folders optional), a CSV manifest
            (``path``, optional ``label``/``group``), an `ImageSet`, or a slide file (anything
            `histovl slides` opens; a folder of tiles with ``as_slide``).
        out: output folder; None computes without writing (images only: a slide needs a folder).
        config: what to compute (`PredictConfig`): the scoring source, labels, slide settings.
        options: the shared run options (cache, batch size, on_error, n_boot, seed, ...).
        overrides: fields of either, as keywords (``prompts="lung-he-v1"``).

    Example:
        >>> r = predict("histovl-lite", "my_tiles/", "runs/p", prompts="lung-he-v1")  # doctest: +SKIP
        >>> r.predictions[["path", "prediction", "margin"]].head()  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, PredictConfig, options)
    seed_everything(opts.seed)
    sources = load_sources(cfg.prompts, cfg.head)
    if _is_slide(data, cfg):
        return _predict_slide(model, Path(data), out, sources, cfg, opts, command)
    return _predict_images(model, data, out, sources, cfg, opts, command)


def _is_slide(data: Any, cfg: PredictConfig) -> bool:
    """A slide is any existing file but a .csv manifest (or a folder, with ``as_slide``)."""
    if not isinstance(data, str | os.PathLike):
        return False
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data {os.fspath(data)!r} does not exist; give a folder of images, a CSV manifest or a slide file")
    return cfg.as_slide if path.is_dir() else path.suffix.lower() != ".csv"


def _encoder_and_scorer(model: Any, sources: Sources, cfg: PredictConfig, opts: RunOptions) -> tuple[Encoder, Scorer]:
    from histovl.embed.runtimes import runtime_encoder

    encoder = runtime_encoder(model, opts)  # --runtime (docs/runtime.md)
    return encoder, build_scorer(sources, encoder, cfg.aggregate)


def _predict_images(model: Any, data: Any, out: Any, sources: Sources, cfg: PredictConfig, opts: RunOptions, command: str) -> PredictResult:
    from histovl.predict.images import load_images, predict_images

    image_set, labelled = load_images(data, sources.classes, labels=cfg.labels, allow_absolute_paths=opts.allow_absolute_paths)
    encoder, scorer = _encoder_and_scorer(model, sources, cfg, opts)
    res = predict_images(encoder, scorer, image_set, labelled, opts)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.predict.outputs import write_image_outputs

        extra = {"data": str(image_set.source), "kind": "images", "labelled": labelled}
        record = _run_record(command, cfg, opts, encoder, scorer, sources, [str(p) for p in image_set.paths], res.skipped, extra)
        write_image_outputs(out_dir, res, record, f"Predictions — {encoder.card.name}")
    return PredictResult("images", res.frame, res.probs, list(scorer.classes), res.metrics, out_dir,
                         skipped=res.skipped, n_encoded=res.n_encoded, n_cached=res.n_cached)


def _predict_slide(model: Any, slide: Path, out: Any, sources: Sources, cfg: PredictConfig, opts: RunOptions, command: str) -> PredictResult:
    from histovl.predict.slide import check_slide, predict_slide

    if out is None and cfg.tiling is None:
        raise ValueError("predicting a slide needs an output folder (out) or a tiling folder (tiling)")
    spec = cfg.tile_spec()
    check_slide(slide, spec, cfg.slide_mpp)
    out_dir = Path(out) if out is not None else None
    tiling_dir = cfg.tiling or Path(out) / "tiling"
    encoder, scorer = _encoder_and_scorer(model, sources, cfg, opts)
    res = predict_slide(encoder, scorer, slide, tiling_dir, spec, slide_mpp=cfg.slide_mpp, force=cfg.force,
                        pooling=cfg.pooling, top_j=cfg.top_j, out=out_dir, opts=opts)
    if out_dir is not None:
        from histovl.predict.outputs import write_slide_outputs

        extra = {"data": str(slide), "kind": "slide", "tiling": str(tiling_dir)}
        tile_paths = [str(tiling_dir / p) for p in res.embedding.tiles["path"]]
        record = _run_record(command, cfg, opts, encoder, scorer, sources, tile_paths, [], extra)
        write_slide_outputs(out_dir, res, record, f"Slide prediction — {encoder.card.name}", cfg.geojson_object)
    se = res.embedding
    return PredictResult("slide", res.frame, res.probs, list(scorer.classes), dict(res.slide), out_dir, slide=res.slide,
                         n_encoded=se.n_encoded, n_cached=se.n_cached)


def _run_record(command: str, cfg: PredictConfig, opts: RunOptions, encoder: Encoder, scorer: Scorer, sources: Sources,
                inputs: list[str], skipped: list[dict[str, str]], extra: dict[str, Any]) -> dict[str, Any]:
    """run.json: the config (scoring sources by name), the run options, and what was resolved."""
    from histovl.reports import build_run_record

    named = replace(cfg, prompts=getattr(sources.prompt_set, "name", None), head=sources.head_path)
    config = {**config_record(named), **opts.record(), **extra, "source": sources.kind, "classes": list(scorer.classes)}
    return build_run_record(
        command=command, config=config, models=[encoder.card], prompt_set=sources.prompt_set, seed=opts.seed,
        inputs=inputs, skipped=skipped, extra={"weights_id": encoder.weights_id, **scorer.record()},
    )


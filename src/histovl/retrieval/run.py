"""`histovl retrieve`: leave-one-out image→image retrieval on a labelled set, end to end.

files → data → embed (cache) → index → search (minus self and group) → metrics + CIs
      → metrics.json, predictions.csv, run.json, report.html (with a gallery)

The run is named steps: `labelled_images` (inputs checked before any model work),
`encode_records` (through the cache; unreadable images skipped or raised), `_rank` (index and
leave-one-out search), `_score` (metrics with CIs) and `_write` (the output folder).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

from histovl.embed import encode_with_options
from histovl.options import PathArg, RunOptions, config_record, split_overrides
from histovl.retrieval.evaluation import LeaveOneOut, leave_one_out, metric_ks, retrieval_metrics
from histovl.retrieval.storage import IndexOptions

if TYPE_CHECKING:
    from histovl.data import ImageSet
    from histovl.models.encoder import Encoder

log = logging.getLogger(__name__)

GroupBy = Literal["data", "near-duplicates", "none"]


@dataclass(frozen=True)
class RetrieveConfig:
    """What `histovl retrieve` computes (the run options are in `RunOptions`).

    Attributes:
        k: cut-offs to report besides the fixed ones (1, 5, 10).
        exclude_same_group: a query never retrieves images of its own group (patient, slide,
            source image): near-duplicates would otherwise make retrieval look far better.
        group_by: where groups come from: the data's ``group`` column, ``near-duplicates``
            (`histovl.data.near_duplicates`, for augmented sets such as LC25000), or ``none``.
        storage: index storage type (``flat`` exact float32; ``flat-f16``; ``ivf``; ``hnsw``).
        index_options: tuning of the approximate storage types (`IndexOptions`).
        save_index: also write the index to ``out/index`` (reusable by `histovl index query`).
        n_gallery: queries shown with their results in the report.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # --runtime onnx|onnx-int8 (docs/runtime.md)

    k: tuple[int, ...] = (5, 10)
    exclude_same_group: bool = True
    group_by: GroupBy = "data"
    storage: str = "flat"
    index_options: IndexOptions | None = None
    save_index: bool = False
    n_gallery: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(int(x) for x in self.k))


@dataclass
class RetrievalResult:
    """What a retrieval run produced (also written to `out`)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    out: Path | None
    search: LeaveOneOut
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class EncodedRecords:
    """The records whose image could be read, their embeddings (same order), and the rest."""

    records: list[Any]
    embeddings: np.ndarray
    skipped: list[dict[str, str]]


@dataclass
class _Ranked:
    """The leave-one-out search and what it was run on."""

    paths: list[str]
    labels: list[str]
    groups: list[str | None] | None
    ks: list[int]
    search: LeaveOneOut


def resolve_groups(paths: Sequence[str], data_groups: Sequence[str | None], group_by: GroupBy, *, workers: int | None) -> list[str | None] | None:
    """The group of each image: the data's `group` column, near-duplicate groups, or none."""
    if group_by == "none":
        return None
    if group_by == "near-duplicates":
        from histovl.data.near_duplicates import near_duplicate_groups

        return list(near_duplicate_groups(paths, workers=workers))
    if group_by != "data":
        raise ValueError(f"group_by must be 'data', 'near-duplicates' or 'none', got {group_by!r}")
    groups = list(data_groups)
    return groups if any(g is not None for g in groups) else None


def retrieve(
    model: str | Encoder, data: PathArg | Any, out: PathArg | None = None,
    config: RetrieveConfig | None = None, options: RunOptions | None = None, *,
    command: str = "histovl retrieve", **overrides: Any,
) -> RetrievalResult:
    """Query every labelled image against all the others and score the rankings.

    Args:
        model: a model spec (see `histovl models`) or a loaded `Encoder`.
        data: a class folder, a CSV manifest (optional `group` column) or an `ImageSet`.
        out: output folder; None computes without writing.
        config: what to compute (`RetrieveConfig`).
        options: the shared run options (cache, batch size, on_error, n_boot — whole groups are
            resampled when groups exist —, seed, ...).
        overrides: fields of either, as keywords (``n_boot=0``, ``group_by="none"``).

    Example:
        >>> r = retrieve("histovl-lite", "tiles/", out="runs/retrieval")  # doctest: +SKIP
        >>> r.metrics["ha@5"], r.metrics["ci95"]["ha@5"]  # doctest: +SKIP
    """
    from histovl.embed.encoders import open_encoder
    from histovl.reproducibility import seed_run

    cfg, opts = split_overrides(overrides, config, RetrieveConfig, options)
    seed_run(opts.seed)
    image_set = labelled_images(data, opts)
    encoder = open_encoder(model, opts)  # loads the model only if an image misses the cache
    encoded = encode_records(encoder, image_set.records, opts)
    if len(encoded.records) < 2:
        raise ValueError(f"only {len(encoded.records)} of {len(image_set)} images could be read; retrieval needs at least two")
    ranked = _rank(encoded, cfg, opts)
    ranked.search.index.model = model_provenance(encoder, model)
    ranked.search.index.cache_key = embedding_cache_key(encoder)
    metrics = _score(ranked, cfg, opts, n_skipped=len(encoded.skipped))

    from histovl.retrieval.outputs import retrieval_predictions_frame

    preds = retrieval_predictions_frame(
        ranked.paths, ranked.labels, ranked.search.result, class_names=sorted(set(ranked.labels)),
        groups=ranked.groups, root=image_set.root,
    )
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        _write(out_dir, command, metrics, preds, ranked, encoder, image_set, encoded.skipped, cfg, opts)
    return RetrievalResult(metrics, preds, out_dir, ranked.search, encoded.skipped)


def labelled_images(data: Any, opts: RunOptions) -> ImageSet:
    """The image set, checked to hold one label per image (before any model work)."""
    from histovl.data.loading import load_single_label_set

    return load_single_label_set(data, task="retrieval evaluation", allow_absolute_paths=opts.allow_absolute_paths)


def encode_records(encoder: Encoder, records: Sequence[Any], opts: RunOptions) -> EncodedRecords:
    """Encode the records' images through the cache; keep the readable ones (``on_error``)."""
    res = encode_with_options(encoder, [str(r.path) for r in records], opts)
    kept = [r for r, ok in zip(records, res.ok, strict=True) if ok]
    return EncodedRecords(kept, res.embeddings, [f.to_dict() for f in res.failures])


def _rank(encoded: EncodedRecords, cfg: RetrieveConfig, opts: RunOptions) -> _Ranked:
    """Groups, then the index and every image's leave-one-out top-k."""
    paths = [str(r.path) for r in encoded.records]
    labels = [str(r.label) for r in encoded.records]
    groups = resolve_groups(paths, [r.group for r in encoded.records], cfg.group_by, workers=opts.workers)
    if cfg.exclude_same_group and groups is None:
        log.warning("no groups (patient/slide/source image): only each query itself is excluded")
    ks = metric_ks(cfg.k)
    search = leave_one_out(
        encoded.embeddings, paths, labels, groups, k=max(ks), exclude_same_group=cfg.exclude_same_group,
        storage=cfg.storage, options=cfg.index_options,
    )
    return _Ranked(paths, labels, groups, ks, search)


def _score(ranked: _Ranked, cfg: RetrieveConfig, opts: RunOptions, *, n_skipped: int) -> dict[str, Any]:
    """HA@K, recall@K, mMV@K, mAP@K with bootstrap CIs, and how the run excluded neighbours."""
    labels, groups, search = ranked.labels, ranked.groups, ranked.search
    retrieved = [[labels[i] if i >= 0 else None for i in row] for row in search.result.ids.tolist()]
    metrics = retrieval_metrics(
        retrieved, labels, search.n_relevant, ks=ranked.ks, groups=groups, n_boot=opts.n_boot, seed=opts.seed,
    )
    metrics["exclusion"] = (
        f"each query and every image of its group ({cfg.group_by} groups, {len(set(groups or []))} groups)"
        if cfg.exclude_same_group and groups is not None else "each query itself"
    )
    metrics["storage"] = cfg.storage
    metrics["exact_search"] = search.index.exact
    metrics["n_skipped"] = n_skipped
    return metrics


def _write(
    out_dir: Path, command: str, metrics: dict[str, Any], preds: pd.DataFrame, ranked: _Ranked, encoder: Encoder,
    image_set: ImageSet, skipped: list[dict[str, str]], cfg: RetrieveConfig, opts: RunOptions,
) -> None:
    """metrics.json, predictions.csv, run.json, report.html (and the index with ``save_index``)."""
    from histovl.outputs_guard import staged_folder
    from histovl.reports import build_run_record, write_evaluation_outputs
    from histovl.retrieval.outputs import build_retrieval_report

    config = {
        **config_record(cfg), **opts.record(),
        "k": list(ranked.ks), "index_options": (cfg.index_options or IndexOptions()).to_dict(),
        "data": str(image_set.source),
    }
    record = build_run_record(
        command=command, config=config, models=[encoder.card], prompt_set=None, seed=opts.seed,
        inputs=[str(p) for p in image_set.paths], skipped=skipped,
        extra={"weights_id": encoder.weights_id, "cache_key": ranked.search.index.cache_key},
    )
    report = build_retrieval_report(
        metrics, paths=ranked.paths, labels=ranked.labels, result=ranked.search.result, run_record=record,
        subtitle=f"{encoder.card.name} on {image_set.source}", n_gallery=cfg.n_gallery, seed=opts.seed,
    )
    with staged_folder(out_dir) as stage:  # the index too: the folder is replaced as a whole
        write_evaluation_outputs(stage, metrics=metrics, predictions=preds, run_record=record, report=report)
        if cfg.save_index:
            ranked.search.index.save(stage / "index")


def model_provenance(encoder: Encoder, spec: str | Encoder) -> dict[str, Any]:
    """What an index records about the model its vectors came from."""
    return {
        "spec": spec if isinstance(spec, str) else encoder.card.name,
        "weights_id": encoder.weights_id,
        "card": encoder.card.to_dict(),
    }


def embedding_cache_key(encoder: Encoder) -> str:
    from histovl.embed.cache import namespace_key

    return namespace_key(weights_id=encoder.weights_id, preprocessing=encoder.card.preprocessing_key())

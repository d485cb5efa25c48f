"""`histovl retrieve`: leave-one-out image→image retrieval on a labelled set, end to end.

files → data → embed (cache) → index → search (minus self and group) → metrics + CIs
      → metrics.json, predictions.csv, run.json, report.html (with a gallery)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from histovl.embed import EmbeddingCache, encode_images
from histovl.models.encoder import Encoder
from histovl.retrieval.evaluation import LeaveOneOut, leave_one_out, metric_ks, retrieval_metrics
from histovl.retrieval.storage import IndexOptions

log = logging.getLogger(__name__)

GroupBy = Literal["data", "near-duplicates", "none"]


@dataclass
class RetrievalResult:
    """What a retrieval run produced (also written to `out`)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    out: Path | None
    search: LeaveOneOut
    skipped: list[dict[str, str]] = field(default_factory=list)


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
    model: str | Encoder,
    data: str | os.PathLike[str] | Any,
    *,
    out: str | os.PathLike[str] | None,
    k: Sequence[int] = (5, 10),
    exclude_same_group: bool = True,
    group_by: GroupBy = "data",
    storage: str = "flat",
    index_options: IndexOptions | None = None,
    save_index: bool = False,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    allow_absolute_paths: bool = False,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    n_gallery: int = 8,
    progress: bool = True,
    command: str = "histovl retrieve",
) -> RetrievalResult:
    """Query every labelled image against all the others and score the rankings.

    Args:
        model: a model spec (see `histovl models`) or a loaded `Encoder`.
        data: a class folder, a CSV manifest (optional `group` column) or an `ImageSet`.
        out: output folder; None computes without writing.
        k: cut-offs to report besides the fixed ones (1, 5, 10).
        exclude_same_group: a query never retrieves images of its own group (patient, slide,
            source image): near-duplicates would otherwise make retrieval look far better.
        group_by: where groups come from: the data's ``group`` column, ``near-duplicates``
            (`histovl.data.near_duplicates`, for augmented sets such as LC25000), or ``none``.
        storage: index storage type (``flat`` exact float32; ``flat-f16``; ``ivf``; ``hnsw``).
        save_index: also write the index to ``out/index`` (reusable by `histovl index query`).
        n_boot: bootstrap resamples for ``ci95`` (whole groups when groups exist).
        n_gallery: queries shown with their results in the report.

    Example:
        >>> r = retrieve("histovl-lite", "tiles/", out="runs/retrieval")  # doctest: +SKIP
        >>> r.metrics["ha@5"], r.metrics["ci95"]["ha@5"]  # doctest: +SKIP
    """
    from histovl.data import load_image_set
    from histovl.models import load_model
    from histovl.reproducibility import seed_everything

    seed_everything(seed)
    image_set: Any = data if hasattr(data, "records") else load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError(f"{image_set.source} is multi-label; retrieval evaluation needs one `label` per image")
    if not image_set.has_labels:
        raise ValueError(f"{image_set.source} has no labels; give class folders or a `label` column")
    encoder = model if isinstance(model, Encoder) else load_model(str(model), device=device, trust_checkpoint=trust_checkpoint)
    store = EmbeddingCache(cache) if use_cache else None
    all_paths = [str(p) for p in image_set.paths]
    res = encode_images(
        encoder, all_paths, cache=store, batch_size=batch_size, num_workers=num_workers,
        on_error=on_error, progress=progress, seed=seed,
    )
    skipped = [f.to_dict() for f in res.failures]
    records = [r for r, ok in zip(image_set.records, res.ok, strict=True) if ok]
    if len(records) < 2:
        raise ValueError(f"only {len(records)} of {len(all_paths)} images could be read; retrieval needs at least two")
    paths = [str(r.path) for r in records]
    labels = [str(r.label) for r in records]
    groups = resolve_groups(paths, [r.group for r in records], group_by, workers=num_workers)
    if exclude_same_group and groups is None:
        log.warning("no groups (patient/slide/source image): only each query itself is excluded")
    ks = metric_ks(k)
    search = leave_one_out(
        res.embeddings, paths, labels, groups, k=max(ks), exclude_same_group=exclude_same_group,
        storage=storage, options=index_options,
    )
    search.index.model = model_provenance(encoder, model)
    search.index.cache_key = embedding_cache_key(encoder)
    retrieved = [[labels[i] if i >= 0 else None for i in row] for row in search.result.ids.tolist()]
    excluding = exclude_same_group and groups is not None
    metrics = retrieval_metrics(
        retrieved, labels, search.n_relevant, ks=ks, groups=groups, n_boot=n_boot, seed=seed,
    )
    metrics["exclusion"] = (
        f"each query and every image of its group ({group_by} groups, {len(set(groups or []))} groups)"
        if excluding else "each query itself"
    )
    metrics["storage"] = storage
    metrics["exact_search"] = search.index.exact
    metrics["n_skipped"] = len(skipped)

    from histovl.retrieval.outputs import build_retrieval_report, retrieval_predictions_frame

    class_names = sorted(set(labels))
    preds = retrieval_predictions_frame(
        paths, labels, search.result, class_names=class_names, groups=groups, root=image_set.root
    )
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.reports import build_run_record, write_evaluation_outputs

        config = {
            "k": list(ks), "exclude_same_group": exclude_same_group, "group_by": group_by,
            "storage": storage, "index_options": (index_options or IndexOptions()).to_dict(),
            "batch_size": batch_size, "on_error": on_error, "n_boot": n_boot, "device": device,
            "data": str(image_set.source), "cache": str(store.root) if store else None,
        }
        record = build_run_record(
            command=command, config=config, models=[encoder.card], prompt_set=None, seed=seed,
            inputs=all_paths, skipped=skipped,
            extra={"weights_id": encoder.weights_id, "cache_key": search.index.cache_key},
        )
        report = build_retrieval_report(
            metrics, paths=paths, labels=labels, result=search.result, run_record=record,
            subtitle=f"{encoder.card.name} on {image_set.source}", n_gallery=n_gallery, seed=seed,
        )
        write_evaluation_outputs(out_dir, metrics=metrics, predictions=preds, run_record=record, report=report)
        if save_index:
            search.index.save(out_dir / "index")
    return RetrievalResult(metrics, preds, out_dir, search, skipped)


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


"""`predict` on a set of images: a plain folder (flat or nested), class folders, or a manifest.

Labels are optional. A manifest's ``label`` column is used when present; a folder counts as
labelled only when every sub-folder is named after a class of the scorer and no image lies
directly in it (otherwise sub-folders are just folders: slides, patients, batches). With labels,
the metrics are exactly `histovl zeroshot`'s (`histovl.metrics.classification_metrics`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.data import DEFAULT_IMAGE_EXTENSIONS, ImageSet, load_image_set, validate_labels
from histovl.embed import cache_for, encode_images
from histovl.models.encoder import Encoder
from histovl.options import RunOptions
from histovl.predict.scoring import Scorer, margins
from histovl.reports import predictions_frame


@dataclass
class ImagePredictions:
    """Scores of the readable images of a set (and metrics when it is labelled)."""

    image_set: ImageSet
    records: list[Any]
    probs: np.ndarray
    frame: pd.DataFrame
    labelled: bool
    metrics: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_encoded: int = 0
    n_cached: int = 0


def load_images(data: Any, classes: list[str], *, labels: str, allow_absolute_paths: bool) -> tuple[ImageSet, bool]:
    """The image set and whether its labels are used (checked against `classes` when they are)."""
    if isinstance(data, ImageSet):
        image_set = data
    else:
        path = Path(data)
        folder_labels = path.is_dir() and labels == "auto" and class_folders_match(path, classes)
        image_set = load_image_set(path, allow_absolute_paths=allow_absolute_paths, folder_labels=folder_labels)
    if image_set.multilabel and labels == "auto":
        raise ValueError(f"{image_set.source} holds multi-label data (a `labels` column); predict is single-label: "
                         "use `histovl multilabel`, or --labels ignore to predict without them")
    labelled = labels == "auto" and len(image_set) > 0 and image_set.has_labels
    if labelled:
        validate_labels(image_set, classes, allow_missing_classes=True)
    return image_set, labelled


def class_folders_match(folder: Path, classes: list[str]) -> bool:
    """True when `folder` looks like a class-folder tree of exactly these classes' names."""
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    subdirs = [e.name for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in DEFAULT_IMAGE_EXTENSIONS]
    return bool(subdirs) and not loose and set(subdirs) <= set(classes)


def predict_images(encoder: Encoder, scorer: Scorer, image_set: ImageSet, labelled: bool, opts: RunOptions) -> ImagePredictions:
    """Encode (cache first), score, and tabulate; metrics with CIs when labelled."""
    res = encode_images(
        encoder, image_set.paths, cache=cache_for(opts), batch_size=opts.batch_size, num_workers=opts.workers,
        on_error=opts.on_error, progress=opts.progress, seed=opts.seed,
    )
    if not res.ok.any():
        raise ValueError(f"no image of {len(image_set)} could be read; see the skipped list for reasons")
    records = [r for r, keep in zip(image_set.records, res.ok, strict=True) if keep]
    probs = scorer.probabilities(res.embeddings)
    classes = list(scorer.classes)
    labels = [str(r.label) for r in records] if labelled else None
    frame = prediction_table([r.path for r in records], labels, probs, classes, root=image_set.root)
    metrics = evaluate(records, probs, classes, opts) if labelled else summary(frame, classes)
    skipped = [{"path": f.path, "reason": f.reason} for f in res.failures]
    metrics["n_skipped"] = len(skipped)
    return ImagePredictions(image_set, records, probs, frame, labelled, metrics, skipped, res.n_encoded, res.n_cached)


def prediction_table(paths: list[Any], labels: list[str] | None, probs: np.ndarray, classes: list[str], *,
                     root: Any = None, **columns: Any) -> pd.DataFrame:
    """predictions.csv: path, [label], [extra columns], prediction, margin, score:<class>..."""
    frame = predictions_frame(paths, labels, probs, classes, root=root)
    at = frame.columns.get_loc("prediction")
    for offset, (name, values) in enumerate(columns.items()):
        frame.insert(at + offset, name, values)
    frame.insert(frame.columns.get_loc("prediction") + 1, "margin", margins(probs))
    return frame


def evaluate(records: list[Any], probs: np.ndarray, classes: list[str], opts: RunOptions) -> dict[str, Any]:
    """`histovl zeroshot`'s metrics: grouped bootstrap CIs when the data has groups."""
    from histovl.metrics import classification_metrics

    index = {c: i for i, c in enumerate(classes)}
    groups = [r.group for r in records]
    metrics = classification_metrics(
        np.array([index[str(r.label)] for r in records]), probs, classes,
        groups=np.array(groups, dtype=object) if any(g is not None for g in groups) else None,
        n_boot=opts.n_boot, seed=opts.seed,
    )
    metrics["labelled"] = True
    return metrics


def summary(frame: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """metrics.json without labels: counts per predicted class and the margin distribution."""
    counts = frame["prediction"].value_counts()
    m = frame["margin"].to_numpy()
    return {
        "labelled": False,
        "n": len(frame),
        "class_names": classes,
        "predicted_counts": {c: int(counts.get(c, 0)) for c in classes},
        "margin_mean": float(m.mean()) if len(m) else None,
        "margin_quartiles": [float(q) for q in np.quantile(m, [0.25, 0.5, 0.75])] if len(m) else None,
    }

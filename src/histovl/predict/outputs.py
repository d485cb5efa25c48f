"""Writing `histovl predict` output folders (docs/predict.md lists every file and column).

Images: ``predictions.csv``, ``metrics.json``, ``report.html``, ``run.json``. A slide:
``predictions.csv`` (one row per tile), ``slide.json``, ``heatmap.png``, ``predictions.geojson``,
``report.html``, ``run.json``. Every file is written atomically and ``run.json`` last, into a
staged folder that replaces the previous one as a whole (docs/reliability.md, "run
interrupted"), so an interrupted run leaves the previous results or none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from histovl._io import atomic_open, atomic_write_json, atomic_write_text
from histovl.outputs_guard import staged_folder
from histovl.predict.figures import class_colours, confidence_map_image
from histovl.predict.geojson import ObjectType, tile_feature_collection
from histovl.predict.images import ImagePredictions
from histovl.predict.slide import SlidePredictions
from histovl.reports import (
    GridItem,
    Report,
    build_classification_report,
    find_non_finite,
    write_evaluation_outputs,
)

GEOJSON_FILE = "predictions.geojson"
HEATMAP_FILE = "heatmap.png"
SLIDE_FILE = "slide.json"


def write_image_outputs(out: Path, res: ImagePredictions, record: dict[str, Any], title: str) -> None:
    """predictions.csv, metrics.json, report.html, then run.json."""
    source = res.image_set.source
    subtitle = f"data {source} · n = {len(res.frame)}" + ("" if res.labelled else " · unlabelled")
    if res.labelled:
        report = build_classification_report(title, res.metrics, res.frame, record,
                                             image_root=res.image_set.root, subtitle=subtitle)
    else:
        report = _unlabelled_report(title, subtitle, res, record)
    write_evaluation_outputs(out, metrics=res.metrics, predictions=res.frame, run_record=record, report=report)


def _unlabelled_report(title: str, subtitle: str, res: ImagePredictions, record: dict[str, Any]) -> Report:
    report = Report(title, subtitle=subtitle)
    m = res.metrics
    table = pd.DataFrame({"class": list(m["predicted_counts"]), "images predicted": list(m["predicted_counts"].values())})
    report.add_table(table, title="Predicted classes")
    if m["margin_quartiles"] is not None:
        q1, q2, q3 = m["margin_quartiles"]
        report.add_text(f"Margin (top-1 minus top-2 probability): mean {m['margin_mean']:.3f}, quartiles "
                        f"{q1:.3f} / {q2:.3f} / {q3:.3f}. Low margins are the predictions to review.", title="Margins")
    root = Path(res.image_set.root)
    frame = res.frame.assign(_conf=res.probs.max(axis=1))
    for cls in m["class_names"]:
        best = frame[frame["prediction"] == cls].nlargest(4, "_conf")
        if len(best):
            report.add_image_grid([GridItem(root / p, f"{cls} ({c:.3f})") for p, c in zip(best["path"], best["_conf"], strict=True)],
                                  title=f"Most confident: {cls}")
    unsure = frame.nsmallest(8, "margin")
    report.add_image_grid([GridItem(root / p, f"{pred} (margin {mg:.3f})") for p, pred, mg in
                           zip(unsure["path"], unsure["prediction"], unsure["margin"], strict=True)], title="Least certain")
    report.add_provenance(record)
    return report


def write_slide_outputs(out: Path, res: SlidePredictions, record: dict[str, Any], title: str, object_type: ObjectType) -> None:
    """predictions.csv, slide.json, heatmap.png, predictions.geojson, report.html, then run.json,
    staged (`histovl.outputs_guard.staged_folder`): they replace the previous run's files as a
    whole. The tiling (``<out>/tiling`` by default) is resumed in place, not staged: the staged
    folder carries it over (hard links) because no staged run lists it as its own."""
    find_non_finite(res.slide, "slide")
    find_non_finite(record, "run_record")
    with staged_folder(out) as stage:
        _write_slide_files(stage, res, record, title, object_type)


def _write_slide_files(out: Path, res: SlidePredictions, record: dict[str, Any], title: str, object_type: ObjectType) -> None:
    classes = list(res.slide["probabilities"])
    tiling = res.embedding.tiling
    with atomic_open(out / "predictions.csv", "w", encoding="utf-8", newline="") as fh:
        res.frame.to_csv(fh, index=False)
    atomic_write_json(out / SLIDE_FILE, res.slide)
    heatmap = confidence_map_image(tiling.thumbnail, res.embedding.tiles, res.probs, classes,
                                   tiling.resolution.extent0, tiling.level0_size)
    from histovl.slides.figures import save_png

    save_png(heatmap, out / HEATMAP_FILE)
    xy = res.embedding.tiles[["x", "y"]].to_numpy()
    collection = tile_feature_collection(xy, tiling.resolution.extent0, res.probs, classes,
                                         class_colours(len(classes)), object_type=object_type)
    atomic_write_text(out / GEOJSON_FILE, json.dumps(collection, separators=(",", ":")))
    _slide_report(title, res, record, heatmap).write(out)
    atomic_write_json(out / "run.json", record)


def _slide_report(title: str, res: SlidePredictions, record: dict[str, Any], heatmap: Image.Image) -> Report:
    s = res.slide
    pooled = f"top-{s['top_j']} mean of {s['pooled']}" if s["pooling"] == "top-j" else f"mean of {s['pooled']}"
    report = Report(title, subtitle=f"slide {s['slide']} · {s['n_tiles']} tiles")
    report.add_text(f"Slide prediction: {s['prediction']} (pooling: {pooled}). "
                    f"Tiles: {s['n_tiles_encoded']} encoded, {s['n_tiles_from_cache']} from the cache; "
                    f"tiling {'reused' if s['tiling_reused'] else 'computed'}.", title="Slide")
    table = pd.DataFrame({
        "class": list(s["probabilities"]),
        "slide score": list(s["scores"].values()),
        "slide probability": list(s["probabilities"].values()),
        "tiles predicted": list(s["tile_class_counts"].values()),
    })
    report.add_table(table, title="Slide-level scores")
    report.add_figure("heatmap", _image_figure(heatmap), title="Tiles by predicted class",
                      caption="Opacity is the tile's top-1 probability; heatmap.png holds the full-size image.")
    report.add_provenance(record)
    return report


def _image_figure(image: Image.Image) -> Figure:
    image = image.copy()
    image.thumbnail((1000, 1000))  # the figure is 8 inches wide: more pixels only cost time
    fig = Figure(figsize=(8, 8 * image.height / max(1, image.width)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.asarray(image))
    ax.set_axis_off()
    return fig

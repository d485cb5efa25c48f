"""Run folders (any folder with a ``run.json``): the runs table and a run's images.

A run is summarised from its ``run.json`` and ``metrics.json`` (docs/interfaces.md); its images
come from ``predictions.csv``, whose paths are resolved against the folders the run recorded
(the run folder, the data source, ``input_root``) and entered in the allow-list at start. A run
folder that cannot be read becomes a row with its error, never a crash.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.serve.files import FileRegistry, files_under, path_id

#: The metric a runs-table row shows, the first one the run has (with its CI when recorded).
HEADLINE_METRICS = ("f1_macro", "macc", "ha@5", "f1_weighted", "accuracy", "auroc", "map@10")

#: Scalar metrics a run page lists first, in this order.
SUMMARY_METRICS = (
    "n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro", "macc", "f1_micro",
    "exact_match", "ha@5", "ha@10", "recall@1", "recall@5", "mmv@5", "map@10", "auroc", "ece", "brier", "nll",
)

SCORE_PREFIX = "score:"


@dataclass
class RunEntry:
    """One run folder, read at start; `items` (its images) is built on first use."""

    id: str
    folder: Path
    name: str
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    image_ids: dict[str, str] = field(default_factory=dict)
    """predictions.csv ``path`` -> file id of the image it names (allowed at start)."""
    _items: pd.DataFrame | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- the runs table ---------------------------------------------------------------------
    def row(self) -> dict[str, Any]:
        """The runs-table row: command, models, data, n, headline metric with CI, date."""
        rec, config = self.record, self.record.get("config") or {}
        headline = next((m for m in HEADLINE_METRICS if _number(self.metrics.get(m)) is not None), None)
        ci = (self.metrics.get("ci95") or {}).get(headline) if headline else None
        return {
            "id": self.id,
            "name": self.name,
            "command": rec.get("command"),
            "models": ", ".join(str(m.get("name")) for m in rec.get("models") or [] if isinstance(m, dict)),
            "data": config.get("data") if isinstance(config, dict) else None,
            "n": _count(self.metrics.get("n"), rec.get("n_inputs")),
            "metric": headline,
            "value": _number(self.metrics.get(headline)) if headline else None,
            "ci": [_number(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None,
            "date": rec.get("time_utc"),
            "kind": (config.get("kind") if isinstance(config, dict) else None) or "",
            "error": self.error,
        }

    def summary_metrics(self) -> list[tuple[str, float, list[float | None] | None]]:
        """(name, value, CI) of the scalar metrics, the usual ones first."""
        ci95 = self.metrics.get("ci95") or {}
        names = [m for m in SUMMARY_METRICS if m in self.metrics]
        names += sorted(k for k in self.metrics if k not in names and _number(self.metrics[k]) is not None
                        and k not in ("n_boot", "ci_level", "n_groups", "n_skipped", "ece_bins"))
        out = []
        for name in names:
            value = _number(self.metrics.get(name))
            if value is not None:
                ci = ci95.get(name) if isinstance(ci95, dict) else None
                out.append((name, value, [_number(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None))
        return out

    # ---- the images ---------------------------------------------------------------------------
    def items(self) -> pd.DataFrame:
        """predictions.csv with `confidence`, `margin`, `correct` and `image` (file id or None)."""
        with self._lock:
            if self._items is None:
                self._items = _items_frame(self.folder / "predictions.csv", self.image_ids)
            return self._items

    def class_names(self) -> list[str]:
        names = self.metrics.get("class_names")
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        return [c[len(SCORE_PREFIX):] for c in self.items().columns if c.startswith(SCORE_PREFIX)]

    def confusion(self) -> tuple[list[str], list[list[int]]] | None:
        """Classes and counts (rows = true label) computed from predictions.csv itself, so a
        cell's count is exactly the number of images its click shows; None without labels."""
        items = self.items()
        if not {"label", "prediction"} <= set(items.columns) or items.empty:
            return None
        classes = self.class_names()
        classes += sorted((set(items["label"].astype(str)) | set(items["prediction"].astype(str))) - set(classes))
        table = pd.crosstab(items["label"].astype(str), items["prediction"].astype(str))
        table = table.reindex(index=classes, columns=classes, fill_value=0)
        return classes, table.to_numpy(dtype=int).tolist()


def load_run(folder: Path, name: str, registry: FileRegistry) -> RunEntry:
    """Read one run folder; any problem becomes the entry's `error`."""
    entry = RunEntry(id=path_id(folder, "run"), folder=folder, name=name)
    try:
        entry.record = _read_json(folder / "run.json")
        metrics_path = folder / "metrics.json"
        entry.metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
        entry.files = files_under(folder, registry)
        entry.image_ids = _allow_images(folder, entry.record, registry)
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as err:
        entry.error = f"{type(err).__name__}: {err}"
    return entry


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds a {type(data).__name__}, not an object")
    return data


def _allow_images(folder: Path, record: dict[str, Any], registry: FileRegistry) -> dict[str, str]:
    """Allow-list the images predictions.csv names; returns path -> id."""
    table = folder / "predictions.csv"
    if not table.is_file():
        return {}
    paths = pd.read_csv(table, usecols=lambda c: c == "path", dtype=str, keep_default_na=False)
    if "path" not in paths.columns:
        return {}
    values = list(dict.fromkeys(paths["path"]))
    base = _image_base(values[:20], _candidate_bases(folder, record))
    found = {}
    for value in values:
        target = Path(value) if Path(value).is_absolute() or base is None else base / value
        file_id = registry.add(target)
        if file_id is not None:
            found[value] = file_id
    return found


def _candidate_bases(folder: Path, record: dict[str, Any]) -> list[Path]:
    """Where a run's relative image paths may start: the run folder (slide tiles), the data
    source (a manifest's folder or the class folder), `input_root` and two of its parents."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    bases = [folder]
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, str) and Path(data).is_absolute():
        bases.append(Path(data).parent if Path(data).suffix.lower() == ".csv" else Path(data))
    root = record.get("input_root")
    if isinstance(root, str) and root:
        bases += [Path(root), *list(Path(root).parents)[:2]]
    return bases


def _image_base(sample: list[str], bases: list[Path]) -> Path | None:
    """The first base under which most of a sample of relative paths exist."""
    relative = [s for s in sample if s and not Path(s).is_absolute()]
    if not relative:
        return None
    for base in bases:
        hits = sum((base / s).is_file() for s in relative)
        if hits * 2 >= len(relative):
            return base
    return None


def _items_frame(table: Path, image_ids: dict[str, str]) -> pd.DataFrame:
    if not table.is_file():
        return pd.DataFrame({"path": pd.Series([], dtype=str)})
    frame = pd.read_csv(table, keep_default_na=False, low_memory=False)
    score_cols = [c for c in frame.columns if c.startswith(SCORE_PREFIX)]
    scores = frame[score_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float) if score_cols else None
    if scores is not None and scores.shape[1]:
        top = np.sort(np.nan_to_num(scores, nan=-np.inf), axis=1)
        frame["confidence"] = top[:, -1]
        if "margin" not in frame.columns:
            frame["margin"] = top[:, -1] - top[:, -2] if scores.shape[1] > 1 else top[:, -1]
    if {"label", "prediction"} <= set(frame.columns):
        frame["correct"] = frame["label"].astype(str) == frame["prediction"].astype(str)
    frame["image"] = [image_ids.get(str(p)) for p in frame.get("path", pd.Series([""] * len(frame)))]
    return frame


def _count(*values: Any) -> int | None:
    """The first value that is a whole number (``n`` in metrics.json, else ``n_inputs``)."""
    for value in values:
        number = _number(value)
        if number is not None:
            return int(number)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class ItemQuery:
    """Which of a run's images to show, in which order (the run page's controls)."""

    true: str | None = None
    pred: str | None = None
    wrong: bool = False
    max_margin: float | None = None
    sort: str = "confidence"
    descending: bool = True
    offset: int = 0
    limit: int = 200


def query_items(entry: RunEntry, query: ItemQuery) -> dict[str, Any]:
    """The images matching `query`: ``total`` and one page of ``items`` (JSON-ready)."""
    frame = entry.items()
    mask = np.ones(len(frame), dtype=bool)
    if query.true is not None and "label" in frame.columns:
        mask &= (frame["label"].astype(str) == query.true).to_numpy()
    if query.pred is not None and "prediction" in frame.columns:
        mask &= (frame["prediction"].astype(str) == query.pred).to_numpy()
    if query.wrong and "correct" in frame.columns:
        mask &= ~frame["correct"].to_numpy(dtype=bool)
    if query.max_margin is not None and "margin" in frame.columns:
        mask &= (pd.to_numeric(frame["margin"], errors="coerce") <= query.max_margin).to_numpy()
    picked = frame[mask]
    if query.sort in ("confidence", "margin") and query.sort in picked.columns:
        picked = picked.sort_values(query.sort, ascending=not query.descending, kind="stable")
    page = picked.iloc[max(0, query.offset): max(0, query.offset) + max(1, query.limit)]
    score_cols = [c for c in frame.columns if c.startswith(SCORE_PREFIX)]
    return {"total": int(len(picked)), "offset": query.offset, "items": [_item(int(i), row, score_cols) for i, row in page.iterrows()]}


def _item(index: int, row: pd.Series, score_cols: list[str]) -> dict[str, Any]:
    scores = {c[len(SCORE_PREFIX):]: _number(pd.to_numeric(row[c], errors="coerce")) for c in score_cols}
    return {
        "index": index,
        "path": str(row.get("path", "")),
        "label": _text(row.get("label", row.get("labels"))),
        "prediction": _text(row.get("prediction", row.get("predictions"))),
        "confidence": _number(row.get("confidence")),
        "margin": _number(pd.to_numeric(row.get("margin"), errors="coerce")),
        "correct": bool(row["correct"]) if "correct" in row.index else None,
        "image": row.get("image"),
        "scores": scores,
    }


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

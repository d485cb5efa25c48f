"""Reading run folders for `histovl compare` and checking that they cover the same images.

A run folder is any single-label evaluation output (docs/interfaces.md, "Evaluation outputs"):
``predictions.csv`` (``path``, ``label``, ``score:<class>`` columns) and ``run.json`` (its
``input_hash``). Two runs are comparable only on the same images with the same labels: the input
hashes must agree and so must the predictions' ``path`` columns; otherwise `check_same_images`
refuses, naming the first image that differs. Rows are aligned by path, so the row order of the
files does not matter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.errors import HistovlError

SCORE_PREFIX = "score:"


class CompareInputError(HistovlError, ValueError):
    """A run folder cannot be compared (missing file, wrong kind of run, different images)."""


@dataclass(frozen=True)
class LoadedRun:
    """One run as compare uses it: rows sorted by path, probabilities in `class_names` order."""

    name: str
    folder: Path
    record: dict[str, Any]
    paths: list[str]
    labels: list[str]
    class_names: list[str]
    probs: np.ndarray
    groups: list[str | None] | None
    splits: list[str | None] | None = None  # the ``split`` column of predictions.csv, if any

    @property
    def input_hash(self) -> str | None:
        return self.record.get("input_hash")


def load_runs(folders: Sequence[str | os.PathLike[str]]) -> list[LoadedRun]:
    """Load every run folder (all of them checked before anything is computed).

    Raises:
        CompareInputError: fewer than two runs, a folder or file missing, a predictions table
            that is not single-label, or runs over different images or classes.
    """
    if len(folders) < 2:
        raise CompareInputError(
            f"compare needs at least two run folders, got {len(folders)}: give RUN_DIR RUN_DIR ..."
        )
    names = run_names([Path(f) for f in folders])
    runs = [load_run(Path(f), name) for f, name in zip(folders, names, strict=True)]
    check_same_images(runs)
    return [align_classes(r, runs[0].class_names) for r in runs]


def run_names(folders: Sequence[Path]) -> list[str]:
    """Each run's display name: its folder name, or ``parent/name`` where names repeat."""
    names = [f.resolve().name or str(f) for f in folders]
    if len(set(names)) == len(names):
        return names
    longer = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    return longer if len(set(longer)) == len(longer) else [f"{i + 1}:{n}" for i, n in enumerate(names)]


def load_run(folder: Path, name: str) -> LoadedRun:
    """Read ``predictions.csv`` and ``run.json`` of one folder (errors name the file)."""
    if not folder.is_dir():
        raise CompareInputError(f"run folder {folder} does not exist")
    predictions, record_file = folder / "predictions.csv", folder / "run.json"
    if not predictions.is_file():
        raise CompareInputError(
            f"{predictions} is missing: compare reads each run's per-image predictions "
            "(the output folder of zeroshot, predict, fewshot eval, ...)"
        )
    if not record_file.is_file():
        raise CompareInputError(f"{record_file} is missing: the run did not finish (run.json is written last)")
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        frame = pd.read_csv(predictions, dtype={"path": str, "label": str, "group": str, "split": str},
                            keep_default_na=False)
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CompareInputError(f"cannot read {folder}: {err}") from err
    return _from_frame(frame, predictions, record, folder, name)


def _from_frame(frame: pd.DataFrame, source: Path, record: dict[str, Any], folder: Path, name: str) -> LoadedRun:
    score_columns = [c for c in frame.columns if str(c).startswith(SCORE_PREFIX)]
    if "labels" in frame.columns or "path" not in frame.columns or "label" not in frame.columns:
        raise CompareInputError(
            f"{source} is not a single-label predictions table (needs `path`, `label` and "
            "`score:<class>` columns); compare handles single-label runs"
        )
    if len(score_columns) < 2:
        raise CompareInputError(f"{source} has {len(score_columns)} `score:<class>` column(s); need one per class (>= 2)")
    duplicated = frame["path"][frame["path"].duplicated()]
    if len(duplicated):
        raise CompareInputError(
            f"{source} lists {duplicated.iloc[0]} more than once (a robustness or multi-condition "
            "table?); compare needs one row per image"
        )
    if frame.empty:
        raise CompareInputError(f"{source} has no rows")
    frame = frame.sort_values("path", kind="mergesort")
    probs = frame[score_columns].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all():
        raise CompareInputError(f"{source} holds a NaN or Inf score")
    groups = None
    if "group" in frame.columns:
        groups = [g if g != "" else None for g in frame["group"].astype(str)]
    splits = [v if v != "" else None for v in frame["split"].astype(str)] if "split" in frame.columns else None
    return LoadedRun(
        name=name, folder=folder, record=record, paths=list(frame["path"].astype(str)),
        labels=list(frame["label"].astype(str)), class_names=[str(c)[len(SCORE_PREFIX):] for c in score_columns],
        probs=probs, groups=groups, splits=splits,
    )


def check_same_images(runs: Sequence[LoadedRun]) -> None:
    """Refuse runs whose images, labels or classes differ from the first run's (naming one)."""
    first = runs[0]
    for run in runs[1:]:
        if run.paths != first.paths:
            only_a = sorted(set(first.paths) - set(run.paths))
            only_b = sorted(set(run.paths) - set(first.paths))
            image, holder, other = min(
                [(p, first.name, run.name) for p in only_a[:1]] + [(p, run.name, first.name) for p in only_b[:1]]
            )
            raise CompareInputError(
                f"runs {first.name} and {run.name} are over different images: {image} is in "
                f"{holder} but not in {other}; compare only runs on the same data"
            )
        if run.input_hash != first.input_hash:
            raise CompareInputError(
                f"runs {first.name} and {run.name} list the same images but their run.json "
                f"input_hash differs ({_short(first.input_hash)} vs {_short(run.input_hash)}): "
                "an image file changed between the runs (or the input lists differ by skipped files); "
                "re-run both on the same data"
            )
        for path, a, b in zip(first.paths, first.labels, run.labels, strict=True):
            if a != b:
                raise CompareInputError(f"image {path} is labelled {a!r} in {first.name} but {b!r} in {run.name}")
        if set(run.class_names) != set(first.class_names):
            raise CompareInputError(
                f"runs {first.name} and {run.name} score different classes: "
                f"{sorted(first.class_names)} vs {sorted(run.class_names)}"
            )


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:12]


def align_classes(run: LoadedRun, class_names: list[str]) -> LoadedRun:
    """The run with its probability columns in ``class_names`` order."""
    if run.class_names == class_names:
        return run
    order = [run.class_names.index(c) for c in class_names]
    return LoadedRun(run.name, run.folder, run.record, run.paths, run.labels, list(class_names),
                     run.probs[:, order], run.groups, run.splits)


def label_indices(run: LoadedRun) -> np.ndarray:
    """The true class index of each row (labels outside the class list are an error)."""
    index = {c: i for i, c in enumerate(run.class_names)}
    unknown = sorted({lab for lab in run.labels if lab not in index})
    if unknown:
        raise CompareInputError(
            f"{run.folder / 'predictions.csv'} has labels {unknown} with no score column; "
            f"classes are {run.class_names}"
        )
    return np.array([index[lab] for lab in run.labels], dtype=np.int64)

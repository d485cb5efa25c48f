"""Where compare's groups (patient, slide, near-duplicate group) come from.

Items of one group are correlated, so the paired bootstrap resamples whole groups and the
calibration split never divides one. In order of precedence:

1. ``--groups FILE``: a CSV with ``path`` and ``group`` columns, paths as in predictions.csv;
2. a ``group`` column in the runs' predictions.csv (it must agree across runs);
3. the data manifest the first run recorded (run.json ``config.data``), when it is a CSV that
   still exists and gives groups;
4. none: every image is its own unit.

`resolve_splits` finds the named splits ``--calibrate NAME`` selects from, in the same places:
a ``split`` column of the ``--groups`` file, of predictions.csv, or of the recorded manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histovl.compare.runs import CompareInputError, LoadedRun


def resolve_groups(runs: Sequence[LoadedRun], groups_file: Path | None) -> tuple[list[str | None] | None, str | None]:
    """``(group per row of the runs, where it came from)``, or ``(None, None)``."""
    paths = runs[0].paths
    if groups_file is not None:
        return _groups_from_file(groups_file, paths), f"file {groups_file}"
    from_runs = _agreed_column(runs, "groups", "group")
    if from_runs[0] is not None:
        return from_runs
    manifest = _recorded_manifest(runs[0])
    if manifest is not None:
        groups = _groups_from_manifest(manifest, paths, runs[0])
        if groups is not None:
            return groups, f"data manifest {manifest}"
    return None, None


def _groups_from_file(groups_file: Path, paths: Sequence[str]) -> list[str | None]:
    if not groups_file.is_file():
        raise CompareInputError(f"--groups file {groups_file} does not exist")
    frame = pd.read_csv(groups_file, dtype=str, keep_default_na=False)
    if not {"path", "group"} <= set(frame.columns):
        raise CompareInputError(f"--groups file {groups_file} needs `path` and `group` columns, has {list(frame.columns)}")
    mapping = dict(zip(frame["path"], frame["group"], strict=True))
    missing = [p for p in paths if p not in mapping]
    if missing:
        raise CompareInputError(
            f"--groups file {groups_file} has no row for {missing[0]} ({len(missing)} image(s) missing); "
            "paths must be written as in predictions.csv"
        )
    return [mapping[p] or None for p in paths]


def resolve_splits(runs: Sequence[LoadedRun], groups_file: Path | None) -> tuple[list[str | None] | None, str | None]:
    """``(split name per row of the runs, where it came from)`` for ``--calibrate NAME``, or
    ``(None, None)``: a ``split`` column of the ``--groups`` file, of the runs' predictions.csv
    (it must agree across runs), or of the data manifest the first run recorded."""
    paths = runs[0].paths
    if groups_file is not None and groups_file.is_file():
        frame = pd.read_csv(groups_file, dtype=str, keep_default_na=False)
        if "split" in frame.columns and "path" in frame.columns:
            mapping = dict(zip(frame["path"], frame["split"], strict=True))
            return [mapping.get(p) or None for p in paths], f"file {groups_file}"
    from_runs = _agreed_column(runs, "splits", "split")
    if from_runs[0] is not None:
        return from_runs
    manifest = _recorded_manifest(runs[0])
    if manifest is not None:
        splits = _manifest_column(manifest, paths, runs[0], "split")
        if splits is not None:
            return splits, f"data manifest {manifest}"
    return None, None


def _agreed_column(runs: Sequence[LoadedRun], attr: str, column: str) -> tuple[list[str | None] | None, str | None]:
    """The predictions.csv ``column`` (read into ``LoadedRun.<attr>``) of the runs that have one,
    which must agree across them; ``(None, None)`` when no run has it."""
    with_column = [r for r in runs if getattr(r, attr) is not None]
    if not with_column:
        return None, None
    first = with_column[0]
    for other in with_column[1:]:
        if getattr(other, attr) != getattr(first, attr):
            raise CompareInputError(f"runs {first.name} and {other.name} give different `{column}` columns")
    return getattr(first, attr), f"predictions.csv of {first.name}"


def _recorded_manifest(run: LoadedRun) -> Path | None:
    data = (run.record.get("config") or {}).get("data")
    if not isinstance(data, str) or not data.lower().endswith(".csv"):
        return None
    path = Path(data)
    return path if path.is_file() else None


def _groups_from_manifest(manifest: Path, paths: Sequence[str], run: LoadedRun) -> list[str | None] | None:
    """Groups of the manifest's images, keyed like predictions.csv (relative to the data root)."""
    return _manifest_column(manifest, paths, run, "group")


def _manifest_column(manifest: Path, paths: Sequence[str], run: LoadedRun, column: str) -> list[str | None] | None:
    """A manifest column (``group``, or an extra column such as ``split``) for each row of the
    runs, keyed like predictions.csv (relative to the data root); None when it gives nothing."""
    from histovl.data import load_image_set

    allow = bool((run.record.get("config") or {}).get("allow_absolute_paths", False))
    try:
        image_set = load_image_set(manifest, allow_absolute_paths=allow)
    except (ValueError, OSError):
        return None  # the manifest changed since the run; compare goes on without it
    root = image_set.root.resolve()
    mapping: dict[str, str | None] = {}
    for record in image_set.records:
        try:
            key = record.path.resolve().relative_to(root).as_posix()
        except ValueError:
            key = str(record.path)
        mapping[key] = record.group if column == "group" else (record.extra.get(column) or None)
    if any(p not in mapping for p in paths) or all(mapping[p] is None for p in paths):
        return None
    return [mapping[p] for p in paths]

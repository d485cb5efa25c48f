"""`histovl compare`: paired statistics and calibration for runs over the same images.

runs (predictions.csv + run.json) → checked for the same images → per run: metrics and
calibration → per pair: paired bootstrap differences, McNemar, DeLong (binary), Holm (> 2 runs)
→ optional temperature scaling on a calibration split (a group-aware fraction, or a named split)
→ comparison.csv, metrics.json, report.html, run.json (written last)

Every input is read and checked before anything is computed or written: a missing
predictions.csv, a single run or runs over different images end with one error naming the
problem, and no output folder is created. Statistics and their meaning: docs/compare.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl.compare.calibration import (
    calibration_split,
    named_calibration_split,
    run_calibration,
    temperature_scaling,
)
from histovl.compare.groups import resolve_groups, resolve_splits
from histovl.compare.pairwise import PairResult, compare_pairs, comparison_frame, pairs_json
from histovl.compare.runs import LoadedRun, label_indices, load_runs
from histovl.compare.stats import PAIRED_METRICS
from histovl.metrics.calibration import DEFAULT_BINS
from histovl.metrics.classification import CLASSIFICATION_METRICS, classification_metrics
from histovl.options import PathArg, RunOptions, config_record, split_overrides


@dataclass(frozen=True)
class CompareConfig:
    """What `histovl compare` computes (bootstrap resamples and seed are in `RunOptions`).

    Attributes:
        metrics: metrics compared pair by pair (`histovl.compare.stats.PAIRED_METRICS`).
        n_bins: bins of the ECE and reliability diagrams (equal-width and equal-mass).
        calibrate: the calibration split a temperature per run is fitted on: a fraction of the
            images (whole groups, drawn with the seed), or the name of a split (the images whose
            ``split`` column is that name; docs/compare.md, "Temperature scaling"); a numeric
            string counts as a fraction. None: no temperature scaling.
        groups: CSV with ``path`` and ``group`` columns; None takes the groups from the runs
            (docs/compare.md, "Groups").
    """

    metrics: tuple[str, ...] = PAIRED_METRICS
    n_bins: int = DEFAULT_BINS
    calibrate: float | str | None = None
    groups: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = [m for m in self.metrics if m not in PAIRED_METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics must be among {', '.join(PAIRED_METRICS)}; got {list(self.metrics)}")
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be at least 1, got {self.n_bins}")
        object.__setattr__(self, "calibrate", _calibrate_value(self.calibrate))
        if self.groups is not None and not isinstance(self.groups, Path):
            object.__setattr__(self, "groups", Path(os.fspath(self.groups)))


def _calibrate_value(value: float | str | None) -> float | str | None:
    """A fraction in (0, 1) (numeric strings included) or a non-empty split name."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value.strip()
        try:
            value = float(name)
        except ValueError:
            if not name:
                raise ValueError("calibrate: give a fraction such as 0.3 or a split name") from None
            return name
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"calibrate must be a fraction between 0 and 1 (exclusive) or a split name, got {value}")
    return float(value)


@dataclass
class CompareResult:
    """What compare produced (also written to `out`)."""

    table: pd.DataFrame
    metrics: dict[str, Any]
    out: Path | None
    pairs: list[PairResult] = field(default_factory=list)


def compare(
    runs: Sequence[PathArg], out: PathArg | None = None, config: CompareConfig | None = None,
    options: RunOptions | None = None, *, command: str = "histovl compare", **overrides: Any,
) -> CompareResult:
    """Compare runs over the same images with paired statistics and calibration.

    Args:
        runs: two or more run folders (each with predictions.csv and run.json).
        out: output folder; None computes without writing.
        config: what to compute (`CompareConfig`).
        options: the shared run options (``n_boot`` and ``seed`` drive the bootstrap and the
            calibration split).
        overrides: fields of either, as keywords (``n_boot=200``, ``calibrate=0.3``).

    Example:
        >>> res = compare(["runs/lite-v1", "runs/lite-v2"], "runs/cmp", calibrate=0.3)  # doctest: +SKIP
        >>> res.table.query("metric == 'accuracy'")[["difference", "ci_low", "ci_high", "p_value"]]  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, CompareConfig, options)
    loaded, y, groups, groups_source = _prepare(runs, cfg)
    split = _calibration_split(loaded, groups, cfg, opts.seed) if cfg.calibrate is not None else None
    per_run = [_run_summary(r, y, groups, cfg, opts) for r in loaded]
    pairs = compare_pairs(loaded, y, groups, metrics=cfg.metrics, n_boot=opts.n_boot, seed=opts.seed, n_bins=cfg.n_bins)
    temperature = _temperature(loaded, y, split, cfg.n_bins) if split is not None else None
    table = comparison_frame(pairs)
    metrics = _metrics_json(loaded, per_run, pairs, temperature, groups, groups_source, cfg, opts)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from histovl.compare.outputs import write_compare_outputs

        write_compare_outputs(
            out_dir, command=command, table=table, metrics=metrics, runs=loaded, pairs=pairs, cfg=cfg,
            config={**config_record(cfg), **opts.record(), "runs": [str(r.folder) for r in loaded]},
            seed=opts.seed,
        )
    return CompareResult(table, metrics, out_dir, pairs)


def _prepare(
    runs: Sequence[str | os.PathLike[str]], cfg: CompareConfig
) -> tuple[list[LoadedRun], np.ndarray, list[str | None] | None, str | None]:
    """Read and check every run and the groups before any statistic (a bad input costs nothing)."""
    loaded = load_runs(runs)
    y = label_indices(loaded[0])
    groups, source = resolve_groups(loaded, cfg.groups)
    return loaded, y, groups, source


def _run_summary(
    run: LoadedRun, y: np.ndarray, groups: list[str | None] | None, cfg: CompareConfig, opts: RunOptions
) -> dict[str, Any]:
    """One run's metrics with their own bootstrap CIs, and its calibration."""
    m = classification_metrics(
        y, run.probs, run.class_names, groups=None if groups is None else np.array(groups, dtype=object),
        n_boot=opts.n_boot, seed=opts.seed,
    )
    return {
        "name": run.name,
        "folder": str(run.folder),
        "command": run.record.get("command"),
        "models": [c.get("name") for c in run.record.get("models") or [] if isinstance(c, dict)],
        "prompt_set": (run.record.get("prompt_set") or {}).get("name"),
        **{k: m[k] for k in CLASSIFICATION_METRICS},
        "ci95": m["ci95"],
        "calibration": run_calibration(y, run.probs, cfg.n_bins),
    }


def _calibration_split(
    runs: Sequence[LoadedRun], groups: list[str | None] | None, cfg: CompareConfig, seed: int
) -> dict[str, Any]:
    """The calibration rows and the rows reported on (checked before any statistic)."""
    if isinstance(cfg.calibrate, str):
        splits, source = resolve_splits(runs, cfg.groups)
        cal, evaluate = named_calibration_split(splits, groups, cfg.calibrate, source)
        how: dict[str, Any] = {"split": cfg.calibrate, "split_source": source, "fraction": None}
    else:
        cal, evaluate = calibration_split(runs[0].paths, runs[0].labels, groups, float(cfg.calibrate or 0), seed)
        how = {"split": None, "split_source": None, "fraction": cfg.calibrate}
    return {**how, "split_unit": "group" if groups is not None else "item", "cal": cal, "evaluate": evaluate}


def _temperature(runs: Sequence[LoadedRun], y: np.ndarray, split: dict[str, Any], n_bins: int) -> dict[str, Any]:
    """One temperature per run, all fitted on the same calibration split."""
    cal, evaluate = split["cal"], split["evaluate"]
    return {
        **{k: v for k, v in split.items() if k not in ("cal", "evaluate")},
        "n_calibration": len(cal),
        "n_evaluation": len(evaluate),
        "runs": {r.name: temperature_scaling(y, r.probs, cal, evaluate, n_bins) for r in runs},
    }


def _metrics_json(
    runs: Sequence[LoadedRun], per_run: list[dict[str, Any]], pairs: list[PairResult],
    temperature: dict[str, Any] | None, groups: list[str | None] | None, groups_source: str | None,
    cfg: CompareConfig, opts: RunOptions,
) -> dict[str, Any]:
    n_groups = None if groups is None else len({g if g is not None else ("__single__", i) for i, g in enumerate(groups)})
    return {
        "n": len(runs[0].paths),
        "n_runs": len(runs),
        "class_names": runs[0].class_names,
        "input_hash": runs[0].input_hash,
        "n_boot": opts.n_boot,
        "seed": opts.seed,
        "ci_level": 0.95,
        "bootstrap_unit": "group" if groups is not None else "item",
        "n_groups": n_groups,
        "groups_source": groups_source,
        "holm": len(runs) > 2,
        "ece_bins": cfg.n_bins,
        "runs": per_run,
        "pairs": pairs_json(pairs),
        "temperature_scaling": temperature,
    }

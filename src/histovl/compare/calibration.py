"""Calibration of each compared run, and temperature scaling on a group-aware calibration split.

Per run: ECE with equal-width and with equal-mass bins (the bin count is stated), Brier score,
NLL and both reliability curves (`histovl.metrics.calibration`). With ``--calibrate FRACTION``
about that share of the images (whole groups, stratified by class, `histovl.data.group_split`
seeded with the run seed) is held out to fit one temperature per run by NLL; with
``--calibrate NAME`` the images whose ``split`` column is NAME are (`named_calibration_split`:
whole groups required). The metrics are then
reported before and after scaling on the *other* images only, so the fit is never scored on the
data it saw. Temperature scaling leaves the argmax, hence accuracy and F1, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histovl.compare.runs import CompareInputError
from histovl.data.records import ImageRecord, ImageSet
from histovl.data.splits import group_split
from histovl.metrics.calibration import (
    apply_temperature,
    brier,
    ece,
    fit_temperature,
    is_probability_matrix,
    nll,
    reliability_curve,
)


def run_calibration(y: np.ndarray, probs: np.ndarray, n_bins: int) -> dict[str, Any]:
    """ECE (equal-width and equal-mass), Brier, NLL and the two reliability curves of one run;
    every value None when the scores are not probabilities."""
    if not is_probability_matrix(probs):
        return {"n_bins": n_bins, "ece_uniform": None, "ece_quantile": None, "brier": None, "nll": None,
                "reliability": None, "note": "scores are not probabilities: calibration is undefined"}
    uniform = reliability_curve(y, probs, n_bins, "uniform")
    quantile = reliability_curve(y, probs, n_bins, "quantile")
    return {
        "n_bins": n_bins,
        "ece_uniform": uniform.ece,
        "ece_quantile": quantile.ece,
        "brier": brier(y, probs),
        "nll": nll(y, probs),
        "reliability": {"uniform": uniform.as_dict(), "quantile": quantile.as_dict()},
    }


def calibration_split(
    paths: Sequence[str], labels: Sequence[str], groups: Sequence[str | None] | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration rows, evaluation rows)``: about ``fraction`` of the images, whole groups,
    stratified by class, for fitting; the rest for reporting."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--calibrate must be a fraction between 0 and 1 (exclusive), got {fraction}")
    records = tuple(
        ImageRecord(path=Path(p), label=lab, group=None if groups is None else groups[i], extra={"row": str(i)})
        for i, (p, lab) in enumerate(zip(paths, labels, strict=True))
    )
    indexed = ImageSet(records=records, root=Path("."), source=Path("predictions.csv"), kind="manifest")
    rest, held = group_split(indexed, test_fraction=fraction, seed=seed)
    cal = np.array(sorted(int(r.extra["row"]) for r in held.records), dtype=np.int64)
    evaluate = np.array(sorted(int(r.extra["row"]) for r in rest.records), dtype=np.int64)
    return cal, evaluate


def named_calibration_split(
    splits: Sequence[str | None] | None, groups: Sequence[str | None] | None, name: str, source: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows whose split is `name`, every other row)``. The split must exist, leave images to
    evaluate on, and hold whole groups (a group on both sides would let the fit see the patients it
    is scored on): otherwise `CompareInputError` naming the problem."""
    if splits is None:
        raise CompareInputError(
            f"--calibrate {name}: no `split` column found (looked in the --groups file, the runs' "
            "predictions.csv and their data manifest); add one, or give a fraction such as --calibrate 0.3"
        )
    names = sorted({s for s in splits if s is not None})
    cal = np.array([i for i, s in enumerate(splits) if s == name], dtype=np.int64)
    evaluate = np.array([i for i, s in enumerate(splits) if s != name], dtype=np.int64)
    if not len(cal):
        raise CompareInputError(f"--calibrate {name}: no image has split {name!r} in {source}; splits there: {names}")
    if not len(evaluate):
        raise CompareInputError(f"--calibrate {name}: every image is in split {name!r}; none is left to report on")
    if groups is not None:
        inside = {groups[i] for i in cal if groups[i] is not None}
        crossing = sorted(inside & {groups[i] for i in evaluate if groups[i] is not None})
        if crossing:
            raise CompareInputError(
                f"--calibrate {name}: group {crossing[0]!r} has images in split {name!r} and outside it "
                f"({len(crossing)} such group(s)); a calibration split must hold whole groups"
            )
    return cal, evaluate


def temperature_scaling(
    y: np.ndarray, probs: np.ndarray, cal: np.ndarray, evaluate: np.ndarray, n_bins: int
) -> dict[str, Any]:
    """Fit T on the calibration rows; metrics before and after on the evaluation rows."""
    if not is_probability_matrix(probs):
        return {"temperature": None, "note": "scores are not probabilities: no temperature scaling"}
    temperature = fit_temperature(probs[cal], y[cal])
    scaled = apply_temperature(probs, temperature)

    def block(p: np.ndarray, rows: np.ndarray) -> dict[str, float]:
        return {
            "ece_uniform": ece(y[rows], p[rows], n_bins, "uniform"),
            "ece_quantile": ece(y[rows], p[rows], n_bins, "quantile"),
            "brier": brier(y[rows], p[rows]),
            "nll": nll(y[rows], p[rows]),
            "accuracy": float(np.mean(p[rows].argmax(axis=1) == y[rows])),
        }

    return {
        "temperature": temperature,
        "n_calibration": len(cal),
        "n_evaluation": len(evaluate),
        "before": block(probs, evaluate),
        "after": block(scaled, evaluate),
        "calibration_nll_before": nll(y[cal], probs[cal]),
        "calibration_nll_after": nll(y[cal], scaled[cal]),
        "reliability_after": reliability_curve(y[evaluate], scaled[evaluate], n_bins, "uniform").as_dict(),
    }

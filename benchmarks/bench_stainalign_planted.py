"""HistoStainAlign on the planted-signal benchmark (`histovl.stainalign.planted`, docs/stainalign.md).

For every cell (labelled pairs × unlabelled pairs) and every repeat r, the labelled pairs are the
first n of one draw (seed r) and the unlabelled pairs the first m of another (seed 1000 + r; their
labels are withheld). Each model variant is fitted on them and scored on one fixed test draw of
H&E bags (seed 10000): accuracy, AUROC, and on its own labelled pairs the in-sample AUROC and the
spread of the predicted probabilities (max - min; the collapse check). Cells report the mean over
the repeats with a 95% t-interval, next to the Bayes-optimal accuracy and AUROC; the last columns
are the paired difference (each aligned variant - baseline, same data) with its t-interval.
The default aligned model (``schedule="auto"``) is the two-stage row when there are unlabelled
pairs and the joint row when there are none.

The baseline cannot use unlabelled pairs (it drops them), so its fit on n labelled + m unlabelled
pairs is its fit on the n labelled ones: it is fitted once per (r, n) and reused.

Usage:
    python benchmarks/bench_stainalign_planted.py [--reps 10] [--labelled 10,20,50,all]
        [--unlabelled 0,200] [--test 2000] [--workers 2] [--world-seed 0] [--json out.json]
        [--variant NAME='{"schedule": "joint"}' ...] [--planted '{"dim": 64}'] [--params '{"epochs": 60}']
``all`` = 220 labelled pairs (the 20 + 200 of the headline cell, all with labels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from histovl.stainalign import HistoStainAlign
from histovl.stainalign.planted import (
    HIGH,
    PlantedConfig,
    bayes_accuracy,
    bayes_auroc,
    planted_pairs,
)

ALL = 220
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "two-stage": {"schedule": "two-stage"},
    "joint": {"schedule": "joint"},
    "baseline": {"align": False},
}
REFERENCE = "baseline"


@lru_cache(maxsize=2)
def _test_set(planted: str, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The fixed test draw (H&E bags and high/low), once per worker process."""
    data = planted_pairs(n, PlantedConfig(**json.loads(planted)), seed=10_000)
    return data.he, np.array(data.labels) == HIGH


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """Fit one variant on one cell of one repeat; score it on the test draw."""
    cfg = PlantedConfig(**json.loads(job["planted"]))
    labelled = planted_pairs(job["n_labelled"], cfg, seed=job["rep"])
    unlabelled = planted_pairs(job["n_unlabelled"], cfg, seed=1000 + job["rep"]) if job["n_unlabelled"] else None
    y_in = np.array(labelled.labels) == HIGH
    result = {k: job[k] for k in ("rep", "n_labelled", "n_unlabelled", "variant")}
    if y_in.all() or not y_in.any():
        return {**result, "skipped": "one class among the labelled pairs"}
    he = labelled.he + (unlabelled.he if unlabelled else [])
    ihc = labelled.ihc + (unlabelled.ihc if unlabelled else [])
    y = labelled.labels + [""] * job["n_unlabelled"]
    start = time.perf_counter()
    model = HistoStainAlign(**{**job["params"], "random_state": job["rep"]}).fit(he, ihc, y)
    seconds = time.perf_counter() - start
    test_he, test_y = _test_set(job["planted"], job["test_n"])
    high = model.classes_.index(HIGH)
    p_test = model.predict_proba(test_he)[:, high]
    p_in = model.predict_proba(labelled.he)[:, high]
    return {**result, "accuracy": float(np.mean((p_test > 0.5) == test_y)), "auroc": float(roc_auc_score(test_y, p_test)),
            "in_sample_auroc": float(roc_auc_score(y_in, p_in)), "spread": float(p_in.max() - p_in.min()),
            "threshold": model.threshold_, "seconds": seconds}


def _jobs(args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rep in range(args.reps):
        for n_l in args.labelled:
            for n_u in args.unlabelled:
                for name, params in variants.items():
                    merged = {**args.params, **params}
                    if merged.get("align") is False and n_u:
                        continue  # the baseline drops unlabelled pairs: reuse its n_u = 0 fit
                    out.append({"rep": rep, "n_labelled": n_l, "n_unlabelled": n_u, "variant": name, "params": merged,
                                "planted": args.planted, "test_n": args.test})
    return out


def _ci(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _fmt(values: list[float]) -> str:
    m, lo, hi = _ci(values)
    return f"{m:.3f} [{lo:.3f}–{hi:.3f}]"


def _cell(results: list[dict[str, Any]], n_l: int, n_u: int, variant: str, baseline_like: bool) -> list[dict[str, Any]]:
    want_u = 0 if baseline_like else n_u
    return sorted((r for r in results if r["n_labelled"] == n_l and r["n_unlabelled"] == want_u
                   and r["variant"] == variant and "skipped" not in r), key=lambda r: r["rep"])


def _table(results: list[dict[str, Any]], args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> str:
    cfg = PlantedConfig(**json.loads(args.planted))
    lines = [f"Bayes-optimal from H&E: accuracy {bayes_accuracy(cfg):.3f}, AUROC {bayes_auroc(cfg):.3f}; "
             f"{args.reps} repeats, test n = {args.test}; mean [95% t-interval over repeats]", "",
             "| labelled | unlabelled | model | accuracy | AUROC | in-sample AUROC | min spread | s/fit |",
             "|---|---|---|---|---|---|---|---|"]
    diffs = []
    for n_l in args.labelled:
        for n_u in args.unlabelled:
            cells = {}
            for name, params in variants.items():
                cell = _cell(results, n_l, n_u, name, {**args.params, **params}.get("align") is False)
                cells[name] = {r["rep"]: r for r in cell}
                if not cell:
                    continue
                label = "all (220)" if n_l == ALL else str(n_l)
                lines.append(f"| {label} | {n_u} | {name} | {_fmt([r['accuracy'] for r in cell])} | "
                             f"{_fmt([r['auroc'] for r in cell])} | {np.mean([r['in_sample_auroc'] for r in cell]):.3f} | "
                             f"{min(r['spread'] for r in cell):.2f} | {np.mean([r['seconds'] for r in cell]):.1f} |")
            for name in cells:
                reps = sorted(set(cells[name]) & set(cells.get(REFERENCE, {})))
                if name == REFERENCE or not reps:
                    continue
                d = [cells[name][r]["accuracy"] - cells[REFERENCE][r]["accuracy"] for r in reps]
                a = [cells[name][r]["auroc"] - cells[REFERENCE][r]["auroc"] for r in reps]
                diffs.append(f"| {n_l} | {n_u} | {name} | {_fmt(d)} | {_fmt(a)} |")
    lines += ["", f"Paired difference model - {REFERENCE} (same repeats, same data):", "",
              "| labelled | unlabelled | model | Δ accuracy | Δ AUROC |", "|---|---|---|---|---|", *diffs]
    return "\n".join(lines)


def _parse() -> tuple[argparse.Namespace, dict[str, dict[str, Any]]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--labelled", default="10,20,50,all")
    ap.add_argument("--unlabelled", default="0,200")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--planted", default="{}", help="PlantedConfig fields as JSON")
    ap.add_argument("--params", default="{}", help="HistoStainAlign parameters for every variant, as JSON")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON parameters (replaces the defaults)")
    ap.add_argument("--json", default=None, help="write every fit's result here")
    args = ap.parse_args()
    args.labelled = [ALL if v == "all" else int(v) for v in args.labelled.split(",")]
    args.unlabelled = [int(v) for v in args.unlabelled.split(",")]
    args.planted = json.dumps({**json.loads(args.planted), "world_seed": args.world_seed}, sort_keys=True)
    args.params = json.loads(args.params)
    variants = dict(DEFAULT_VARIANTS)
    if args.variant:
        variants = {name: dict(json.loads(spec)) for name, spec in (v.split("=", 1) for v in args.variant)}
    return args, variants


def main() -> int:
    args, variants = _parse()
    jobs = _jobs(args, variants)
    start = time.perf_counter()
    print(f"{len(jobs)} fits on {args.workers} worker(s)", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_job, jobs))
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "variants": variants, "results": results}, fh, indent=1)
    print(_table(results, args, variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""torch vs ONNX Runtime (fp32, int8) on the commands beyond zero-shot: `fewshot eval` and
`predict --head`, histovl-lite on LC25000 held-out groups, all in one process and one run.

  warm-up   `fewshot fit` (knn) on 30 LC25000 training tiles (not held out) under each ONNX
            runtime: exports the image tower, measures the parity gate, and for onnx-int8
            calibrates the static quantisation; then a linear head is fitted on the same tiles
            under torch (the head `predict` applies, under every runtime)
  timed     per runtime (torch, onnx, onnx-int8, in that order), the embedding cache off so every
            tile is decoded and encoded:
              `fewshot eval` (linear + knn, shots 1/4/16, 3 seeds, grouped split, n_boot 200)
              `predict --head` on every held-out tile (metrics with n_boot 200)
            wall seconds and CPU seconds (this process and its children) of each call
  reported  speed ratios torch / runtime, macro F1 (16-shot means; predict's), the gate's image
            cosine min, and the share of predict's tile predictions equal to torch's

Tiles: the deterministic held-out subsample of scripts/bench_shared_data.py (about 3 x 100).
Needs ../shared/data and `pip install -e '.[onnx]'`.

Usage:
    python benchmarks/bench_runtime_commands.py [--per-class 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "lc25000-lung"
MODEL = "histovl-lite"
RUNTIMES = ("torch", "onnx", "onnx-int8")


def heldout_manifest(work: Path, per_class: int) -> Path:
    """The held-out subsample of scripts/bench_shared_data.py (its function)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_shared_data", REPO / "scripts" / "bench_shared_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.lc25000_heldout(work, per_class))


def training_manifest(work: Path, heldout: Path) -> Path:
    """30 tiles that are not held out (10 per class): warm-up, calibration and the head's data."""
    held = {Path(p).name for p in pd.read_csv(heldout)["path"]}
    tiles = [p for c in ("lung_aca", "lung_n", "lung_scc")
             for p in [q for q in sorted((SHARED / c).glob("*.jpeg")) if q.name not in held][:200:20]]
    target = work / "training.csv"
    pd.DataFrame({"path": [str(p) for p in tiles], "label": [p.parent.name for p in tiles]}).to_csv(target, index=False)
    return target


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def run(work: Path, per_class: int) -> dict[str, Any]:
    import histovl

    heldout = heldout_manifest(work, per_class)
    training = training_manifest(work, heldout)
    common: dict[str, Any] = {"cache": work / "cache", "use_cache": False, "progress": False, "allow_absolute_paths": True}
    for runtime in RUNTIMES[1:]:
        _, wall, _ = timed(histovl.fewshot_fit, MODEL, training, work / f"warmup-{runtime}", method="knn", runtime=runtime, **common)
        print(f"warm-up {runtime}: {wall:.1f} s (export, gate, calibration)", flush=True)
    histovl.fewshot_fit(MODEL, training, work / "head", method="linear", **common)
    rows, predictions = [], {}
    for runtime in RUNTIMES:
        ev, ev_wall, ev_cpu = timed(histovl.fewshot_eval, MODEL, heldout, None, None, work / f"eval-{runtime}",
                                    methods=("linear", "knn"), shots=(1, 4, 16), seeds=3, n_boot=200, runtime=runtime, **common)
        pr, pr_wall, pr_cpu = timed(histovl.predict, MODEL, heldout, work / f"predict-{runtime}", head=work / "head",
                                    n_boot=200, runtime=runtime, **common)
        predictions[runtime] = list(pr.predictions["prediction"])
        parity = json.loads((work / f"eval-{runtime}" / "run.json").read_text())["config"]["runtime_parity"] or {}
        gate = next(iter(parity.values()), {})
        results = ev.metrics["results"]
        rows.append({
            "runtime": runtime, "fewshot_eval_s": round(ev_wall, 1), "fewshot_eval_cpu_s": round(ev_cpu, 1),
            "predict_s": round(pr_wall, 1), "predict_cpu_s": round(pr_cpu, 1),
            "linear16_f1": round(results["linear"]["16"]["mean"]["f1_macro"], 4),
            "knn16_f1": round(results["knn"]["16"]["mean"]["f1_macro"], 4),
            "predict_f1": round(pr.metrics["f1_macro"], 4), "predict_f1_ci95": pr.metrics["ci95"]["f1_macro"],
            "gate_image_cosine_min": (gate.get("image") or {}).get("cosine_min"),
            "agreement_with_torch": round(sum(a == b for a, b in zip(predictions["torch"], predictions[runtime], strict=True))
                                          / len(predictions["torch"]), 4),
            "n_tiles": len(predictions[runtime]),
        })
        print(rows[-1], flush=True)
    torch_row = rows[0]
    for row in rows:
        for key in ("fewshot_eval_s", "fewshot_eval_cpu_s", "predict_s", "predict_cpu_s"):
            row[f"{key}_ratio"] = round(torch_row[key] / row[key], 2)
    return {"rows": rows, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is not present: this benchmark needs ../shared/data")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_runtime_commands_"))
    work.mkdir(parents=True, exist_ok=True)
    result = run(work, args.per_class)
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(pd.DataFrame(result["rows"]).drop(columns=["predict_f1_ci95"]).to_string(index=False))
    print(f"load average {result['load_average']}; results in {work / 'results.json'}")


if __name__ == "__main__":
    main()

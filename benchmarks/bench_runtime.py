"""torch vs ONNX Runtime (fp32, int8): zero-shot end to end on LC25000 held-out groups, one run.

For each model (open_clip ViT-B-32 and ViT-B-16 with seeded random weights, since no pretrained
CLIP weights exist offline; the bundled histovl-lite) and each runtime (torch, onnx, onnx-int8),
all in one process and one run so the ratios share the machine's load:

  warm-up   a zero-shot run on 16 LC25000 tiles that are NOT evaluated (training tiles): loads
            the torch model, exports the ONNX towers and measures the parity gate (for static
            int8 these are also the calibration images), so the timed runs measure steady state
  timed     `histovl.zeroshot` on the evaluated tiles with the embedding cache off (every image
            decoded and encoded; prompts encoded), wall seconds of the whole call: decode ->
            encode -> text classifier -> metrics with grouped bootstrap CIs -> outputs; and CPU
            seconds (this process and its decode workers). With `--repeats R` the runtimes take
            turns R times (torch, onnx, onnx-int8, torch, ...) and the best of each is reported
            (all values are kept in results.json), so a burst of load on a shared machine does not
            land on one runtime only
  encode    the forward pass only: img/s of `encode_image` on one batch of 16 preprocessed tiles (best of 2)

  RATIO     torch seconds / runtime seconds (targets: onnx >= 1.0, onnx-int8 >= 1.8); also
            the same ratio of CPU seconds, which other jobs on the machine disturb less
  agreement share of tiles whose predicted class equals torch's (target >= 0.99)
  F1        macro F1 with its grouped bootstrap 95% CI (should not move beyond the CI)

Tiles: LC25000 lung tiles held out from histovl-lite's training
(src/histovl/assets/histovl_lite/lc25000_heldout.txt), grouped by near-duplicate original;
per class, whole groups in sha256 order of their id until `--per-class` tiles are reached.
Prompts: the shipped `lung-he-v1` set.

Usage:
    python benchmarks/bench_runtime.py [--per-class 40] [--models vit-b-32,vit-b-16,histovl-lite]
                                       [--runtimes torch,onnx,onnx-int8] [--n-boot 200] [--repeats 1]
                                       [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "lc25000-lung"
HELDOUT = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "lc25000_heldout.txt"
PROMPTS = "lung-he-v1"
ARCHS = {"vit-b-32": "ViT-B-32", "vit-b-16": "ViT-B-16"}
WARMUP_TILES = 16
ENCODE_TILES = 16


def heldout_manifest(work: Path, per_class: int) -> Path:
    """path,label,group of whole held-out near-duplicate groups, `per_class` tiles per class or a
    few more: the same deterministic subsample as scripts/bench_shared_data.py (its function)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_shared_data", REPO / "scripts" / "bench_shared_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.lc25000_heldout(work, per_class))


def warmup_manifest(work: Path) -> Path:
    """16 training tiles (not held out), the warm-up and calibration images."""
    held = set(HELDOUT.read_text().split())
    rows = []
    for label in ("lung_aca", "lung_n", "lung_scc"):
        names = sorted(f"{label}/{p.name}" for p in (SHARED / label).glob("*.jpeg"))
        rows += [(str(SHARED / n), label, f"w{i}") for i, n in enumerate([n for n in names if n not in held][:6])]
    target = work / "warmup.csv"
    pd.DataFrame(rows[:WARMUP_TILES], columns=["path", "label", "group"]).to_csv(target, index=False)
    return target


def random_weights(work: Path, arch: str) -> str:
    """open_clip `arch` with its seeded random initialisation, as an ``open_clip:`` spec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    target = work / f"{arch}-random.safetensors"
    if not target.is_file():
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
    return f"open_clip:{arch}:{target}"


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the decode workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(spec: str, manifest: Path, out: Path, cache: Path, runtime: str, n_boot: int, use_cache: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one zero-shot run."""
    from histovl import zeroshot
    from histovl.options import RunOptions

    opts = RunOptions(cache=cache, use_cache=use_cache, runtime=runtime, n_boot=n_boot, progress=False,  # type: ignore[arg-type]
                      allow_approximate=True, allow_absolute_paths=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    zeroshot(spec, manifest, PROMPTS, out, options=opts)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def encode_only(spec: str, manifest: Path, cache: Path, runtime: str) -> float:
    """img/s of the forward pass on one batch of `ENCODE_TILES` preprocessed tiles (best of 2)."""
    import torch
    from PIL import Image

    from histovl.models.identity import weights_fingerprint
    from histovl.models.lazy import loaded_model
    from histovl.models.runtime import apply_runtime
    from histovl.options import RunOptions

    # the zero-shot runs' own per-process model (same key), so nothing is loaded twice
    torch_enc = loaded_model(spec, device="cpu", trust_checkpoint=False, fingerprint=weights_fingerprint(spec))
    encoder = apply_runtime(torch_enc, RunOptions(cache=cache, runtime=runtime, allow_approximate=True))  # type: ignore[arg-type]
    paths = pd.read_csv(manifest)["path"].tolist()[:ENCODE_TILES]
    pixels = torch.stack([torch_enc.preprocess(Image.open(p).convert("RGB")) for p in paths])
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            start = time.perf_counter()
            encoder.encode_image(pixels)
            best = min(best, time.perf_counter() - start)
    return len(paths) / best


def _summary(out: Path, torch_out: Path) -> dict[str, Any]:
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "run.json").read_text())["config"]
    preds = pd.read_csv(out / "predictions.csv")["prediction"].to_numpy()
    ref = pd.read_csv(torch_out / "predictions.csv")["prediction"].to_numpy()
    parity = next(iter((config.get("runtime_parity") or {}).values()), None)
    return {"n": int(metrics["n"]), "f1_macro": metrics["f1_macro"], "f1_ci95": metrics["ci95"].get("f1_macro"),
            "agreement_vs_torch": float(np.mean(preds == ref)), "parity": parity}


def bench_model(name: str, spec: str, manifests: tuple[Path, Path], work: Path, runtimes: list[str], n_boot: int,
                repeats: int = 1) -> list[dict[str, Any]]:
    """Warm-up, timed end-to-end runs (best of `repeats`, runtimes taking turns) and encode-only
    rate of every runtime for one model."""
    heldout, warmup = manifests
    cache = work / "cache" / name
    for runtime in runtimes:  # warm-up first, all runtimes: exports and gates are out of the timings
        _run(spec, warmup, work / "warmup" / name / runtime, cache, runtime, 0, True)
    timings: dict[str, list[tuple[float, float, float]]] = {r: [] for r in runtimes}
    for rep in range(repeats):
        for runtime in runtimes:
            out = work / "runs" / name / (runtime if rep == 0 else f"{runtime}-{rep}")
            wall, cpu = _run(spec, heldout, out, cache, runtime, n_boot, False)
            timings[runtime].append((round(wall, 2), round(cpu, 2), round(os.getloadavg()[0], 2)))
            print(json.dumps({"model": name, "runtime": runtime, "repeat": rep, "seconds": timings[runtime][-1][0],
                              "cpu_seconds": timings[runtime][-1][1], "load_1min": timings[runtime][-1][2]}), flush=True)
    rows = []
    for runtime in runtimes:
        out = work / "runs" / name / runtime
        row: dict[str, Any] = {"model": name, "runtime": runtime, "seconds": min(t[0] for t in timings[runtime]),
               "cpu_seconds": min(t[1] for t in timings[runtime]), "timed_runs": timings[runtime],
               "encode_img_per_s": round(encode_only(spec, heldout, cache, runtime), 2)}
        row.update(_summary(out, work / "runs" / name / runtimes[0]))
        warm_cfg = json.loads((work / "warmup" / name / runtime / "run.json").read_text())["config"]
        row["gate"] = next(iter((warm_cfg.get("runtime_parity") or {}).values()), None)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("parity", "gate")}), flush=True)
    for row in rows:
        row["ratio_vs_torch"] = round(rows[0]["seconds"] / row["seconds"], 3)
        row["cpu_ratio_vs_torch"] = round(rows[0]["cpu_seconds"] / row["cpu_seconds"], 3)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | end-to-end s (best) | ratio vs torch | CPU s (best) | CPU ratio | encode img/s | agreement vs torch | macro F1 [95% CI] | gate cosine min image / text (calibration) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["f1_ci95"] or [float("nan")] * 2
        gate = r.get("gate") or {}
        img = (gate.get("image") or {}).get("cosine_min", "—")
        txt = gate.get("text") if isinstance(gate.get("text"), dict) else {}
        lines.append(f"| {r['model']} | {r['runtime']} | {r['seconds']:.1f} | {r['ratio_vs_torch']:.2f}x | {r['cpu_seconds']:.1f} | "
                     f"{r['cpu_ratio_vs_torch']:.2f}x | {r['encode_img_per_s']:.1f} | "
                     f"{r['agreement_vs_torch']:.3f} | {r['f1_macro']:.3f} [{ci[0]:.3f}–{ci[1]:.3f}] | {img} / {txt.get('cosine_min', '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--models", default="vit-b-32,vit-b-16,histovl-lite")
    parser.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per runtime, taking turns; the best is reported")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is not present: this benchmark needs ../shared/data (see its README)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    manifests = (heldout_manifest(work, args.per_class), warmup_manifest(work))
    n = len(pd.read_csv(manifests[0]))
    print(f"# {n} held-out LC25000 tiles ({args.per_class}+ per class, whole groups); work folder {work}; "
          f"load average {os.getloadavg()}", flush=True)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        spec = "histovl-lite" if name == "histovl-lite" else random_weights(work, ARCHS[name])
        rows += bench_model(name, spec, manifests, work, args.runtimes.split(","), args.n_boot, args.repeats)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(_table(rows))
    print(f"# load average at the end {os.getloadavg()}")
    print(f"# results: {work / 'results.json'}")


if __name__ == "__main__":
    main()

"""Time to draw a zero-shot report's three figures, cold, against the figure code of a git revision.

Each trial is a fresh interpreter (as a cold `histovl zeroshot` run: matplotlib not yet imported)
that builds the standard single-label report (`build_classification_report`: confusion matrices,
reliability diagram, F1 per class) from synthetic predictions and writes it; the figure sections
are timed (`Report._save_figure`: drawing function + PNG), in wall and CPU seconds, with and
without the matplotlib import they start with. Trials of the current tree and of the baseline
(`--baseline`'s src/histovl/reports/{figures,reliability}.py, swapped in for the current ones)
alternate, so load drift on a shared machine hits both alike; medians and the per-pair ratio are
printed (docs/performance.md: report ratios, not absolute times).

With ``--zeroshot`` each trial is instead a whole cold `histovl zeroshot` run (in the trial's
process, fresh cache: nothing memoised) on ``--tiles`` LC25000 lung tiles with ``--arch`` (random
weights), and only its figures are timed.

Usage:
    python benchmarks/bench_report_figures.py [--baseline f19b20f] [--classes 3] [--tiles 83]
        [--repeats 5] [--out DIR]  # DIR keeps each variant's PNGs and report.html to look at
    python benchmarks/bench_report_figures.py --zeroshot --tiles 83 --repeats 3 [--arch ViT-B-32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LONG_NAMES = [
    "lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma", "tumour stroma",
    "necrosis", "lymphocytes", "mucus", "debris and background", "smooth muscle",
]

TRIAL = r"""
import json, sys, time, types
from pathlib import Path
import numpy as np
args = json.loads(sys.argv[1])
from histovl.metrics import classification_metrics  # noqa: E402  (what zeroshot computes)
import histovl.reports.outputs as outputs, histovl.reports.html as html
if args["baseline"]:
    for name in ("figures", "reliability"):
        module = types.ModuleType(f"_baseline_{name}")
        exec(compile(Path(args["baseline"], name + ".py").read_text(), f"baseline/{name}.py", "exec"), module.__dict__)
        for attr in ("confusion_matrix_figure", "per_class_bar_figure", "reliability_figure", "save_figure"):
            if hasattr(module, attr):
                setattr(outputs if attr != "save_figure" else html, attr, getattr(module, attr))
spent = {"wall": 0.0, "cpu": 0.0, "import_wall": 0.0, "import_cpu": 0.0}
draw = html.Report._save_figure
def timed(self, *a):
    w, c = time.perf_counter(), time.process_time()
    if "matplotlib.figure" not in sys.modules:
        import matplotlib.figure, matplotlib.backends.backend_agg  # noqa: F401
        spent["import_wall"], spent["import_cpu"] = time.perf_counter() - w, time.process_time() - c
    draw(self, *a)
    spent["wall"] += time.perf_counter() - w
    spent["cpu"] += time.process_time() - c
html.Report._save_figure = timed
if args["zeroshot"]:  # the whole command, in this process, with a fresh cache (nothing memoised)
    from histovl.cli.app import main
    sys.argv = ["histovl", "zeroshot", *args["zeroshot"], "--out", args["out"], "--cache", args["out"] + ".cache"]
    try:
        main()
    except SystemExit as stop:
        assert not stop.code, stop.code
else:
    names = args["names"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(names), args["tiles"])
    logits = rng.normal(size=(len(y), len(names))) + 2.0 * np.eye(len(names))[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = [names[i] for i in y]
    metrics = classification_metrics(labels, probs, names, n_boot=200, seed=0)
    frame = outputs.predictions_table([f"t{i}.png" for i in range(len(y))], labels, probs, names)
    outputs.build_classification_report("Zero-shot", metrics, frame, n_examples=0).write(args["out"])
print(json.dumps(spent))
"""


def _baseline_dir(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="histovl-figures-baseline-"))
    for name in ("figures", "reliability"):
        text = subprocess.run(["git", "show", f"{rev}:src/histovl/reports/{name}.py"], cwd=REPO,
                              check=True, capture_output=True, text=True).stdout
        (folder / f"{name}.py").write_text(text)
    return folder


def _zeroshot_args(work: Path, tiles: int, arch: str) -> list[str]:
    """`histovl zeroshot` arguments: `tiles` LC25000 lung tiles (synthetic ones without
    ../shared/data), `arch` with random weights, the shipped lung prompt set (bench_warm's setup)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_warm

    work.mkdir(parents=True, exist_ok=True)
    manifest, source = bench_warm._manifest(work, tiles)
    prompts = bench_warm._prompt_files(work)[0]
    print(f"zero-shot run: {tiles} tiles ({source}), {arch} (random weights), prompts {bench_warm.PROMPTS}")
    weights = bench_warm._weights(work, arch)
    return ["--model", f"open_clip:{arch}:{weights}", "--data", str(manifest), "--prompts", str(prompts),
            "--allow-absolute-paths", "--quiet"]


def _trial(baseline: Path | None, names: list[str], tiles: int, out: Path,
           zeroshot: list[str] | None = None) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
        shutil.rmtree(f"{out}.cache", ignore_errors=True)
    args = {"baseline": str(baseline) if baseline else None, "names": names, "tiles": tiles, "out": str(out),
            "zeroshot": zeroshot}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", TRIAL, json.dumps(args)], check=True, capture_output=True,
                          text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="f19b20f", help="git revision whose figure code is the baseline")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=83)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="keep the reports here (baseline/, current/)")
    ap.add_argument("--zeroshot", action="store_true",
                    help="time the figures of whole `histovl zeroshot` runs on --tiles lung tiles (3 classes)")
    ap.add_argument("--arch", default="ViT-B-32", help="model of --zeroshot (random weights)")
    args = ap.parse_args()
    names = [LONG_NAMES[k % len(LONG_NAMES)] + ("" if k < len(LONG_NAMES) else f" {k}") for k in range(args.classes)]
    out = args.out or Path(tempfile.mkdtemp(prefix="histovl-figures-"))
    base = _baseline_dir(args.baseline)
    zeroshot = _zeroshot_args(out, args.tiles, args.arch) if args.zeroshot else None
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    for _ in range(args.repeats):
        for variant in ("baseline", "current"):
            runs[variant].append(_trial(base if variant == "baseline" else None, names, args.tiles, out / variant,
                                        zeroshot))
    what = "zero-shot runs" if zeroshot else f"{args.classes} classes"
    print(f"{what}, {args.tiles} tiles, baseline {args.baseline}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; reports in {out}")
    for key, what in (("wall", "figures wall s (incl. matplotlib import)"), ("cpu", "figures CPU s (incl. import)")):
        b, c = (statistics.median(r[key] for r in runs[v]) for v in ("baseline", "current"))
        pairs = [x[key] / y[key] for x, y in zip(runs["baseline"], runs["current"], strict=True)]
        print(f"{what:42s} baseline {b:.3f}  current {c:.3f}  RATIO {statistics.median(pairs):.2f}x "
              f"(per pair {', '.join(f'{p:.2f}' for p in pairs)})")
    for key in ("wall", "cpu"):
        drawn = {v: [r[key] - r[f"import_{key}"] for r in runs[v]] for v in runs}
        b, c = (statistics.median(drawn[v]) for v in ("baseline", "current"))
        pairs = [x / y for x, y in zip(drawn["baseline"], drawn["current"], strict=True)]
        print(f"{'figures ' + key + ' s, matplotlib import excluded':42s} baseline {b:.3f}  current {c:.3f}  "
              f"RATIO {statistics.median(pairs):.2f}x (per pair {', '.join(f'{p:.2f}' for p in pairs)})")
    for key in ("wall", "cpu"):
        print(f"matplotlib import {key} s (median): {statistics.median(r['import_' + key] for v in runs for r in runs[v]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`histovl bench`: re-run time of a finished grid, and the bench's overhead over the same cells by hand.

Every figure is the wall time of a fresh process (imports included), measured in one run and
interleaved per repeat so load drift on a shared machine hits both sides alike:

  first    `bench` on an empty cache and an empty --out (every cell computed)
  rerun    the same `bench` again: every cell reused (target: < 10% of first); this child does not
           register the tiny test architecture (torch + open_clip imports), which a finished grid
           never needs, as a standard open_clip architecture would not need it
  hand     the same cells by hand: each command's library function (zeroshot, retrieve, ...)
           called one after another in one process, empty cache, no leaderboard
  bench    `bench` on an empty cache and an empty --out (= first, measured again beside hand)

  RATIO rerun / first   = rerun ÷ first      (target < 0.10)
  RATIO bench overhead  = bench ÷ hand - 1   (target <= 0.05)

The grid: 2 tiny open_clip models with seeded random weights (tests/helpers/tiny.py) x one
synthetic data set (--n images in 3 colour classes, with groups) x zeroshot + retrieve, bench
run options n_boot=--n-boot, workers=0. The bench side also computes the leaderboard (paired
bootstrap per data set and task), which is part of its overhead.

Usage:
    python benchmarks/bench_bench.py [--n 300] [--repeats 2] [--n-boot 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = """name: colours
classes:
  red: [red tissue]
  green: [green tissue]
  blue: [blue tissue]
templates: ["an image of {}."]
"""


def build(root: Path, n: int) -> Path:
    """Images, manifest, prompts, two tiny models and the suite under `root`; returns the suite."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from tests.helpers.tiny import (
        register_tiny_open_clip_arch,
        save_safetensors,
        tiny_open_clip_model,
    )

    rng = np.random.default_rng(0)
    rows = ["path,label,group"]
    for i in range(n):
        ci = i % 3
        arr = np.zeros((48, 48, 3), dtype=np.int16)
        arr[..., ci] = 150
        arr = np.clip(arr + rng.integers(0, 100, size=arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img{i:04d}.png")
        rows.append(f"img{i:04d}.png,{('red', 'green', 'blue')[ci]},g{i % 17}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "prompts.yaml").write_text(PROMPTS)
    arch = register_tiny_open_clip_arch(root)
    models = [save_safetensors(tiny_open_clip_model(s), root / f"tiny{s}.safetensors") for s in (1, 2)]
    suite = root / "suite.yaml"
    suite.write_text(
        "models:\n" + "".join(f'  - "open_clip:{arch}:{m}"\n' for m in models)
        + "datasets:\n  - {name: synth, path: manifest.csv, prompts: prompts.yaml}\n"
        + "tasks:\n  - task: zeroshot\n  - {task: retrieve, options: {k: [3]}}\n"
    )
    return suite


CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
if {register}:  # the tiny architecture (imports torch + open_clip); a finished grid needs no model
    from tests.helpers.tiny import register_tiny_open_clip_arch
    register_tiny_open_clip_arch(Path({root!r}))
from histovl.options import RunOptions
opts = RunOptions(cache=Path({cache!r}), n_boot={n_boot}, workers=0, progress=False)
if {mode!r} == "bench":
    from histovl.bench import bench
    bench({suite!r}, {out!r}, options=opts)
else:
    from histovl.bench.cells import plan_cells, run_cell
    from histovl.bench.suite import load_suite
    suite = load_suite(Path({suite!r}))
    for cell in plan_cells(suite, Path({out!r}), opts, suite.build_configs()):
        run_cell(cell)
"""


def timed(mode: str, root: Path, suite: Path, out: Path, cache: Path, n_boot: int, register: bool = True) -> float:
    code = CHILD.format(repo=str(REPO), root=str(root), cache=str(cache), n_boot=n_boot, mode=mode,
                        suite=str(suite), out=str(out), register=register)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def fresh(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suite = build(root, args.n)
        cache, out = root / "cache", root / "out"
        times: dict[str, list[float]] = {"first": [], "rerun": [], "hand": [], "bench": []}
        for r in range(args.repeats):
            fresh(cache, out)
            times["first"].append(timed("bench", root, suite, out, cache, args.n_boot))
            times["rerun"].append(timed("bench", root, suite, out, cache, args.n_boot, register=False))
            for mode in (("hand", "bench") if r % 2 == 0 else ("bench", "hand")):
                fresh(cache, out)
                times[mode].append(timed(mode, root, suite, out, cache, args.n_boot))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:6s} median {med[k]:7.2f} s   runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"RATIO rerun / first  = {med['rerun'] / med['first']:.3f} (target < 0.10)")
    print(f"RATIO bench overhead = {med['bench'] / med['hand'] - 1:+.3f} (target <= 0.05)")


if __name__ == "__main__":
    main()

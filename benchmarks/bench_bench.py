"""`histovl bench`: re-run time of a finished grid, and the bench's overhead over the same cells by hand.

Every figure is the wall time and the CPU time (user + system, from getrusage of the child) of a
fresh process (imports included), measured in one run and interleaved per repeat so load drift on
a shared machine hits both sides alike; on a loaded machine the CPU ratio is the steadier one:

  first    `bench` on an empty cache and an empty --out (every cell computed)
  rerun    the same `bench` again: every cell reused (target: < 10% of first); this child does not
           register the tiny test architecture (torch + open_clip imports), which a finished grid
           never needs, as a standard open_clip architecture would not need it
  hand     the same cells by hand: each command's library function (zeroshot, retrieve, ...)
           called directly, one after another in one process, empty cache, no stopwatch, no
           leaderboard
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
import resource
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
else:  # by hand: each cell's command function called directly (no stopwatch, no leaderboard)
    import importlib
    from histovl.bench.cells import plan_cells
    from histovl.bench.suite import TASKS, load_suite
    suite = load_suite(Path({suite!r}))
    for cell in plan_cells(suite, Path({out!r}), opts, suite.build_configs()):
        module, name, _, _ = TASKS[cell.kind]
        fn = getattr(importlib.import_module(module), name)
        if cell.kind == "retrieve":
            fn(cell.spec, cell.data, str(cell.folder), cell.config, cell.options)
        else:
            fn(cell.spec, cell.data, cell.prompts, str(cell.folder), cell.config, cell.options)
"""


def timed(mode: str, root: Path, suite: Path, out: Path, cache: Path, n_boot: int,
          register: bool = True) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh child process."""
    code = CHILD.format(repo=str(REPO), root=str(root), cache=str(cache), n_boot=n_boot, mode=mode,
                        suite=str(suite), out=str(out), register=register)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
        times: dict[str, list[tuple[float, float]]] = {"first": [], "rerun": [], "hand": [], "bench": []}
        for r in range(args.repeats):
            fresh(cache, out)
            times["first"].append(timed("bench", root, suite, out, cache, args.n_boot))
            times["rerun"].append(timed("bench", root, suite, out, cache, args.n_boot, register=False))
            for mode in (("hand", "bench") if r % 2 == 0 else ("bench", "hand")):
                fresh(cache, out)
                times[mode].append(timed(mode, root, suite, out, cache, args.n_boot))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:6s} median wall {wall[k]:7.2f} s  cpu {cpu[k]:7.2f} s   runs (wall/cpu) "
              + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in v))
    print(f"RATIO rerun / first  = {wall['rerun'] / wall['first']:.3f} wall, "
          f"{cpu['rerun'] / cpu['first']:.3f} cpu (target < 0.10)")
    print(f"RATIO bench overhead = {wall['bench'] / wall['hand'] - 1:+.3f} wall, "
          f"{cpu['bench'] / cpu['hand'] - 1:+.3f} cpu (target <= 0.05)")


if __name__ == "__main__":
    main()

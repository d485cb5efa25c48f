"""The few-shot grid on cached embeddings against the time to encode the same tiles (one run).

    python benchmarks/bench_fewshot.py [--model histovl-lite] [--data DIR_OR_CSV ...] [--n 1000] \
        [--prompts lung-he-v1] [--cache DIR] [--allow-absolute-paths] [--json out.json]

1. encode: `encode_images` of n tiles into an empty embedding cache (what a user pays once).
2. grid: 5 methods x 6 shot counts (1, 2, 4, 8, 16, all) x 5 seeds on those embeddings: support
   draw, fit, predict on the query set, point metrics. Reported as `fewshot eval` runs it (``all``
   once: its support is the same for every seed) and with ``all`` also repeated for every seed.
   Then, separately, the bootstrap replicates (``n_boot`` resamples of the query set per run)
   that the confidence intervals need, and the near-duplicate grouping of the tiles.
3. command: `histovl.heads.fewshot_eval` end to end on the warm embedding cache (near-duplicate
   grouping, grid, zero-shot, CIs, every output file), then once more: the re-run also finds the
   near-duplicate grouping in the cache.
The data is split once by group into a support pool and a 30% query set (as `--data` does).
Prints a JSON summary: seconds per step and each step's ratio to the encoding time.
Default data: n tiles sampled (seed 0) from ../shared/data/lc25000-lung.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from histovl.data import ImageSet, load_image_set, near_duplicate_groups
from histovl.embed import EmbeddingCache, encode_images
from histovl.heads import METHODS, FewshotConfig, fewshot_eval, make_head
from histovl.heads.fewshot_run import point_metrics
from histovl.heads.fewshot_split import draw_orders, leakage_units, split_pool, support_indices
from histovl.metrics.classification import classification_replicates
from histovl.models import load_model
from histovl.options import RunOptions
from histovl.prompts import load_prompt_set
from histovl.zeroshot.classifier import build_text_classifier

SHOTS = (1, 2, 4, 8, 16, "all")
SEEDS = 5


def sample(specs: list[str], n: int, allow_absolute: bool) -> ImageSet:
    sets = [load_image_set(s, allow_absolute_paths=allow_absolute) for s in specs]
    records = tuple(r for s in sets for r in s.records)
    picked = np.sort(np.random.default_rng(0).choice(len(records), size=min(n, len(records)), replace=False))
    return ImageSet(records=tuple(records[i] for i in picked), root=sets[0].root, source=sets[0].source, kind="manifest")


def run_grid(emb: np.ndarray, labels: np.ndarray, classes: list[str], clf, pool, query, units) -> tuple[dict, list]:
    """Every cell for every seed; returns seconds per (shots, seed) and the query probabilities."""
    y = np.array([classes.index(v) for v in labels[query]])
    seconds: dict[tuple[str, int], float] = {}
    runs = []
    for shots in SHOTS:
        for seed in range(SEEDS):
            start = time.perf_counter()
            idx = support_indices(draw_orders(pool, labels, units, classes, seed), shots, pool)
            for method in METHODS:
                head = make_head(method, classes, classifier=clf, random_state=seed).fit(emb[idx], labels[idx].tolist())
                probs = head.predict_proba(emb[query])
                point_metrics(y, probs)
                runs.append((y, probs))
            seconds[(str(shots), seed)] = time.perf_counter() - start
    return seconds, runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="histovl-lite")
    ap.add_argument("--data", action="append", default=[])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--prompts", default="lung-he-v1")
    ap.add_argument("--cache", type=Path, default=None, help="an empty cache folder to fill (default: a temporary one)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--allow-absolute-paths", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    data = args.data or [str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000-lung")]
    if not all(Path(d).exists() for d in data):
        print(f"data not found: {data}", file=sys.stderr)
        return 1
    cache_dir = args.cache or Path(tempfile.mkdtemp(prefix="histovl-bench-fewshot-"))
    images = sample(data, args.n, args.allow_absolute_paths)
    encoder = load_model(args.model)
    prompt_set = load_prompt_set(args.prompts)
    classes = list(prompt_set.classes)
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    res = encode_images(encoder, images.paths, cache=EmbeddingCache(cache_dir), progress=False)
    t_encode = time.perf_counter() - start
    if res.n_cached:
        print(f"warning: {res.n_cached} of {len(images)} tiles came from the cache; the encode time is not a cold one", file=sys.stderr)

    labels = np.array(images.labels, dtype=object)
    units = leakage_units([[f"path:{p}"] + ([f"group:{r.group}"] if r.group else []) for p, r in zip(images.paths, images.records, strict=True)])
    split = split_pool(images.records, units, None, query_fraction=0.3, seed=0)
    clf = build_text_classifier(encoder, prompt_set)
    seconds, runs = run_grid(res.embeddings, labels, classes, clf, split.pool, split.query, units)
    t_grid_all_seeds = sum(seconds.values())
    t_grid = sum(v for (shots, seed), v in seconds.items() if shots != "all" or seed == 0)  # as `fewshot eval` runs it
    start = time.perf_counter()
    for y, probs in runs:
        classification_replicates(y, probs, probs.argmax(axis=1), len(classes), n_boot=args.n_boot, seed=0)
    t_boot = (time.perf_counter() - start) * (len(runs) - 4 * len(METHODS)) / len(runs)  # the runs the command makes
    start = time.perf_counter()
    near_duplicate_groups(images.paths)
    t_dups = time.perf_counter() - start

    options = RunOptions(cache=cache_dir, progress=False, n_boot=args.n_boot, allow_absolute_paths=args.allow_absolute_paths)
    t_commands = []
    for _ in range(2):  # first: groups near-duplicates and caches them; second: a re-run
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            fewshot_eval(encoder, images, None, prompt_set, out, FewshotConfig(), options)
        t_commands.append(time.perf_counter() - start)
    t_command = t_commands[0]

    summary = {
        "model": args.model, "n_tiles": len(images), "n_pool": int(len(split.pool)), "n_query": int(len(split.query)),
        "runs_every_seed": len(runs), "runs_as_command": len(runs) - 4 * len(METHODS), "n_boot": args.n_boot,
        "encode_s": round(t_encode, 1), "encode_img_per_s": round(len(images) / t_encode, 2),
        "grid_s": round(t_grid, 2), "grid_all_shots_every_seed_s": round(t_grid_all_seeds, 2),
        "grid_bootstrap_s": round(t_boot, 2), "near_duplicate_grouping_s": round(t_dups, 1),
        "command_warm_cache_s": round(t_command, 1),
        "grid_over_encode": round(t_grid / t_encode, 4),
        "grid_all_shots_every_seed_over_encode": round(t_grid_all_seeds / t_encode, 4),
        "grid_with_bootstrap_over_encode": round((t_grid + t_boot) / t_encode, 4),
        "command_over_encode": round(t_command / t_encode, 4),
        "command_rerun_s": round(t_commands[1], 1), "command_rerun_over_encode": round(t_commands[1] / t_encode, 4),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)], "cpus": os.cpu_count(),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

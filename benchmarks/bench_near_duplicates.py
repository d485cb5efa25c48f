"""Near-duplicate grouping on LC25000 lung: groups per class, time, and what a random split leaks.

Run: ``python benchmarks/bench_near_duplicates.py [--workers 2] [--out groups.csv]``
Needs ../shared/data/lc25000-lung. Prints, per threshold, groups per class, cross-class groups
(certainly wrong merges), the largest group, and singletons; then the leakage of a random
80/20 split versus the group split (test images with a verified near-duplicate in train).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

from histovl.data import load_image_set
from histovl.data.splits import (
    group_split,
    groups_from_pairs,
    near_duplicate_pairs,
    write_group_manifest,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000-lung"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write a manifest with groups here")
    args = parser.parse_args()
    images = load_image_set(DATA)
    labels = np.array(images.labels)
    start = time.perf_counter()
    pairs = near_duplicate_pairs(images.paths, workers=args.workers)
    elapsed = time.perf_counter() - start
    print(f"{len(images)} images, {len(pairs.first)} verified candidate pairs, {elapsed:.1f} s "
          f"({len(images) / elapsed:.0f} img/s, workers={args.workers})")
    for max_distance in (0.20, 0.24, 0.28, 0.32):
        groups = np.array(groups_from_pairs(len(images), pairs, max_distance=max_distance))
        sizes = Counter(groups.tolist())
        cross = sum(1 for g in sizes if len(set(labels[groups == g])) > 1)
        per_class = {c: len(set(groups[labels == c])) for c in images.classes}
        print(f"max_distance={max_distance:.2f}: {len(sizes)} groups {per_class}; cross-class {cross}; "
              f"largest {max(sizes.values())}; singletons {sum(v == 1 for v in sizes.values())}; "
              f"median size {np.median(list(sizes.values())):.0f}")
    groups = groups_from_pairs(len(images), pairs)
    close = pairs.distance <= 0.20  # confidently the same original
    rng = np.random.default_rng(0)
    random_test = rng.random(len(images)) < 0.2
    _, test = group_split(images, test_fraction=0.2, seed=0, groups=groups)
    test_paths = set(test.paths)
    group_test = np.array([p in test_paths for p in images.paths])
    for name, is_test in (("random split", random_test), ("group split", group_test)):
        straddling = close & (is_test[pairs.first] != is_test[pairs.second])
        leaked = set(np.where(is_test)[0]) & (
            set(pairs.first[straddling].tolist()) | set(pairs.second[straddling].tolist())
        )
        print(f"{name}: {int(is_test.sum())} test images, {len(leaked)} "
              f"({100 * len(leaked) / is_test.sum():.0f}%) have a near-duplicate (d<=0.20) in train")
    if args.out is not None:
        print("wrote", write_group_manifest(images, args.out, groups=groups, allow_absolute_paths=True))


if __name__ == "__main__":
    main()

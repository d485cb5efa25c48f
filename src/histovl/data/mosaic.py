"""`histovl data mosaic`: real multi-label images built from real single-label tiles.

Each mosaic is a ``grid x grid`` layout of source tiles; its label set is the set of the source
tiles' classes. Built for tests and benchmarks of multi-label methods where no public
multi-label set is at hand.

Leakage control: source *groups* (the manifest's ``group`` column, else each tile alone) are
split into train and test first, per class and seeded, and each split's mosaics draw only from
that split's tiles, so no source tile and no source group appears on both sides. For LC25000,
whose tiles are rotations/flips of ~250 originals per class, give near-duplicate groups in a
manifest, otherwise augmented copies of one original can still fall on both sides.

Outputs (never inside a git working tree unless allowed): ``images/*.png``, ``mosaics.csv``
(all), ``train.csv`` and ``test.csv``. Columns: ``path``, ``labels`` (``;``-separated, prompt
order of the source classes), ``group`` (the mosaic id, for the bootstrap), ``split`` and, per
cell i (row-major), ``cell<i>_label``, ``cell<i>_source`` and ``cell<i>_group``. They are
written into a staged folder that replaces the previous one as a whole (docs/reliability.md,
"run interrupted"): an interrupted run leaves the previous mosaics or none, never a mix.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from histovl._io import atomic_write_text, atomic_write_with
from histovl.data.multilabel_formats import _csv_text
from histovl.data.records import ImageSet
from histovl.errors import HistovlError
from histovl.options import PathArg, RunOptions, split_overrides
from histovl.outputs_guard import staged_folder


@dataclass(frozen=True)
class MosaicSummary:
    """What `mosaic` wrote: manifests, counts and the class order."""

    out: Path
    manifest: Path
    train_manifest: Path
    test_manifest: Path
    n_train: int
    n_test: int
    classes: tuple[str, ...]
    n_source_groups_train: int
    n_source_groups_test: int


def split_groups(
    image_set: ImageSet, *, test_fraction: float, seed: int
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per-class record indices for train and test, with every source group on one side only.

    Groups are shuffled within each class (seeded) and the first ``ceil(test_fraction * n)`` go
    to test; a group seen in an earlier class keeps its side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, rec in enumerate(image_set.records):
        if rec.label is None:
            raise ValueError(f"mosaics need single-label source tiles; {rec.path} has none")
        by_class[rec.label][rec.group if rec.group is not None else str(rec.path)].append(i)
    side: dict[str, str] = {}
    train: dict[str, list[int]] = {}
    test: dict[str, list[int]] = {}
    for cls in sorted(by_class):
        groups = sorted(by_class[cls])
        fresh = [g for g in groups if g not in side]
        order = rng.permutation(len(fresh))
        n_test = int(np.ceil(test_fraction * len(fresh)))
        for rank, j in enumerate(order):
            side[fresh[j]] = "test" if rank < n_test else "train"
        train[cls] = [i for g in groups if side[g] == "train" for i in by_class[cls][g]]
        test[cls] = [i for g in groups if side[g] == "test" for i in by_class[cls][g]]
        if not train[cls] or not test[cls]:
            raise ValueError(
                f"class {cls!r} has {len(groups)} source group(s): too few to put tiles in both "
                "train and test; add tiles or lower --test-fraction"
            )
    return train, test


def _plan_mosaics(
    pools: dict[str, list[int]], classes: Sequence[str], n: int, cells: int, rng: np.random.Generator,
    max_labels: int,
) -> list[list[tuple[str, int]]]:
    """Per mosaic, the (class, record index) of each cell; tiles are used round-robin per class."""
    cursors = {c: 0 for c in classes}
    perms = {c: rng.permutation(pools[c]).tolist() for c in classes}
    plans = []
    for _ in range(n):
        k = int(rng.integers(1, max_labels + 1))
        chosen = list(rng.choice(len(classes), size=k, replace=False))
        cell_classes = chosen + list(rng.choice(chosen, size=cells - k, replace=True))
        rng.shuffle(cell_classes)
        plan = []
        for ci in cell_classes:
            cls = classes[int(ci)]
            if cursors[cls] == len(perms[cls]):
                perms[cls], cursors[cls] = rng.permutation(pools[cls]).tolist(), 0
            plan.append((cls, int(perms[cls][cursors[cls]])))
            cursors[cls] += 1
        plans.append(plan)
    return plans


def _inside_git(path: Path) -> bool:
    return any((p / ".git").exists() for p in [path, *path.parents])


@dataclass(frozen=True)
class MosaicConfig:
    """What `histovl data mosaic` builds (``seed`` and ``allow_absolute_paths`` are run options).

    Attributes:
        n_train, n_test: mosaics per split.
        grid: cells per side; each mosaic is ``grid * tile_size`` pixels square.
        tile_size: each source tile is centre-cropped to a square and resized to this.
        test_fraction: share of each class's source groups reserved for test mosaics.
        max_labels: most distinct classes per mosaic (None: min(grid^2, n_classes)); the count
            is drawn uniformly from 1..max_labels.
        allow_inside_git: allow an output folder inside a git working tree.
    """

    n_train: int = 400
    n_test: int = 200
    grid: int = 2
    tile_size: int = 112
    test_fraction: float = 0.3
    max_labels: int | None = None
    allow_inside_git: bool = False

    def __post_init__(self) -> None:
        if self.grid < 1 or self.tile_size < 8:
            raise ValueError(f"grid must be >= 1 and tile_size >= 8, got {self.grid} and {self.tile_size}")

    @property
    def cells(self) -> int:
        return self.grid * self.grid


def mosaic(
    data: PathArg | ImageSet, out: PathArg, config: MosaicConfig | None = None,
    options: RunOptions | None = None, **overrides: Any,
) -> MosaicSummary:
    """Build train/test mosaics from a single-label tile set and write images and manifests.

    Args:
        data: class folder, single-label manifest, or an `ImageSet`.
        out: output folder (must not be inside a git working tree unless
            ``config.allow_inside_git``).
        config: what to build (`MosaicConfig`).
        options: the run options; ``seed`` drives the split, the layouts and the tile choice,
            ``allow_absolute_paths`` the manifest path policy.
        overrides: fields of either, as keywords (``n_train=200, seed=1``).

    Example:
        >>> s = mosaic("../shared/data/lc25000-lung", "/tmp/mosaics", n_train=200)  # doctest: +SKIP
        >>> s.train_manifest  # doctest: +SKIP
        PosixPath('/tmp/mosaics/train.csv')
    """
    cfg, opts = split_overrides(overrides, config, MosaicConfig, options)
    out_dir = _check_out_dir(Path(out).resolve(), cfg)
    image_set, classes, top = _prepare(data, cfg, opts)
    pools = split_groups(image_set, test_fraction=cfg.test_fraction, seed=opts.seed)
    with staged_folder(out_dir) as stage:  # images and manifests replace the previous ones as a whole
        rows, groups_used = _write_mosaics(image_set, pools, classes, top, stage, cfg, opts.seed)
        manifests = {name: out_dir / path.name for name, path in _write_manifests(stage, rows, cfg.cells).items()}
    return MosaicSummary(
        out=out_dir, manifest=manifests["mosaics"], train_manifest=manifests["train"],
        test_manifest=manifests["test"], n_train=cfg.n_train, n_test=cfg.n_test, classes=classes,
        n_source_groups_train=len(groups_used["train"]), n_source_groups_test=len(groups_used["test"]),
    )


def _check_out_dir(out_dir: Path, cfg: MosaicConfig) -> Path:
    if _inside_git(out_dir) and not cfg.allow_inside_git:
        raise HistovlError(
            f"{out_dir} is inside a git working tree; mosaics are derived data that must not be "
            "committed. Choose a folder outside the repository (or pass --allow-inside-git)."
        )
    return out_dir


def _prepare(data: str | os.PathLike[str] | ImageSet, cfg: MosaicConfig, opts: RunOptions) -> tuple[ImageSet, tuple[str, ...], int]:
    """The source tiles, their classes (sorted) and the most labels per mosaic, all checked."""
    from histovl.data import load_image_set

    image_set = data if isinstance(data, ImageSet) else load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError(f"{image_set.source} is multi-label; mosaics are built from single-label tiles")
    classes = tuple(sorted({r.label for r in image_set.records if r.label is not None}))
    if len(classes) < 2:
        raise ValueError(f"mosaics need at least 2 classes, found {list(classes)}")
    top = min(cfg.cells, len(classes)) if cfg.max_labels is None else cfg.max_labels
    if not 1 <= top <= min(cfg.cells, len(classes)):
        raise ValueError(f"max_labels must be in 1..{min(cfg.cells, len(classes))}, got {cfg.max_labels}")
    return image_set, classes, top


def _write_mosaics(
    image_set: ImageSet, pools: tuple[dict[str, list[int]], dict[str, list[int]]], classes: tuple[str, ...],
    top: int, out_dir: Path, cfg: MosaicConfig, seed: int,
) -> tuple[list[dict[str, str]], dict[str, set[str]]]:
    """Compose and save every mosaic image; its manifest row and the source groups each split used."""
    from histovl.data import read_rgb

    rng = np.random.default_rng(seed + 1)
    rows: list[dict[str, str]] = []
    groups_used: dict[str, set[str]] = {"train": set(), "test": set()}
    for split, split_pools, n in (("train", pools[0], cfg.n_train), ("test", pools[1], cfg.n_test)):
        for m, plan in enumerate(_plan_mosaics(split_pools, classes, n, cfg.cells, rng, top)):
            rel = f"images/{split}_{m:05d}.png"
            canvas = _compose([read_rgb(image_set.records[i].path) for _, i in plan], cfg.grid, cfg.tile_size)
            _save_png(out_dir / rel, canvas)
            present = {cls for cls, _ in plan}
            row = {"path": rel, "labels": ";".join(c for c in classes if c in present),
                   "group": f"{split}_{m:05d}", "split": split}
            for cell, (cls, i) in enumerate(plan):
                rec = image_set.records[i]
                src_group = rec.group if rec.group is not None else str(rec.path)
                groups_used[split].add(src_group)
                row |= {f"cell{cell}_label": cls, f"cell{cell}_source": str(rec.path), f"cell{cell}_group": src_group}
            rows.append(row)
    if groups_used["train"] & groups_used["test"]:  # defensive: split_groups guarantees this
        raise HistovlError("internal error: a source group was used in both train and test mosaics")
    return rows, groups_used


def _write_manifests(out_dir: Path, rows: list[dict[str, str]], cells: int) -> dict[str, Path]:
    """mosaics.csv (all rows), train.csv and test.csv; name -> path."""
    fields = ["path", "labels", "group", "split"] + [
        f"cell{i}_{k}" for i in range(cells) for k in ("label", "source", "group")
    ]
    manifests = {}
    for name, keep in (("mosaics", None), ("train", "train"), ("test", "test")):
        selected = [r for r in rows if keep is None or r["split"] == keep]
        target = out_dir / f"{name}.csv"
        atomic_write_text(target, _csv_text(fields, selected))
        manifests[name] = target
    return manifests


def _compose(tiles: Sequence[Image.Image], grid: int, tile_size: int) -> Image.Image:
    """Paste `tiles` (PIL RGB) row-major into a ``grid x grid`` canvas of square cells."""
    canvas = Image.new("RGB", (grid * tile_size, grid * tile_size))
    for cell, tile in enumerate(tiles):
        square = ImageOps.fit(tile, (tile_size, tile_size), method=Image.Resampling.BICUBIC)
        canvas.paste(square, ((cell % grid) * tile_size, (cell // grid) * tile_size))
    return canvas


def _save_png(target: Path, image: Image.Image) -> None:
    """Save atomically (temp file + rename)."""

    def write(tmp: Path) -> None:
        image.save(tmp, format="PNG")

    atomic_write_with(target, write)

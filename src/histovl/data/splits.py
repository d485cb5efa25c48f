"""Group-aware train/test splits, and manifests that record the groups for reuse.

A random split of augmented or multi-tile-per-patient data puts copies of one original on both
sides and overstates accuracy. `group_split` never splits a group, and stratifies by class where
the group sizes allow. Groups come from the data (`group` column: patient, slide) or from
`near_duplicate_groups` (rotated/flipped copies), and `write_group_manifest` saves them as a
manifest so the expensive grouping runs once.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from histovl._io import atomic_write_text
from histovl.data.loading import load_image_set
from histovl.data.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    NearDuplicatePairs,
    groups_from_pairs,
    near_duplicate_groups,
    near_duplicate_pairs,
)
from histovl.data.records import ImageSet

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "NearDuplicatePairs",
    "group_split",
    "groups_from_pairs",
    "near_duplicate_groups",
    "near_duplicate_pairs",
    "write_group_manifest",
]


def group_split(
    image_set: ImageSet,
    *,
    test_fraction: float,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Split into train and test so that no group has images on both sides.

    Each group is assigned to the stratum of its most common label (ties: alphabetical); within
    each stratum, groups are shuffled with `seed` and taken into the test side while that brings
    the stratum's test count closer to ``test_fraction`` of its images. A stratum with two or more
    groups always gets at least one on each side.

    Args:
        image_set: The data; labels are used for stratification when present.
        test_fraction: Wanted share of images in the test side, in (0, 1).
        seed: Drives the shuffle; the same inputs and seed give the same split.
        groups: One group id per record; defaults to the data's `group` column. Records with no
            group are their own group. When given, the returned records carry these groups, so
            grouped bootstrap downstream sees them.

    Returns:
        ``(train, test)`` subsets, each in the original record order.

    Raises:
        ValueError: `test_fraction` outside (0, 1), `groups` of the wrong length, or fewer than
            two groups in total.

    Example:
        >>> ids = near_duplicate_groups(images.paths)  # doctest: +SKIP
        >>> train, test = group_split(images, test_fraction=0.2, seed=0, groups=ids)  # doctest: +SKIP
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if groups is None:
        group_ids = image_set.groups
        source = image_set
    else:
        if len(groups) != len(image_set):
            raise ValueError(f"groups has {len(groups)} entries but the data has {len(image_set)} images")
        group_ids = list(groups)
        source = ImageSet(
            records=tuple(replace(r, group=g) for r, g in zip(image_set.records, group_ids, strict=True)),
            root=image_set.root,
            source=image_set.source,
            multilabel=image_set.multilabel,
            kind=image_set.kind,
        )
    members: dict[str, list[int]] = defaultdict(list)
    for index, gid in enumerate(group_ids):
        members[f"group:{gid}" if gid is not None else f"single:{index}"].append(index)
    if len(members) < 2:
        raise ValueError(
            f"cannot split {len(image_set)} image(s) in {len(members)} group(s): every image would "
            "land on one side. Check the groups (near_duplicate_groups with a smaller max_distance?)"
        )
    label_sets = image_set.label_sets
    strata: dict[str, list[str]] = defaultdict(list)
    for key, indices in members.items():
        votes = Counter(lab for i in indices for lab in label_sets[i][:1])
        stratum = min(votes, key=lambda lab: (-votes[lab], lab)) if votes else ""
        strata[stratum].append(key)
    rng = np.random.default_rng(seed)
    test_keys: set[str] = set()
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        rng.shuffle(keys)
        test_keys.update(_pick_test_groups(keys, members, test_fraction))
    test_idx = sorted(i for key in test_keys for i in members[key])
    test_set = set(test_idx)
    train_idx = [i for i in range(len(image_set)) if i not in test_set]
    _warn_if_unbalanced(image_set, train_idx, test_idx)
    return source.subset(train_idx), source.subset(test_idx)


def _pick_test_groups(keys: list[str], members: dict[str, list[int]], test_fraction: float) -> list[str]:
    """Greedy: take each shuffled group into test while it moves the test count nearer the target."""
    total = sum(len(members[k]) for k in keys)
    target = test_fraction * total
    picked: list[str] = []
    count = 0
    for key in keys:
        size = len(members[key])
        if abs(count + size - target) < abs(count - target):
            picked.append(key)
            count += size
    if len(keys) >= 2:
        if not picked:  # every group was bigger than the target: give test the smallest
            picked = [min(keys, key=lambda k: len(members[k]))]
        elif len(picked) == len(keys):
            picked.remove(max(picked, key=lambda k: len(members[k])))
    return picked


def _warn_if_unbalanced(image_set: ImageSet, train_idx: list[int], test_idx: list[int]) -> None:
    if not image_set.has_labels:
        return
    label_sets = image_set.label_sets
    train_classes = {lab for i in train_idx for lab in label_sets[i]}
    test_classes = {lab for i in test_idx for lab in label_sets[i]}
    missing = sorted((train_classes | test_classes) - (train_classes & test_classes))
    if missing:
        warnings.warn(
            f"classes {missing} appear on only one side of the split (their images fall in too few "
            "groups to divide)",
            stacklevel=3,
        )


def write_group_manifest(
    data: str | os.PathLike[str] | ImageSet,
    out: str | os.PathLike[str] | None = None,
    *,
    groups: Sequence[str | None] | None = None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    workers: int | None = None,
    allow_absolute_paths: bool = False,
) -> Path:
    """Write a CSV manifest (``path,label[s],group`` plus any extra columns) for a data set.

    Groups are taken from `groups`, else computed with `near_duplicate_groups`. Paths are written
    relative to the manifest's folder, so keep `out` inside the data root (the default,
    ``<root>/groups.csv``) for the manifest to load without ``allow_absolute_paths``.

    Returns:
        The path written (atomically).

    Example:
        >>> write_group_manifest("../shared/data/lc25000-lung", "lc25000-groups.csv")  # doctest: +SKIP
    """
    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    target = Path(out) if out is not None else image_set.root / "groups.csv"
    target = target.absolute()
    ids = list(groups) if groups is not None else near_duplicate_groups(
        image_set.paths, max_distance=max_distance, workers=workers
    )
    if len(ids) != len(image_set):
        raise ValueError(f"groups has {len(ids)} entries but the data has {len(image_set)} images")
    label_column = "labels" if image_set.multilabel else "label"
    extra_names = sorted({k for r in image_set.records for k in r.extra})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path"] + ([label_column] if image_set.has_labels else []) + ["group", *extra_names]
    writer.writerow(header)
    for record, gid in zip(image_set.records, ids, strict=True):
        row = [Path(os.path.relpath(record.path, target.parent)).as_posix()]
        if image_set.has_labels:
            row.append(";".join(record.labels or ()) if image_set.multilabel else record.label or "")
        row.append(gid or "")
        row.extend(record.extra.get(name, "") for name in extra_names)
        writer.writerow(row)
    atomic_write_text(target, buffer.getvalue())
    return target

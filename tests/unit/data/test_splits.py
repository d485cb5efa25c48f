"""Near-duplicate grouping on synthetic rotated/flipped copies, and group-aware splits."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from histovl.data import ImageRecord, ImageSet, load_image_set
from histovl.data.splits import (
    NearDuplicatePairs,
    group_split,
    groups_from_pairs,
    near_duplicate_groups,
    near_duplicate_pairs,
    write_group_manifest,
)

SIDE = 96


def original(seed: int) -> Image.Image:
    """A tissue-like texture: coloured noise blurred into blobs."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(3)).point(lambda v: min(255, max(0, (v - 96) * 4)))


def augment(img: Image.Image, angle: float, flip: bool, quarter_turns: int = 0) -> Image.Image:
    """LC25000-style copy: rotate about the centre, crop the largest inner square, resize back."""
    out = img.rotate(angle, resample=Image.Resampling.BILINEAR)
    keep = SIDE / (math.cos(math.radians(abs(angle))) + math.sin(math.radians(abs(angle))))
    margin = (SIDE - keep) / 2
    out = out.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=(margin, margin, SIDE - margin, SIDE - margin))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for _ in range(quarter_turns):
        out = out.transpose(Image.Transpose.ROTATE_90)
    return out


@pytest.fixture
def augmented_folder(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """2 classes x 4 originals x 5 copies (angles up to 25°, flips, quarter turns); name -> original."""
    truth: dict[str, int] = {}
    rng = np.random.default_rng(7)
    for cls_index, cls in enumerate(["a", "b"]):
        (tmp_path / cls).mkdir()
        for k in range(4):
            orig_id = cls_index * 4 + k
            base = original(100 + orig_id)
            for c in range(5):
                angle = float(rng.uniform(-25, 25)) if c else 0.0
                img = augment(base, angle, flip=bool(c % 2), quarter_turns=c % 4)
                name = f"{cls}_{rng.integers(1_000_000):07d}.png"  # names do not reveal the original
                img.save(tmp_path / cls / name)
                truth[name] = orig_id
    return tmp_path, truth


def test_groups_recover_originals(augmented_folder: tuple[Path, dict[str, int]]) -> None:
    root, truth = augmented_folder
    images = load_image_set(root)
    groups = near_duplicate_groups(images.paths, workers=0)
    found: dict[str, set[int]] = {}
    for path, gid in zip(images.paths, groups, strict=True):
        found.setdefault(gid, set()).add(truth[path.name])
    assert all(len(origs) == 1 for origs in found.values()), "a group mixes originals"
    assert len(found) == 8, f"expected 8 groups (one per original), got {len(found)}"


def test_exact_dihedral_copies_have_near_zero_distance(tmp_path: Path) -> None:
    base = original(1)
    variants = [base] + [base.transpose(t) for t in Image.Transpose if t != Image.Transpose.TRANSVERSE] + [
        base.transpose(Image.Transpose.TRANSVERSE)
    ]
    paths = []
    for i, img in enumerate(variants[:8]):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    other = tmp_path / "other.png"
    original(2).save(other)
    pairs = near_duplicate_pairs([*paths, other], workers=0)
    to_other = (pairs.second == 8) | (pairs.first == 8)
    assert pairs.distance[~to_other].max() < 0.05
    assert pairs.distance[to_other].min() > 0.3


def test_blank_image_is_not_grouped(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (32, 32), (240, 240, 240)).save(tmp_path / f"blank{i}.png")
    original(3).save(tmp_path / "tissue.png")
    paths = sorted(tmp_path.iterdir())
    assert len(set(near_duplicate_groups(paths, workers=0))) == 4


def test_union_find_chains_and_names_groups_by_first_member() -> None:
    pairs = NearDuplicatePairs(np.array([0, 1, 3, 2]), np.array([1, 4, 5, 5]), np.array([0.1, 0.2, 0.9, 0.05]))
    assert groups_from_pairs(6, pairs, max_distance=0.28) == ["g000000", "g000000", "g000002", "g000003", "g000000", "g000002"]


def test_parallel_equals_serial(augmented_folder: tuple[Path, dict[str, int]]) -> None:
    root, _ = augmented_folder
    paths = load_image_set(root).paths * 2  # 80 images: enough for the worker path
    serial = near_duplicate_pairs(paths, workers=0)
    parallel = near_duplicate_pairs(paths, workers=2)
    np.testing.assert_array_equal(serial.first, parallel.first)
    np.testing.assert_array_equal(serial.distance, parallel.distance)


def make_set(labels: list[str], groups: list[str | None]) -> ImageSet:
    recs = tuple(
        ImageRecord(path=Path(f"/d/{i}.png"), label=lab, group=g) for i, (lab, g) in enumerate(zip(labels, groups, strict=True))
    )
    return ImageSet(records=recs, root=Path("/d"), source=Path("/d"))


def sides_of(train: ImageSet, test: ImageSet) -> dict[str | None, set[str]]:
    sides: dict[str | None, set[str]] = {}
    for name, part in (("train", train), ("test", test)):
        for g in part.groups:
            sides.setdefault(g, set()).add(name)
    return sides


@pytest.mark.parametrize("seed", range(5))
def test_no_group_straddles_and_classes_are_stratified(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for cls in ["a", "b", "c"]:
        for g in range(12):
            for _ in range(int(rng.integers(1, 8))):
                labels.append(cls)
                groups.append(f"{cls}{g}")
    data = make_set(labels, groups)
    train, test = group_split(data, test_fraction=0.25, seed=seed)
    assert len(train) + len(test) == len(data)
    assert set(train.paths).isdisjoint(test.paths)
    assert all(len(s) == 1 for s in sides_of(train, test).values())
    for cls in ["a", "b", "c"]:
        share = test.labels.count(cls) / labels.count(cls)
        assert 0.1 < share < 0.4, (cls, share)
    assert train.paths == sorted(train.paths, key=lambda p: int(p.stem))  # original order kept
    again = group_split(data, test_fraction=0.25, seed=seed)
    assert again[1].paths == test.paths


def test_explicit_groups_are_written_into_records() -> None:
    data = make_set(["a"] * 4 + ["b"] * 4, [None] * 8)
    groups = ["x", "x", "y", "y", "z", "z", "w", "w"]
    train, test = group_split(data, test_fraction=0.5, seed=0, groups=groups)
    assert set(train.groups) | set(test.groups) == {"x", "y", "z", "w"}
    assert all(len(s) == 1 for s in sides_of(train, test).values())
    assert sorted(test.labels) == ["a", "a", "b", "b"]


def test_ungrouped_records_are_single_groups() -> None:
    train, test = group_split(make_set(["a"] * 10, [None] * 10), test_fraction=0.3, seed=1)
    assert (len(train), len(test)) == (7, 3)


def test_split_errors() -> None:
    data = make_set(["a", "a"], ["g", "g"])
    with pytest.raises(ValueError, match="1 group"):
        group_split(data, test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        group_split(data, test_fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="groups has 1 entries"):
        group_split(data, test_fraction=0.5, seed=0, groups=["x"])


def test_write_group_manifest_round_trip(augmented_folder: tuple[Path, dict[str, int]]) -> None:
    root, truth = augmented_folder
    out = write_group_manifest(root, workers=0)
    assert out == root / "groups.csv"
    reloaded = load_image_set(out)
    assert reloaded.kind == "manifest" and len(reloaded) == 40
    assert reloaded.labels == load_image_set(root).labels
    per_group = Counter(reloaded.groups)
    assert len(per_group) == 8 and set(per_group.values()) == {5}
    train, test = group_split(reloaded, test_fraction=0.25, seed=0)
    assert {truth[p.name] for p in train.paths}.isdisjoint({truth[p.name] for p in test.paths})

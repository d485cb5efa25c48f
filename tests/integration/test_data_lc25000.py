"""Data loading, prompt matching and near-duplicate grouping on the real LC25000 lung tiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.data import load_image_set, read_rgb, validate_labels
from histovl.data.splits import group_split, near_duplicate_groups
from histovl.prompts import load_prompt_set

pytestmark = pytest.mark.integration


def test_lc25000_loads_and_matches_lung_prompts(shared_data: Path) -> None:
    images = load_image_set(shared_data / "lc25000-lung")
    assert len(images) == 4500
    counts = validate_labels(images, load_prompt_set("lung-he-v1").class_names)
    assert counts == {"lung_aca": 1500, "lung_n": 1500, "lung_scc": 1500}
    img = read_rgb(images.paths[0])
    assert img.mode == "RGB" and img.size == (224, 224)


@pytest.mark.slow
def test_lc25000_lung_n_groups_near_the_number_of_originals(shared_data: Path) -> None:
    images = load_image_set(shared_data / "lc25000-lung")
    lung_n = images.subset([i for i, lab in enumerate(images.labels) if lab == "lung_n"])
    groups = near_duplicate_groups(lung_n.paths, workers=2)
    n_groups = len(set(groups))
    # ~250 originals per class in LC25000; measured 290 for lung_n alone (some originals split in two)
    assert 220 <= n_groups <= 400, n_groups
    train, test = group_split(lung_n, test_fraction=0.2, seed=0, groups=groups)
    assert set(train.groups).isdisjoint(test.groups)
    assert 0.15 < len(test) / len(lung_n) < 0.25

"""Retrieval on real LC25000 lung tiles (skipped without ../shared/data).

A small stratified sample keeps it fast; groups come from near-duplicate detection, because
LC25000's tiles are rotated/flipped copies of ~250 originals per class and a query must not be
credited for finding its own twin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histovl.data import load_image_set
from histovl.retrieval import VectorIndex, retrieve
from histovl.retrieval.evaluation import FIXED_METRICS
from tests.unit.retrieval.brute_force import (
    brute_force_metrics,
    brute_force_n_relevant,
    brute_force_topk,
)

pytestmark = pytest.mark.integration

PER_CLASS = 40


@pytest.fixture(scope="module")
def lung_sample(shared_data: Path):
    images = load_image_set(shared_data / "lc25000-lung")
    rng = np.random.default_rng(0)
    picks: list[int] = []
    for cls in images.classes:
        members = [i for i, r in enumerate(images.records) if r.label == cls]
        picks += sorted(rng.choice(members, size=PER_CLASS, replace=False).tolist())
    return images.subset(picks)


def test_group_aware_retrieval_on_real_tiles_equals_brute_force(tiny_clip, lung_sample, tmp_path: Path) -> None:
    res = retrieve(
        tiny_clip, lung_sample, out=tmp_path / "run", group_by="near-duplicates", use_cache=False,
        num_workers=0, n_boot=100, progress=False, save_index=True,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == 3 * PER_CLASS and metrics["bootstrap_unit"] == "group"
    for key in FIXED_METRICS:
        assert 0.0 <= metrics[key] <= 1.0

    index = VectorIndex.open(tmp_path / "run" / "index")
    emb = index.reconstruct(np.arange(index.ntotal))
    labels = index.records["label"].tolist()
    groups = index.records["group"].tolist()
    assert len(set(groups)) < len(groups)  # near-duplicates were found and grouped
    n = len(labels)
    top = brute_force_topk(emb, emb, 10, exclude_ids=list(range(n)), db_groups=groups, query_groups=groups)
    ids = res.search.result.ids
    for i, ref in enumerate(top):
        got = [int(j) for j in ids[i] if j >= 0]
        assert all(groups[j] != groups[i] for j in got)
        # Real embeddings: identical order unless two scores are within float32 rounding.
        ref_scores = np.array([s for _, s in ref])
        if np.min(np.abs(np.diff(ref_scores)), initial=1.0) > 1e-6:
            assert got == [j for j, _ in ref], f"query {i}"
    n_rel = brute_force_n_relevant(labels, labels, exclude_ids=list(range(n)), db_groups=groups, query_groups=groups)
    for k in (5, 10):
        ref_m = brute_force_metrics(top, labels, labels, k, n_rel)
        assert metrics[f"ha@{k}"] == pytest.approx(ref_m["ha"], abs=1e-9)
        assert metrics[f"mmv@{k}"] == pytest.approx(ref_m["mmv"], abs=1e-9)
        assert metrics[f"map@{k}"] == pytest.approx(ref_m["map"], abs=1e-9)


def test_excluding_near_duplicates_lowers_the_score(tiny_clip, lung_sample, tmp_path: Path) -> None:
    """Leakage check: letting a query find its own augmented twins must not score lower."""
    common = {"use_cache": False, "num_workers": 0, "n_boot": 0, "progress": False}
    grouped = retrieve(tiny_clip, lung_sample, out=None, group_by="near-duplicates", **common)
    leaky = retrieve(tiny_clip, lung_sample, out=None, group_by="none", **common)
    assert leaky.metrics["recall@1"] >= grouped.metrics["recall@1"]

"""The persistent index: add, search, save, reopen, incremental add, bad vectors, storage types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histovl.errors import NonFiniteError, UnknownNameError
from histovl.retrieval.index import IndexFormatError, VectorIndex
from histovl.retrieval.storage import IndexOptions, list_storage
from tests.unit.retrieval.brute_force import brute_force_topk


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _filled(storage: str = "flat", n: int = 120, d: int = 16) -> tuple[VectorIndex, np.ndarray]:
    x = _unit(n, d, seed=0)
    index = VectorIndex(d, storage=storage, model={"weights_id": "w0", "spec": "tiny"}, cache_key="ck")
    index.add(x, [f"img/{i}.png" for i in range(n)], labels=[f"c{i % 3}" for i in range(n)], groups=[f"p{i // 4}" for i in range(n)])
    return index, x


def test_save_and_reopen_gives_identical_results(tmp_path: Path) -> None:
    index, x = _filled()
    before = index.search(x, 5, exclude_ids=np.arange(len(x)), exclude_groups=index.records["group"].tolist())
    index.save(tmp_path / "ix")
    again = VectorIndex.open(tmp_path / "ix")
    after = again.search(x, 5, exclude_ids=np.arange(len(x)), exclude_groups=again.records["group"].tolist())
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert again.records.equals(index.records)
    assert again.model == {"weights_id": "w0", "spec": "tiny"} and again.cache_key == "ck"
    assert again.storage == "flat" and again.dim == 16


def test_incremental_add_keeps_ids_and_survives_a_second_save(tmp_path: Path) -> None:
    x = _unit(50, 8, seed=1)
    index = VectorIndex(8)
    index.add(x[:30], [f"a{i}" for i in range(30)])
    index.save(tmp_path)
    reopened = VectorIndex.open(tmp_path)
    reopened.add(x[30:], [f"a{i}" for i in range(30, 50)])
    reopened.save(tmp_path)
    final = VectorIndex.open(tmp_path)
    assert final.ntotal == 50 and final.records["path"].tolist() == [f"a{i}" for i in range(50)]
    assert len(list(tmp_path.glob("vectors-*.faiss"))) == 1  # old generation removed
    ref = brute_force_topk(x, x, 3)
    assert final.search(x, 3).ids.tolist() == [[j for j, _ in r] for r in ref]


def test_interrupted_save_leaves_the_previous_index_readable(tmp_path: Path) -> None:
    index, x = _filled(n=20)
    index.save(tmp_path)
    # A crash after the new FAISS file was written but before metadata was committed:
    (tmp_path / "vectors-000099.faiss").write_bytes(b"half-written")
    reopened = VectorIndex.open(tmp_path)
    assert reopened.ntotal == 20


def test_missing_faiss_file_is_a_clear_error(tmp_path: Path) -> None:
    index, _ = _filled(n=10)
    index.save(tmp_path)
    for f in tmp_path.glob("vectors-*.faiss"):
        f.unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        VectorIndex.open(tmp_path)
    with pytest.raises(IndexFormatError, match="not a histovl index"):
        VectorIndex.open(tmp_path / "nothing")


def test_nan_vector_is_rejected_naming_the_item() -> None:
    x = _unit(4, 8, seed=2)
    x[2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="bad.png"):
        VectorIndex(8).add(x, ["a.png", "b.png", "bad.png", "d.png"])


def test_unnormalised_vector_is_rejected_naming_the_item() -> None:
    x = _unit(3, 8, seed=2)
    x[1] *= 2
    with pytest.raises(ValueError, match="b.png has L2 norm 2"):
        VectorIndex(8).add(x, ["a.png", "b.png", "c.png"])


def test_wrong_dimension_and_lengths_raise() -> None:
    index = VectorIndex(8)
    with pytest.raises(ValueError, match="dimension"):
        index.add(_unit(2, 4, 0), ["a", "b"])
    with pytest.raises(ValueError, match="labels has 1 entries"):
        index.add(_unit(2, 8, 0), ["a", "b"], labels=["x"])


def test_unknown_storage_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="flat-f16"):
        VectorIndex(8, storage="flat-f61")
    assert {"flat", "flat-f16", "ivf", "hnsw"} <= set(list_storage())


def test_fp16_storage_is_exact_enough_and_half_the_size(tmp_path: Path) -> None:
    x = _unit(2000, 64, seed=5)
    f32, _ = VectorIndex(64), None
    f32.add(x, [str(i) for i in range(2000)])
    f16 = VectorIndex(64, storage="flat-f16")
    f16.add(x, [str(i) for i in range(2000)])
    a = f32.search(x[:200], 10, exclude_ids=np.arange(200))
    b = f16.search(x[:200], 10, exclude_ids=np.arange(200))
    assert np.abs(a.scores - b.scores).max() < 2e-3
    overlap = np.mean([len(set(a.ids[i]) & set(b.ids[i])) / 10 for i in range(200)])
    assert overlap > 0.97
    # Exact over the fp16-rounded vectors: equals brute force on the reconstructed database.
    stored = f16.reconstruct(np.arange(2000))
    ref = brute_force_topk(stored, x[:50], 10, exclude_ids=list(range(50)))
    got = f16.search(x[:50], 10, exclude_ids=np.arange(50))
    for i, r in enumerate(ref):
        np.testing.assert_allclose(got.scores[i], [s for _, s in r], atol=1e-5)
    size32 = (f32.save(tmp_path / "a") / next((tmp_path / "a").glob("*.faiss")).name).stat().st_size
    size16 = (f16.save(tmp_path / "b") / next((tmp_path / "b").glob("*.faiss")).name).stat().st_size
    assert size16 < 0.55 * size32


@pytest.mark.parametrize("storage", ["ivf", "hnsw"])
def test_approximate_storage_finds_most_true_neighbours_and_round_trips(storage: str, tmp_path: Path) -> None:
    x = _unit(1000, 32, seed=6)
    index = VectorIndex(32, storage=storage, options=IndexOptions(nprobe=12, ef_search=64))
    index.add(x, [str(i) for i in range(1000)])
    got = index.search(x[:100], 10, exclude_ids=np.arange(100))
    ref = brute_force_topk(x, x[:100], 10, exclude_ids=list(range(100)))
    recall = np.mean([len(set(got.ids[i]) & {j for j, _ in ref[i]}) / 10 for i in range(100)])
    assert recall > 0.8
    index.save(tmp_path)
    again = VectorIndex.open(tmp_path)
    assert not again.exact
    np.testing.assert_array_equal(again.search(x[:100], 10, exclude_ids=np.arange(100)).ids, got.ids)


def test_empty_index_returns_no_results() -> None:
    result = VectorIndex(4).search(_unit(3, 4, 0), 2)
    assert (result.ids == -1).all()

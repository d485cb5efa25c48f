"""`CacheFill`: the one cache lookup-and-stack helper of the local, in-memory and Ray engines."""

from __future__ import annotations

import numpy as np
import pytest

from histovl.embed import EmbeddingCache
from histovl.embed.fill import UNREADABLE, CacheFill
from histovl.errors import ImageReadError, NonFiniteError

PATHS = ["a.png", "b.png", "c.png", "d.png"]


def _ns(tmp_path):
    return EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")


def test_hits_come_from_the_cache_and_the_rest_is_stored_in_input_order(tmp_path):
    ns = _ns(tmp_path)
    ns.put(["kb", "kd"], np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    fill = CacheFill(PATHS, ["ka", "kb", "kc", "kd"], ns)
    assert fill.n_cached == 2 and fill.missing() == [0, 2]
    with fill.flushing():
        fill.store([0, 2], np.array([[0.6, 0.8], [0.8, 0.6]], np.float32))
    res = fill.result(batch_size_used=7)
    assert res.ok.all() and res.n_cached == 2 and res.n_encoded == 2 and res.batch_size_used == 7
    np.testing.assert_array_equal(res.embeddings[:, 0], np.float32([0.6, 0.0, 0.8, 1.0]))
    assert res.embeddings.dtype == np.float32
    again = CacheFill(PATHS, ["ka", "kb", "kc", "kd"], _ns(tmp_path))  # flushed: all hits now
    assert again.n_cached == 4 and again.missing() == []


def test_unreadable_inputs_raise_or_are_recorded(tmp_path):
    with pytest.raises(ImageReadError, match="b.png"):
        CacheFill(PATHS, ["ka", None, "kc", "kd"], None)
    fill = CacheFill(PATHS, ["ka", None, "kc", "kd"], None, on_error="skip")
    assert fill.missing() == [0, 2, 3]
    fill.fail(3, "truncated")
    fill.store([0, 2], np.ones((2, 3), np.float32))
    res = fill.result(batch_size_used=1)
    assert res.ok.tolist() == [True, False, True, False]
    assert [(f.path, f.reason) for f in res.failures] == [("b.png", UNREADABLE), ("d.png", "truncated")]
    with pytest.raises(ImageReadError, match="d.png"):
        CacheFill(PATHS, None, None).fail(3, "truncated")


def test_without_keys_nothing_is_unreadable_up_front_and_non_finite_rows_are_refused():
    fill = CacheFill(PATHS, None, None)
    assert fill.missing() == [0, 1, 2, 3] and fill.keys == [None] * 4
    with pytest.raises(NonFiniteError, match="c.png"):
        fill.store([1, 2], np.array([[1.0], [np.nan]], np.float32))
    empty = CacheFill([], None, None).result(batch_size_used=4)
    assert empty.embeddings.shape == (0, 0) and empty.ok.shape == (0,)

"""CMM head: learns a known rule, is batch-independent with tokens, round-trips through disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histovl.errors import HistovlError, NonFiniteError
from histovl.heads import CMMHead, CrossModalMatching
from tests.helpers.synthetic import cmm_tokens as _synthetic


def _head(**kw) -> CMMHead:
    params = dict(n_heads=2, ffn_dim=32, epochs=60, warmup_epochs=2, lr=3e-3, batch_size=32, random_state=0)
    params.update(kw)
    return CMMHead(**params)


@pytest.fixture(scope="module")
def fitted() -> tuple[CMMHead, torch.Tensor, np.ndarray]:
    x, y, classes = _synthetic(256, 0)
    head = _head().fit(x, y, class_embeddings=classes, class_names=["a", "b", "c"])
    xt, yt, _ = _synthetic(128, 1)
    return head, xt, yt


def test_fit_returns_self_and_learns_the_rule(fitted) -> None:
    head, xt, yt = fitted
    assert isinstance(head, CMMHead) and head.class_names_ == ["a", "b", "c"]
    macc = (head.predict(xt) == yt).mean()  # mean over classes of per-class accuracy (eq. 6)
    assert macc > 0.95, macc
    assert head.loss_history_[-1] < head.loss_history_[0]


def test_tokens_mode_prediction_alone_equals_prediction_in_any_batch(fitted) -> None:
    head, xt, _ = fitted
    together = head.decision_function(xt[:40])
    for i in (0, 7, 39):
        alone = head.decision_function(xt[i : i + 1])
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)
    shuffled = head.decision_function(xt[:40].flip(0))
    np.testing.assert_allclose(shuffled[::-1], together, atol=1e-5)


def test_pooled_mode_depends_on_the_batch_as_documented() -> None:
    x, y, classes = _synthetic(64, 2)
    pooled = torch.nn.functional.normalize(x.mean(1), dim=-1)
    head = _head(kv_mode="pooled", epochs=5).fit(pooled, y, class_embeddings=classes)
    module = head.module_
    with torch.no_grad():
        alone = module(pooled[:1])
        batched = module(pooled[:8])[:1]
    assert not torch.allclose(alone, batched, atol=1e-4)


def test_same_random_state_gives_the_same_head() -> None:
    x, y, classes = _synthetic(64, 3)
    a = _head(epochs=3).fit(x, y, class_embeddings=classes).decision_function(x)
    b = _head(epochs=3).fit(x, y, class_embeddings=classes).decision_function(x)
    c = _head(epochs=3, random_state=1).fit(x, y, class_embeddings=classes).decision_function(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_and_load_round_trip(fitted, tmp_path) -> None:
    head, xt, _ = fitted
    head.save(tmp_path / "head", extra={"model": "tiny"})
    loaded = CMMHead.load(tmp_path / "head")
    np.testing.assert_array_equal(loaded.decision_function(xt), head.decision_function(xt))
    assert loaded.extra_ == {"model": "tiny"} and loaded.get_params() == head.get_params()
    assert not list((tmp_path / "head").glob(".*tmp"))  # no temp files left behind


def test_load_rejects_mismatched_weights(fitted, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    head, _, _ = fitted
    head.save(tmp_path / "h")
    state = load_file(str(tmp_path / "h" / "head.safetensors"))
    state["ffn.0.weight"] = torch.zeros(5, 5)
    save_file(state, str(tmp_path / "h" / "head.safetensors"))
    with pytest.raises(HistovlError, match="ffn.0.weight"):
        CMMHead.load(tmp_path / "h")
    with pytest.raises(HistovlError, match="not a CMM head folder"):
        CMMHead.load(tmp_path / "missing")


def test_bad_inputs_are_refused() -> None:
    x, y, classes = _synthetic(8, 4)
    with pytest.raises(HistovlError, match="not fitted"):
        _head().decision_function(x)
    with pytest.raises(ValueError, match="needs features"):
        _head().fit(x.mean(1), y, class_embeddings=classes)
    with pytest.raises(ValueError, match="only 0 and 1"):
        _head().fit(x, y * 2, class_embeddings=classes)
    bad = x.clone()
    bad[3, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="image 3"):
        _head().fit(bad, y, class_embeddings=classes)


def test_module_pools_to_one_logit_per_class() -> None:
    module = CrossModalMatching(torch.eye(8)[:5], n_heads=2, ffn_dim=16)
    assert module(torch.randn(3, 6, 8)).shape == (3, 5)
    with pytest.raises(ValueError, match="divisible"):
        CrossModalMatching(torch.eye(8)[:5], n_heads=3)

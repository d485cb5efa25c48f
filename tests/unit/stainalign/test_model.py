"""Gated attention-MIL, the contrastive loss, and the HistoStainAlign estimator contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histovl.errors import NonFiniteError
from histovl.stainalign import (
    GatedAttentionPool,
    HistoStainAlign,
    cross_validate,
    grouped_folds,
    pad_bags,
    symmetric_contrastive_loss,
)
from tests.helpers.synthetic import toy_pairs


def test_gated_attention_matches_manual_formula() -> None:
    torch.manual_seed(0)
    pool = GatedAttentionPool(8, hidden_dim=6, attention_dim=4, dropout=0.0).eval()
    bag = torch.randn(5, 8)
    z, a = pool(bag)
    h = torch.relu(pool.embed[0](bag))
    s = pool.attention_w(torch.tanh(pool.attention_v(h)) * torch.sigmoid(pool.attention_u(h))).squeeze(-1)
    ref_a = torch.softmax(s, dim=0)
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(z, (ref_a[:, None] * h).sum(0))


def test_padding_does_not_change_pooling() -> None:
    torch.manual_seed(0)
    pool = GatedAttentionPool(8, dropout=0.0).eval()
    bags = [torch.randn(3, 8), torch.randn(7, 8)]
    x, m = pad_bags(bags)
    z, a = pool(x, m)
    for i, b in enumerate(bags):
        zi, ai = pool(b)
        torch.testing.assert_close(z[i], zi, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a[i, : len(b)], ai, atol=1e-6, rtol=1e-5)
        assert float(a[i, len(b) :].detach().sum()) == 0.0


def test_symmetric_contrastive_loss_matches_naive() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    t = 0.2
    naive = torch.zeros(())
    for i in range(5):
        row = torch.stack([an[i] @ bn[j] / t for j in range(5)])
        col = torch.stack([an[j] @ bn[i] / t for j in range(5)])
        naive += -torch.log_softmax(row, 0)[i] - torch.log_softmax(col, 0)[i]
    torch.testing.assert_close(symmetric_contrastive_loss(a, b, t), naive / 10)
    assert symmetric_contrastive_loss(an, an, 0.05) < symmetric_contrastive_loss(an, bn, 0.05)


def test_estimator_contract_and_learning() -> None:
    he, ihc, y, _ = toy_pairs()
    small = {"hidden_dim": 32, "attention_dim": 16, "projection_dim": 16, "lr": 3e-3}
    model = HistoStainAlign(epochs=25, batch_size=8, random_state=0, **small)
    assert not hasattr(model, "classes_")
    assert model.fit(he, ihc, y) is model
    assert model.classes_ == ["neg", "pos"] and model.n_features_in_ == 16
    probs = model.predict_proba(he)
    assert probs.shape == (24, 2) and np.allclose(probs.sum(1), 1.0)
    assert np.mean(np.array(model.predict(he)) == np.array(y)) >= 0.9  # separable toy data
    assert model.history_[-1]["align"] < model.history_[0]["align"]  # alignment is being learned
    att = model.attention(he[:2])
    assert [len(a) for a in att] == [len(he[0]), len(he[1])] and np.allclose([a.sum() for a in att], 1.0)
    again = HistoStainAlign(epochs=25, batch_size=8, random_state=0, **small).fit(he, ihc, y)
    np.testing.assert_allclose(again.predict_proba(he), probs, atol=1e-6)  # random_state fixes it


def test_baseline_needs_no_ihc_and_save_load_round_trip(tmp_path: Path) -> None:
    he, _, y, _ = toy_pairs()
    base = HistoStainAlign(align=False, epochs=5).fit(he, None, y)
    base.save(tmp_path / "m", extra={"encoder": "x"})
    loaded, meta = HistoStainAlign.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_proba(he), base.predict_proba(he), atol=1e-6)
    assert meta["encoder"] == "x" and loaded.get_params()["align"] is False
    with pytest.raises(ValueError, match="IHC bag"):
        HistoStainAlign(align=True, epochs=1).fit(he, None, y)


def test_bad_inputs_are_refused() -> None:
    he, ihc, y, _ = toy_pairs(6)
    with pytest.raises(ValueError, match="two classes"):
        HistoStainAlign(epochs=1).fit(he, ihc, ["a"] * 6)
    bad = [b.copy() for b in he]
    bad[2][0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="bag 2"):
        HistoStainAlign(epochs=1).fit(bad, ihc, y)
    with pytest.raises(ValueError, match="non-empty"):
        HistoStainAlign(epochs=1).fit([np.zeros((0, 16), np.float32)] + he[1:], ihc, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        HistoStainAlign().predict(he)
    with pytest.raises(TypeError, match="unknown"):
        HistoStainAlign(epoch=3)


def test_grouped_folds_never_split_a_group() -> None:
    _, _, y, groups = toy_pairs(30)
    for train, test in grouped_folds(y, groups, 5, seed=0):
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    with pytest.raises(ValueError, match="at least 2 groups"):
        grouped_folds(y, ["g"] * len(y), 5, seed=0)


def test_cross_validate_gives_out_of_fold_probabilities_for_both_models() -> None:
    he, ihc, y, groups = toy_pairs(16)
    params = {"epochs": 4, "batch_size": 8, "hidden_dim": 16, "attention_dim": 8, "projection_dim": 8}
    cv = cross_validate(he, ihc, y, groups, params=params, n_splits=3, seed=0)
    assert set(cv.probabilities) == {"aligned", "baseline"} and cv.n_splits == 3
    for p in cv.probabilities.values():
        assert p.shape == (16, 2) and np.allclose(p.sum(1), 1.0)
    assert (cv.folds >= 0).all()

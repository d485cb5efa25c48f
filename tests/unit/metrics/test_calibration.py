"""Calibration metrics against hand-computed values and scikit-learn; temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from histovl.metrics import classification_metrics
from histovl.metrics.calibration import (
    ReliabilityCurve,
    apply_temperature,
    brier,
    ece,
    fit_temperature,
    nll,
    reliability_curve,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ece_hand_computed_example():
    # Six items, 5 equal-width bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1].
    # Confidences .9 (right), .85 (right), .95 (wrong) -> bin 5: acc 2/3, conf .9 -> gap .2333...
    # .7 (right), .65 (wrong) -> bin 4: acc .5, conf .675 -> gap .175
    # .55 (wrong) -> bin 3: acc 0, conf .55 -> gap .55
    # ECE = 3/6 * (.9 - 2/3) + 2/6 * .175 + 1/6 * .55 = 0.1166... + 0.0583... + 0.0916... = 0.2666...
    probs = np.array([[.9, .1], [.85, .15], [.05, .95], [.7, .3], [.35, .65], [.45, .55]])
    y = np.array([0, 0, 0, 0, 0, 0])
    expected = 0.5 * (0.9 - 2 / 3) + (2 / 6) * 0.175 + (1 / 6) * 0.55
    assert ece(y, probs, n_bins=5) == pytest.approx(expected, abs=1e-12)
    curve = reliability_curve(y, probs, n_bins=5)
    assert curve.count.tolist() == [0, 0, 1, 2, 3]
    np.testing.assert_allclose(curve.accuracy[2:], [0.0, 0.5, 2 / 3])
    np.testing.assert_allclose(curve.confidence[2:], [0.55, 0.675, 0.9])


def test_equal_mass_bins_hold_equal_counts():
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(size=(103, 4)) * 2)
    y = rng.integers(0, 4, 103)
    curve = reliability_curve(y, p, n_bins=10, strategy="quantile")
    assert curve.count.sum() == 103 and curve.count.max() - curve.count.min() <= 1
    assert (np.diff(curve.confidence) >= 0).all()  # bins follow the confidence order
    # one bin: ECE is |accuracy - mean confidence|
    assert ece(y, p, n_bins=1, strategy="quantile") == pytest.approx(abs((p.argmax(1) == y).mean() - p.max(1).mean()))


def test_ece_of_perfectly_calibrated_constant_predictions_is_zero():
    y = np.array([0, 0, 0, 1])  # confidence .75 on class 0, right 3 times in 4
    assert ece(y, np.tile([0.75, 0.25], (4, 1))) == pytest.approx(0.0)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_brier_and_nll_equal_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    p = _softmax(rng.normal(size=(200, n_classes)) * 2)
    y = rng.integers(0, n_classes, 200)
    labels = list(range(n_classes))
    expected_brier = brier_score_loss(y, p[:, 1]) if n_classes == 2 else brier_score_loss(y, p, labels=labels)
    assert brier(y, p) == pytest.approx(expected_brier, rel=1e-12)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=labels), rel=1e-12)


def test_temperature_lowers_nll_on_its_own_split_and_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 3
    y = np.array([rng.choice(3, p=row) for row in _softmax(logits / 2.0)])  # the truth is T = 2
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.0, rel=0.1)
    assert nll(y, apply_temperature(logits, t)) < nll(y, _softmax(logits))
    # probabilities work the same as logits (log p is a shifted logit)
    assert fit_temperature(_softmax(logits), y) == pytest.approx(t, rel=1e-4)
    # the fit is a minimum: nearby temperatures are worse
    for other in (0.9 * t, 1.1 * t):
        assert nll(y, apply_temperature(logits, other)) > nll(y, apply_temperature(logits, t))


def test_curve_round_trips_through_json():
    rng = np.random.default_rng(1)
    p = _softmax(rng.normal(size=(50, 3)))
    curve = reliability_curve(rng.integers(0, 3, 50), p, n_bins=7)
    back = ReliabilityCurve.from_dict(curve.as_dict())
    assert back.ece == pytest.approx(curve.ece) and back.count.tolist() == curve.count.tolist()


def test_classification_metrics_report_calibration():
    rng = np.random.default_rng(2)
    p = _softmax(rng.normal(size=(60, 3)))
    y = rng.integers(0, 3, 60)
    m = classification_metrics(y, p, ["a", "b", "c"], n_boot=0)
    assert m["ece"] == pytest.approx(ece(y, p)) and m["ece_bins"] == 15
    assert m["brier"] == pytest.approx(brier(y, p)) and m["nll"] == pytest.approx(nll(y, p))
    scores = classification_metrics(y, p * 5, ["a", "b", "c"], n_boot=0)  # not probabilities
    assert scores["ece"] is None and scores["brier"] is None and scores["nll"] is None


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="probabilities"):
        ece([0, 1], np.array([[2.0, -1.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="n_bins"):
        ece([0], np.array([[1.0, 0.0]]), n_bins=0)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.zeros((2, 2)), 0.0)

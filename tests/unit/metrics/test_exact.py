"""histovl.metrics._exact equals scikit-learn bit for bit (``==``, never approximately)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from histovl.metrics import _exact


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


def _cases(n_cases: int = 300):
    rng = np.random.default_rng(7)
    for i in range(n_cases):
        c = int(rng.integers(2, 7))
        n = int(rng.integers(2, 90))
        y = rng.integers(0, c - (i % 3 == 0), n)  # some cases never hold the last class
        scores = rng.random((n, c))
        if i % 4 == 0:
            scores = np.round(scores, 1)  # many ties
        if i % 5 == 0:
            scores[:, 0] = 0.5  # one constant column
        yield y, scores, c


CASES = list(_cases())


@pytest.mark.parametrize("case", range(len(CASES)))
def test_point_estimates_equal_sklearn(case: int) -> None:
    y, scores, c = CASES[case]
    y_pred = scores.argmax(axis=1)
    labels = list(range(c))
    cm = _exact.confusion_matrix(y, y_pred, c)
    assert (cm == confusion_matrix(y, y_pred, labels=labels)).all()
    p, r, f, s = _exact.precision_recall_fscore(cm)
    sp, sr, sf, ss = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=np.nan)
    for mine, theirs in ((p, sp), (r, sr), (f, sf)):
        assert all(_same(a, b) for a, b in zip(mine, theirs, strict=True))
    assert (s == ss).all()
    assert _same(_exact.nan_average(f), f1_score(y, y_pred, labels=labels, average="macro", zero_division=np.nan))
    assert _same(_exact.nan_average(f, s), f1_score(y, y_pred, labels=labels, average="weighted", zero_division=np.nan))
    assert _exact.accuracy(y, y_pred) == accuracy_score(y, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert _exact.balanced_accuracy(cm) == balanced_accuracy_score(y, y_pred)
    for k in range(c):
        positive = y == k
        if positive.any() and not positive.all():
            assert _exact.roc_auc(positive, scores[:, k]) == float(roc_auc_score(positive, scores[:, k]))


def test_roc_auc_on_two_items_and_on_all_ties() -> None:
    for positive, scores in (([True, False], [0.2, 0.9]), ([False, True, True], [0.5, 0.5, 0.5])):
        assert _exact.roc_auc(np.array(positive), np.array(scores)) == roc_auc_score(positive, scores)

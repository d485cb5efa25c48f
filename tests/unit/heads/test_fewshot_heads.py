"""Reference checks of the few-shot heads on tiny synthetic embeddings.

Each method is compared with an independent implementation: scikit-learn for `linear`, brute
force loops for `knn`, `simpleshot` and `tip`, the zero-shot classifier for `text-linear` at zero
steps; save/load must round-trip exactly and a head must refuse another encoder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from histovl.errors import HistovlError
from histovl.heads import (
    EncoderInfo,
    KNNHead,
    LinearHead,
    SimpleShotHead,
    TextLinearHead,
    TipAdapterHead,
    load_head,
    make_head,
)
from histovl.heads.fewshot import (
    KNN_TEMPERATURE,
    LINEAR_C_GRID,
    LINEAR_MAX_ITER,
    METHODS,
    TIP_DEFAULTS,
    TIP_REFERENCE_SCALE,
    pulled_softmax_regression,
)

CLASSES = ["a", "b", "c"]
INFO = EncoderInfo("weights-0", "tiny", "pre-0")


class FakeClassifier:
    """What the text heads read from a `TextClassifier`: weights [C, D], class names, logit scale."""

    def __init__(self, weights: np.ndarray, scale: float = 20.0) -> None:
        self.weights = weights
        self.class_names = tuple(CLASSES[: len(weights)])
        self.logit_scale = scale


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(n_per_class: int, dim: int = 16, n_classes: int = 3, seed: int = 0, noise: float = 0.8):
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_classes, dim)))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = unit(centres[y] + noise * rng.normal(size=(len(y), dim)) / math.sqrt(dim) * 3)
    return x, [CLASSES[i] for i in y], y, centres


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("shots", [1, 4, 10])
def test_linear_equals_scikit_learn_with_the_same_c(n_classes, shots):
    x, labels, y, _ = make_data(shots, n_classes=n_classes, seed=shots)
    query, *_ = make_data(7, n_classes=n_classes, seed=99)
    head = LinearHead(random_state=3).fit(x * 5.0, labels)  # scale: the head normalises rows
    direct = LogisticRegression(C=head.C_, max_iter=LINEAR_MAX_ITER).fit(x, y)
    np.testing.assert_allclose(head.predict_proba(query), direct.predict_proba(query), rtol=0, atol=1e-12)
    if shots == 1:
        assert head.C_ == 1.0  # no cross-validation possible with one image per class
    else:
        k = min(5, shots)
        search = GridSearchCV(LogisticRegression(max_iter=LINEAR_MAX_ITER), {"C": list(LINEAR_C_GRID)},
                              cv=StratifiedKFold(k, shuffle=True, random_state=3), scoring="accuracy").fit(x, y)
        assert head.C_ == search.best_params_["C"]


def brute_force_knn(support, labels, query, k, temperature, n_classes):
    out = np.zeros((len(query), n_classes))
    for q, xq in enumerate(query):
        sims = [float(np.dot(xq, s)) for s in support]
        order = sorted(range(len(support)), key=lambda j: (-sims[j], j))[:k]
        for j in order:
            out[q, labels[j]] += math.exp(sims[j] / temperature)
        out[q] /= out[q].sum()
    return out


@pytest.mark.parametrize("shots,k", [(1, 20), (3, 2), (8, 5), (8, 100)])
def test_knn_equals_brute_force(shots, k):
    x, labels, y, _ = make_data(shots, seed=shots)
    query, *_ = make_data(6, seed=7)
    head = KNNHead(k=k).fit(x, labels)
    expected = brute_force_knn(x, y, query, min(k, len(x)), KNN_TEMPERATURE, 3)
    np.testing.assert_allclose(head.predict_proba(query), expected, rtol=1e-9, atol=1e-12)


def test_simpleshot_equals_a_direct_computation():
    x, labels, y, _ = make_data(5, seed=1)
    query, *_ = make_data(4, seed=8)
    head = SimpleShotHead().fit(x, labels)
    mean = x.mean(axis=0)
    protos = unit(np.stack([unit(x[y == c] - mean).mean(axis=0) for c in range(3)]))
    expected = []
    for xq in query:
        z = (xq - mean) / np.linalg.norm(xq - mean)
        logits = np.array([10.0 * float(np.dot(z, p)) for p in protos])
        expected.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    np.testing.assert_allclose(head.predict_proba(query), np.array(expected), atol=1e-12)


def naive_tip(query, keys, labels, weights, scale, alpha, beta, n_classes):
    """Tip-Adapter's formula, one query image and one class at a time."""
    out = []
    for xq in query:
        logits = []
        for c in range(n_classes):
            zero_shot = scale * float(np.dot(xq, weights[c]))
            cache = sum(math.exp(-beta * (1.0 - float(np.dot(xq, kj)))) for kj, yj in zip(keys, labels, strict=True) if yj == c)
            logits.append(zero_shot + alpha * (scale / TIP_REFERENCE_SCALE) * cache)
        e = np.exp(np.array(logits) - max(logits))
        out.append(e / e.sum())
    return np.array(out)


@pytest.mark.parametrize("shots", [1, 2, 6])
def test_tip_equals_a_naive_per_sample_loop(shots):
    x, labels, y, centres = make_data(shots, seed=10 + shots)
    query, *_ = make_data(5, seed=3)
    clf = FakeClassifier(centres, scale=14.0)
    head = TipAdapterHead.from_classifier(clf).fit(x, labels)
    if shots == 1:
        assert (head.alpha_, head.beta_) == TIP_DEFAULTS
    expected = naive_tip(query, x, y, centres, 14.0, head.alpha_, head.beta_, 3)
    np.testing.assert_allclose(head.predict_proba(query), expected, rtol=1e-9, atol=1e-12)


def test_tip_leave_one_out_choice_matches_a_naive_search():
    x, labels, y, centres = make_data(4, seed=21, noise=1.6)
    clf = FakeClassifier(centres * 0.3 + unit(np.ones_like(centres)), scale=14.0)
    head = TipAdapterHead.from_classifier(clf).fit(x, labels)
    best, best_key = -1.0, None
    from histovl.heads.fewshot import TIP_ALPHA_GRID, TIP_BETA_GRID

    for alpha in TIP_ALPHA_GRID:
        for beta in TIP_BETA_GRID:
            hits = 0
            for i in range(len(x)):
                others = [j for j in range(len(x)) if j != i]
                p = naive_tip(x[i : i + 1], x[others], y[others], clf.weights, 14.0, alpha, beta, 3)
                hits += int(p.argmax() == y[i])
            key = (-hits, abs(alpha - 1.0), abs(beta - 5.5))
            if best_key is None or key < best_key:
                best, best_key = (alpha, beta), key
    assert (head.alpha_, head.beta_) == best


def test_text_linear_at_zero_steps_is_zero_shot(tiny_clip):
    from histovl.prompts import PromptSet
    from histovl.zeroshot.classifier import build_text_classifier

    prompts = PromptSet(name="t", classes={"a": ["red tissue"], "b": ["green tissue"], "c": ["blue tissue"]},
                        templates=["an image of {}."])
    clf = build_text_classifier(tiny_clip, prompts, memoise=False)
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(12, clf.weights.shape[1]))).astype(np.float32)
    head = TextLinearHead.from_classifier(clf, steps=0).fit(x[:6], ["a", "b", "c", "a", "b", "c"])
    np.testing.assert_allclose(head.predict_proba(x), clf.probabilities(x), atol=1e-6)
    trained = TextLinearHead.from_classifier(clf).fit(x[:6], ["a", "b", "c", "a", "b", "c"])
    assert not np.allclose(trained.predict_proba(x), clf.probabilities(x), atol=1e-3)


def test_text_linear_objective_gradient_and_pull():
    from scipy.optimize import approx_fprime

    x, _, y, centres = make_data(3, dim=6, seed=4)
    init = 10.0 * centres
    lam = 0.7
    n_classes, dim = init.shape

    def loss(theta):
        delta, bias = theta[: n_classes * dim].reshape(n_classes, dim), theta[n_classes * dim :]
        logits = x @ (init + delta).T + bias
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -log_p[np.arange(len(y)), y].sum() + lam / 2 * ((delta**2).sum() + (bias**2).sum())

    weight, bias = pulled_softmax_regression(x, y, init, lam, 500)
    theta = np.concatenate([(weight - init).ravel(), bias])
    assert np.abs(approx_fprime(theta, loss, 1e-7)).max() < 1e-3  # a stationary point of the stated objective
    far, _ = pulled_softmax_regression(x, y, init, 1e6, 500)
    np.testing.assert_allclose(far, init, atol=1e-4)  # a strong pull stays at the zero-shot head


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(tmp_path, method):
    x, labels, _, centres = make_data(4, seed=5)
    query, *_ = make_data(3, seed=6)
    head = make_head(method, CLASSES, encoder=INFO, classifier=FakeClassifier(centres), random_state=2).fit(x, labels)
    folder = head.save(tmp_path / method)
    meta = json.loads((folder / "head.json").read_text())
    assert meta["method"] == method and meta["classes"] == CLASSES
    assert meta["encoder"] == {"weights_id": "weights-0", "model": "tiny", "preprocessing": "pre-0"}
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pt"))
    loaded = load_head(folder)
    assert type(loaded) is type(head) and loaded.classes == CLASSES and loaded.weights_id == "weights-0"
    np.testing.assert_array_equal(loaded.predict_proba(query), head.predict_proba(query))
    assert loaded.chosen() == head.chosen()


def test_check_encoder_refuses_another_encoder(tmp_path):
    from tests.helpers.tiny import tiny_encoder

    enc0, enc1 = tiny_encoder(0), tiny_encoder(1)
    x, labels, *_ = make_data(2, dim=32)
    head = LinearHead(encoder=EncoderInfo.of(enc0)).fit(x, labels)
    load_head(head.save(tmp_path / "h")).check_encoder(enc0)
    with pytest.raises(HistovlError) as err:
        load_head(tmp_path / "h").check_encoder(enc1)
    message = str(err.value)
    assert "\n" not in message and "tiny-seed0" in message and "tiny-seed1" in message


def test_bad_inputs_are_clear():
    x, labels, *_ = make_data(2)
    with pytest.raises(ValueError, match="no support image"):
        LinearHead(classes=["a", "b", "c", "d"]).fit(x, labels)
    with pytest.raises(ValueError, match="not among"):
        LinearHead(classes=["a", "b"]).fit(x, labels)
    with pytest.raises(HistovlError, match="give --prompts"):
        make_head("tip", CLASSES)
    head = LinearHead().fit(x, labels)
    with pytest.raises(ValueError, match="dims"):
        head.predict_proba(np.ones((2, 5)))
    with pytest.raises(HistovlError, match="not fitted"):
        KNNHead().predict_proba(x)


def test_load_head_refuses_non_head_folders(tmp_path):
    with pytest.raises(HistovlError, match="not a few-shot head folder"):
        load_head(tmp_path)
    (tmp_path / "head.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "head.safetensors").write_bytes(b"")
    with pytest.raises(HistovlError, match="format"):
        load_head(tmp_path)

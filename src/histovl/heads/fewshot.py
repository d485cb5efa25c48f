"""Few-shot heads on frozen image embeddings: linear probe, kNN, SimpleShot, Tip-Adapter, text-linear.

Every head follows the `CMMHead` shape: ``fit(embeddings, labels) -> self``,
``predict_proba(embeddings) -> [N, C]`` (rows sum to 1, columns in ``head.classes`` order),
``save(folder)`` and ``load(folder)``. Inputs are the encoder's image embeddings (`encode_images`
returns them L2-normalised; every head normalises again, so raw features work too). The methods,
with every constant (docs/fewshot.md has the derivations and references):

``linear``
    scikit-learn `LogisticRegression` (lbfgs, L2, ``max_iter=1000``) on L2-normalised embeddings.
    C is picked from `LINEAR_C_GRID` by stratified k-fold cross-validation *inside the support
    set* (k = min(5, smallest class count); mean fold accuracy; ties go to the C nearest 1).
    With one image in some class, cross-validation is impossible: C = 1 (scikit-learn's default).
``knn``
    Cosine k-nearest neighbours with similarity-weighted votes (the k-NN evaluation of Wu et al.
    2018 and DINO): the k = min(`KNN_K` = 20, support size) most similar support images vote with
    weight ``exp(cos / 0.07)``; p(c) = their weight of class c / their total weight. At one shot
    per class this is a soft nearest neighbour.
``simpleshot``
    SimpleShot "CL2N" (Wang et al. 2019): centre with the support mean, L2-normalise; a class
    prototype is the L2-normalised mean of its centred support images; p = softmax(10 · cos(x̃, μ_c)).
``tip``
    Tip-Adapter (Zhang et al. 2022), training-free: logits = s · x·Wᵀ + α · (s / 100) ·
    exp(-β (1 - x·Kᵀ)) · L, with W the zero-shot text classifier, s its logit scale, K the support
    embeddings and L their one-hot labels. The factor s/100 expresses α in CLIP's logit units
    (s = 100), so the published defaults (α = 1, β = 5.5) mean the same for any model. α and β are
    chosen on the support set by leave-one-out accuracy (each support image scored against the
    cache without itself) over `TIP_ALPHA_GRID` x `TIP_BETA_GRID` (α = 0 is zero-shot; ties go to
    the pair nearest the defaults). With one image in some class, leave-one-out cannot see that
    class: the defaults are used.
``text-linear``
    A linear head initialised from the zero-shot classifier: logits = x·Mᵀ + b with M = s·W at
    the start and b = 0, trained by L-BFGS (at most ``steps`` iterations) on the summed cross-entropy
    of the support plus (λ/2)(‖M - s·W‖² + ‖b‖²), a pull toward the zero-shot head. At zero steps
    it *is* zero-shot. λ is chosen like ``linear``'s C (cross-validation, `TEXT_LINEAR_LAMBDA_GRID`,
    ties to the value nearest 1); with one image in some class, λ = 1.

``tip`` and ``text-linear`` need the zero-shot text classifier (`TextHead.from_classifier`).

Saved format (no pickle): ``head.json`` (format, method, classes, constructor parameters, chosen
values, the encoder's weights id, model card name and preprocessing key) and ``head.safetensors``
(the arrays), each written atomically.

The interface `histovl predict` relies on:

- `load_head(folder)` returns a fitted head of the right method;
- ``head.classes: list[str]``; ``head.weights_id: str`` (the encoder it was fitted on);
- ``head.check_encoder(encoder)`` raises `HistovlError` (one line naming the encoder the head was
  fitted on and the one given) unless weights id and preprocessing match;
- ``head.predict_proba(embeddings: np.ndarray [N, D]) -> np.ndarray [N, C]``.

Example:
    >>> head = LinearHead(encoder=EncoderInfo.of(enc)).fit(emb, labels)  # doctest: +SKIP
    >>> head.save("heads/lung"); load_head("heads/lung").predict_proba(new_emb)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file, save_file

from histovl._io import atomic_write_json, atomic_write_with
from histovl.errors import HistovlError, NonFiniteError

HEAD_FORMAT = "histovl-fewshot-head/1"
CV_FOLDS = 5
#: C values tried by `linear`, in tie-break order (nearest the default 1 first).
LINEAR_C_GRID = (1.0, 10.0, 0.1, 100.0, 0.01)
LINEAR_DEFAULT_C = 1.0
LINEAR_MAX_ITER = 1000
KNN_K = 20
KNN_TEMPERATURE = 0.07
SIMPLESHOT_SCALE = 10.0
TIP_ALPHA_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
TIP_BETA_GRID = (1.0, 3.0, 5.5, 8.0)
TIP_DEFAULTS = (1.0, 5.5)
TIP_REFERENCE_SCALE = 100.0
TEXT_LINEAR_LAMBDA_GRID = (1.0, 10.0, 0.1, 100.0)
TEXT_LINEAR_DEFAULT_LAMBDA = 1.0
TEXT_LINEAR_STEPS = 200

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class EncoderInfo:
    """Which encoder produced the embeddings a head was fitted on."""

    weights_id: str
    model: str
    preprocessing: str

    @classmethod
    def of(cls, encoder: Any) -> EncoderInfo:
        """The identity of a loaded `Encoder` (weights id, card name, preprocessing key). The
        weights id is torch's: a head fitted under ``--runtime onnx`` applies under torch and back
        (the runtime's parity gate bounds the difference; docs/runtime.md)."""
        from histovl.embed.runtimes import torch_weights_id

        return cls(torch_weights_id(encoder.weights_id), str(encoder.card.name), str(encoder.card.preprocessing_key()))

    def describe(self) -> str:
        return f"{self.model} (weights {self.weights_id[:16]}, preprocessing {self.preprocessing})"


class FewshotHead:
    """Base class: label handling, input checks, the encoder check and persistence.

    Subclasses implement `_fit` (on L2-normalised rows and class indices), `_proba`, `_state`
    (arrays and chosen scalars to save) and `_load_state`.
    """

    method: ClassVar[str] = ""

    def __init__(self, *, classes: Sequence[str] | None = None, encoder: EncoderInfo | None = None,
                 random_state: int = 0) -> None:
        self.classes: list[str] = [str(c) for c in classes] if classes is not None else []
        self.encoder = encoder
        self.random_state = random_state

    # ---- the public interface ------------------------------------------------------------
    def fit(self, embeddings: Any, labels: Sequence[str]) -> FewshotHead:
        """Fit on support embeddings [N, D] and their class names; returns self."""
        x = unit_rows(check_embeddings(embeddings))
        y = self._label_indices(labels, len(x))
        with _thread_controller().limit(limits=1):  # tiny problems: threaded BLAS only adds contention
            self._fit(x, y)
        self.n_features_in_ = int(x.shape[1])
        self.class_counts_ = {c: int(n) for c, n in zip(self.classes, np.bincount(y, minlength=len(self.classes)), strict=True)}
        return self

    def predict_proba(self, embeddings: Any) -> FloatArray:
        """Class probabilities [N, C], columns in ``self.classes`` order."""
        if not hasattr(self, "n_features_in_"):
            raise HistovlError(f"this {self.method} head is not fitted yet: call fit(...) or load_head(folder)")
        x = check_embeddings(embeddings)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"embeddings have {x.shape[1]} dims, the head was fitted on {self.n_features_in_}")
        return self._proba(unit_rows(x))

    def predict(self, embeddings: Any) -> list[str]:
        """The most probable class name per row."""
        return [self.classes[i] for i in self.predict_proba(embeddings).argmax(axis=1)]

    @property
    def weights_id(self) -> str:
        """Weights id of the encoder the head was fitted on ("" when unknown)."""
        return self.encoder.weights_id if self.encoder is not None else ""

    def check_encoder(self, encoder: Any) -> None:
        """Raise `HistovlError` unless `encoder` is the one this head was fitted on."""
        given = EncoderInfo.of(encoder)
        if self.encoder is None:
            raise HistovlError(f"this {self.method} head records no encoder, so it cannot be checked against {given.describe()}; refit it with `histovl fewshot fit`")
        if (given.weights_id, given.preprocessing) != (self.encoder.weights_id, self.encoder.preprocessing):
            raise HistovlError(f"this {self.method} head was fitted on {self.encoder.describe()} but the model given is {given.describe()}; use the same model or fit a new head")

    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON), as `load` passes them back."""
        return {"random_state": self.random_state}

    def chosen(self) -> dict[str, Any]:
        """Values picked during `fit` (C, k, alpha, beta, lambda...), for run records."""
        return self._state()[1]

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` and ``head.json`` (each atomically) into `folder`."""
        if not hasattr(self, "n_features_in_"):
            raise HistovlError(f"this {self.method} head is not fitted yet; nothing to save")
        if self.encoder is None:
            raise HistovlError("a head is saved with the encoder it was fitted on: pass encoder=EncoderInfo.of(encoder)")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        arrays, scalars = self._state()
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write_with(out / "head.safetensors", lambda p: save_file(tensors, str(p)))
        meta = {
            "format": HEAD_FORMAT, "method": self.method, "classes": self.classes, "params": self.params(),
            "chosen": scalars, "encoder": asdict(self.encoder), "n_features_in": self.n_features_in_,
            "class_counts": self.class_counts_,
        }
        atomic_write_json(out / "head.json", meta)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> FewshotHead:
        """Rebuild a head written by `save` (safetensors and JSON only: no code can run)."""
        meta, arrays = read_head_folder(folder)
        if meta["method"] != cls.method:
            raise HistovlError(f"{folder} holds a {meta['method']!r} head, not {cls.method!r}; use load_head(folder)")
        head = cls(classes=meta["classes"], encoder=EncoderInfo(**meta["encoder"]), **meta["params"])
        head._load_state(arrays, dict(meta.get("chosen", {})))
        head.n_features_in_ = int(meta["n_features_in"])
        head.class_counts_ = dict(meta.get("class_counts", {}))
        return head

    # ---- what subclasses implement -------------------------------------------------------
    def _fit(self, x: FloatArray, y: IntArray) -> None:
        raise NotImplementedError

    def _proba(self, x: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------------
    def _label_indices(self, labels: Sequence[str], n: int) -> IntArray:
        names = [str(v) for v in labels]
        if len(names) != n:
            raise ValueError(f"{len(names)} labels for {n} embeddings")
        if not self.classes:
            self.classes = sorted(set(names))
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the head's classes {self.classes}")
        y = np.fromiter((index[v] for v in names), dtype=np.int64, count=n)
        missing = [c for c, k in zip(self.classes, np.bincount(y, minlength=len(self.classes)), strict=True) if k == 0]
        if missing:
            raise ValueError(f"class(es) {missing} have no support image; every class needs at least one")
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.classes}")
        return y


# ---- the methods ------------------------------------------------------------------------------


class LinearHead(FewshotHead):
    """Logistic regression on L2-normalised embeddings, C by cross-validation in the support set."""

    method = "linear"

    def _fit(self, x: FloatArray, y: IntArray) -> None:
        folds = cv_folds(y, self.random_state)
        if folds is None:
            self.C_ = LINEAR_DEFAULT_C
        else:
            self.C_ = select_by_cv(LINEAR_C_GRID, folds, x, y, lambda c, _, xt, yt, xv: _logistic(c).fit(xt, yt).predict(xv))
        model = _logistic(self.C_).fit(x, y)
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float64)  # as saved: same BLAS path, same bits
        self.intercept_ = np.ascontiguousarray(model.intercept_, dtype=np.float64)

    def _proba(self, x: FloatArray) -> FloatArray:
        z = x @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:  # scikit-learn's binary model: one logit for the second class
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        return softmax(z)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"coef": self.coef_, "intercept": self.intercept_}, {"C": self.C_}

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self.coef_, self.intercept_ = _arrays(arrays, "coef", "intercept")
        self.C_ = float(scalars["C"])


def _logistic(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=LINEAR_MAX_ITER)


class KNNHead(FewshotHead):
    """Cosine k-nearest neighbours with ``exp(cos / T)``-weighted votes."""

    method = "knn"

    def __init__(self, *, k: int = KNN_K, temperature: float = KNN_TEMPERATURE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1 or temperature <= 0:
            raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.k = int(k)
        self.temperature = float(temperature)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k, "temperature": self.temperature}

    def _fit(self, x: FloatArray, y: IntArray) -> None:
        self.support_, self.support_labels_ = x, y

    def _proba(self, x: FloatArray) -> FloatArray:
        sims = x @ self.support_.T
        k = min(self.k, len(self.support_))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        weights = np.exp((top_sims - 1.0) / self.temperature)  # shifted by the largest possible cosine
        votes = np.zeros((len(x), len(self.classes)))
        np.add.at(votes, (np.repeat(np.arange(len(x)), k), self.support_labels_[top].ravel()), weights.ravel())
        return votes / votes.sum(axis=1, keepdims=True)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"support": self.support_, "support_labels": self.support_labels_}, {"k_used": min(self.k, len(self.support_))}

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        support, labels = _arrays(arrays, "support", "support_labels")
        self.support_, self.support_labels_ = support, labels.astype(np.int64)


class SimpleShotHead(FewshotHead):
    """Nearest centred, L2-normalised class prototype (SimpleShot CL2N)."""

    method = "simpleshot"

    def _fit(self, x: FloatArray, y: IntArray) -> None:
        self.mean_ = x.mean(axis=0)
        z = unit_rows(x - self.mean_)
        self.prototypes_ = unit_rows(np.stack([z[y == c].mean(axis=0) for c in range(len(self.classes))]))

    def _proba(self, x: FloatArray) -> FloatArray:
        return softmax(SIMPLESHOT_SCALE * unit_rows(x - self.mean_) @ self.prototypes_.T)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean": self.mean_, "prototypes": self.prototypes_}, {}

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self.mean_, self.prototypes_ = _arrays(arrays, "mean", "prototypes")


class TextHead(FewshotHead):
    """A head that starts from the zero-shot text classifier (weights [C, D], logit scale)."""

    def __init__(self, *, text_weights: Any = None, logit_scale: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text_weights = None if text_weights is None else np.asarray(text_weights, dtype=np.float64)
        self.logit_scale = None if logit_scale is None else float(logit_scale)

    @classmethod
    def from_classifier(cls, classifier: Any, **kwargs: Any) -> TextHead:
        """From a `histovl.zeroshot.TextClassifier` (``aggregate="mean"``): its classes, weights, scale."""
        weights = np.asarray(classifier.weights.detach().cpu().numpy() if hasattr(classifier.weights, "detach") else classifier.weights)
        if weights.ndim != 2:
            raise ValueError("few-shot text heads need a mean-aggregated text classifier (one weight per class)")
        return cls(classes=list(classifier.class_names), text_weights=weights, logit_scale=classifier.logit_scale, **kwargs)

    def zero_shot_logits(self, x: FloatArray) -> FloatArray:
        """s · cos(x, W): the zero-shot classifier's logits (x already L2-normalised)."""
        w, s = self._text()
        return s * (x @ w.T)

    def _text(self) -> tuple[FloatArray, float]:
        if self.text_weights is None or self.logit_scale is None:
            raise HistovlError(f"the {self.method} head needs the zero-shot text classifier: build it with from_classifier(...) (give --prompts)")
        if self.text_weights.shape[0] != len(self.classes):
            raise ValueError(f"text weights have {self.text_weights.shape[0]} rows for {len(self.classes)} classes")
        return self.text_weights, self.logit_scale

    def _text_state(self) -> dict[str, np.ndarray]:
        w, _ = self._text()
        return {"text_weights": w}

    def _load_text(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        (self.text_weights,) = _arrays(arrays, "text_weights")
        self.logit_scale = float(scalars["logit_scale"])


class TipAdapterHead(TextHead):
    """Tip-Adapter: zero-shot logits plus an affinity-weighted vote of the support cache."""

    method = "tip"

    def _fit(self, x: FloatArray, y: IntArray) -> None:
        w, s = self._text()
        self.keys_, self.values_ = x, np.eye(len(self.classes))[y]
        if np.bincount(y).min() < 2:
            self.alpha_, self.beta_ = TIP_DEFAULTS
            return
        zero_shot = s * (x @ w.T)
        gram = x @ x.T
        pairs = sorted(((a, b) for a in TIP_ALPHA_GRID for b in TIP_BETA_GRID),
                       key=lambda ab: (abs(ab[0] - TIP_DEFAULTS[0]), abs(ab[1] - TIP_DEFAULTS[1])))
        scores = []
        for alpha, beta in pairs:
            affinity = np.exp(-beta * (1.0 - gram))
            np.fill_diagonal(affinity, 0.0)  # leave-one-out: an image never votes for itself
            logits = zero_shot + alpha * (s / TIP_REFERENCE_SCALE) * affinity @ self.values_
            scores.append(float(np.mean(logits.argmax(axis=1) == y)))
        self.alpha_, self.beta_ = pairs[int(np.argmax(scores))]

    def logits(self, x: FloatArray) -> FloatArray:
        """Tip-Adapter logits of L2-normalised rows (the module docstring's formula)."""
        _, s = self._text()
        affinity = np.exp(-self.beta_ * (1.0 - x @ self.keys_.T))
        return self.zero_shot_logits(x) + self.alpha_ * (s / TIP_REFERENCE_SCALE) * affinity @ self.values_

    def _proba(self, x: FloatArray) -> FloatArray:
        return softmax(self.logits(x))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {**self._text_state(), "keys": self.keys_, "values": self.values_}
        return arrays, {"alpha": self.alpha_, "beta": self.beta_, "logit_scale": self.logit_scale}

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self._load_text(arrays, scalars)
        self.keys_, self.values_ = _arrays(arrays, "keys", "values")
        self.alpha_, self.beta_ = float(scalars["alpha"]), float(scalars["beta"])


class TextLinearHead(TextHead):
    """Linear head initialised from (and pulled toward) the zero-shot classifier."""

    method = "text-linear"

    def __init__(self, *, steps: int = TEXT_LINEAR_STEPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if steps < 0:
            raise ValueError(f"steps must be 0 or more, got {steps}")
        self.steps = int(steps)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "steps": self.steps}

    def _fit(self, x: FloatArray, y: IntArray) -> None:
        w, s = self._text()
        self.init_ = s * w
        if self.steps == 0:
            self.lambda_: float | None = None
            self.weight_, self.bias_ = self.init_.copy(), np.zeros(len(self.classes))
            return
        folds = cv_folds(y, self.random_state)
        if folds is None:
            self.lambda_ = TEXT_LINEAR_DEFAULT_LAMBDA
        else:
            warm: dict[int, tuple[FloatArray, FloatArray]] = {}

            def fold_predict(lam: float, fold: int, xt: FloatArray, yt: IntArray, xv: FloatArray) -> IntArray:
                warm[fold] = pulled_softmax_regression(xt, yt, self.init_, lam, self.steps, start=warm.get(fold))
                return (xv @ warm[fold][0].T + warm[fold][1]).argmax(axis=1)

            # strongest pull first, each fold warm-started from the previous lambda's solution
            self.lambda_ = select_by_cv(TEXT_LINEAR_LAMBDA_GRID, folds, x, y, fold_predict,
                                        order=sorted(TEXT_LINEAR_LAMBDA_GRID, reverse=True))
        self.weight_, self.bias_ = pulled_softmax_regression(x, y, self.init_, self.lambda_, self.steps)

    def _proba(self, x: FloatArray) -> FloatArray:
        return softmax(x @ self.weight_.T + self.bias_)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {**self._text_state(), "weight": self.weight_, "bias": self.bias_}
        return arrays, {"lambda": self.lambda_, "logit_scale": self.logit_scale}

    def _load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self._load_text(arrays, scalars)
        self.weight_, self.bias_ = _arrays(arrays, "weight", "bias")
        w, s = self._text()
        self.init_ = s * w
        self.lambda_ = None if scalars.get("lambda") is None else float(scalars["lambda"])


def pulled_softmax_regression(
    x: FloatArray, y: IntArray, init: FloatArray, lam: float, steps: int,
    start: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """argmin over (M, b) of sum CE(softmax(x Mᵀ + b), y) + lam/2 (‖M - init‖² + ‖b‖²), by L-BFGS.

    The objective is convex; L-BFGS starts at (init, 0) or at `start` and stops after `steps`
    iterations or when converged.
    """
    from scipy.optimize import minimize

    n_classes, dim = init.shape
    onehot = np.eye(n_classes)[y]

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        delta, bias = theta[: n_classes * dim].reshape(n_classes, dim), theta[n_classes * dim :]
        logits = x @ (init + delta).T + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        residual = np.exp(log_p) - onehot
        loss = -float((onehot * log_p).sum()) + 0.5 * lam * float((delta**2).sum() + (bias**2).sum())
        grad = np.concatenate([(residual.T @ x + lam * delta).ravel(), residual.sum(axis=0) + lam * bias])
        return loss, grad

    theta0 = np.zeros(n_classes * (dim + 1)) if start is None else np.concatenate([(start[0] - init).ravel(), start[1]])
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": steps})
    theta = res.x
    return init + theta[: n_classes * dim].reshape(n_classes, dim), theta[n_classes * dim :].copy()


#: method name -> head class (the CLI's --method choices, in table order).
HEADS: dict[str, type[FewshotHead]] = {
    "linear": LinearHead,
    "knn": KNNHead,
    "simpleshot": SimpleShotHead,
    "tip": TipAdapterHead,
    "text-linear": TextLinearHead,
}
METHODS = tuple(HEADS)
TEXT_METHODS = tuple(m for m, cls in HEADS.items() if issubclass(cls, TextHead))


def make_head(method: str, classes: Sequence[str] | None = None, *, encoder: EncoderInfo | None = None,
              classifier: Any = None, random_state: int = 0, knn_k: int = KNN_K,
              steps: int = TEXT_LINEAR_STEPS) -> FewshotHead:
    """An unfitted head by method name, for `classes` in that order (None: the sorted labels).

    Text heads need the zero-shot `classifier`; its classes must be `classes`.
    """
    if method not in HEADS:
        raise HistovlError(f"unknown few-shot method {method!r}; choose from {', '.join(METHODS)}")
    cls = HEADS[method]
    kwargs: dict[str, Any] = {"encoder": encoder, "random_state": random_state}
    if cls is KNNHead:
        kwargs["k"] = knn_k
    if cls is TextLinearHead:
        kwargs["steps"] = steps
    if not issubclass(cls, TextHead):
        return cls(classes=classes, **kwargs)
    if classifier is None:
        raise HistovlError(f"the {method} method starts from the zero-shot classifier: give --prompts")
    head = cls.from_classifier(classifier, **kwargs)
    if classes is not None and list(classes) != head.classes:
        raise ValueError(f"the text classifier's classes {head.classes} differ from {list(classes)}")
    return head


def load_head(folder: str | os.PathLike[str]) -> FewshotHead:
    """Load any head written by `FewshotHead.save` (`histovl fewshot fit`)."""
    meta, _ = read_head_folder(folder)
    cls = HEADS.get(str(meta.get("method")))
    if cls is None:
        raise HistovlError(f"{folder}/head.json names method {meta.get('method')!r}; known: {', '.join(METHODS)}")
    return cls.load(folder)


def read_head_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """head.json and head.safetensors of a head folder, with clear errors."""
    root = Path(folder)
    meta_path, weights_path = root / "head.json", root / "head.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise HistovlError(f"{root} is not a few-shot head folder (needs head.json and head.safetensors); run `histovl fewshot fit`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HistovlError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("format") != HEAD_FORMAT:
        raise HistovlError(f"{meta_path} has format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
    return meta, load_file(str(weights_path))


# ---- shared numerics --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _thread_controller() -> Any:
    """One `threadpoolctl.ThreadpoolController` (building one scans every loaded library: ~15 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def check_embeddings(embeddings: Any) -> FloatArray:
    """A finite, non-empty [N, D] float64 array."""
    x = np.asarray(embeddings.detach().cpu().numpy() if hasattr(embeddings, "detach") else embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"embedding row {int(np.flatnonzero(bad)[0])} contains NaN/Inf")
    return x


def unit_rows(x: FloatArray) -> FloatArray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def softmax(z: FloatArray) -> FloatArray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def cv_folds(y: IntArray, random_state: int) -> list[tuple[IntArray, IntArray]] | None:
    """Stratified k-fold splits of the support set (k = min(5, smallest class)); None below 2."""
    from sklearn.model_selection import StratifiedKFold

    k = min(CV_FOLDS, int(np.bincount(y).min()))
    if k < 2:
        return None
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
    return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y)]


def select_by_cv(
    grid: Sequence[float],
    folds: list[tuple[IntArray, IntArray]],
    x: FloatArray,
    y: IntArray,
    fit_predict: Callable[[float, int, FloatArray, IntArray, FloatArray], IntArray],
    *,
    order: Sequence[float] | None = None,
) -> float:
    """The grid value with the best mean held-out accuracy; ties go to the earliest in `grid`.

    ``fit_predict(value, fold, x_train, y_train, x_held_out)`` is called for the values in
    `order` (default: `grid`), so a solver can warm-start each fold from the previous value.
    """
    scores: dict[float, float] = {}
    for value in order if order is not None else grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes on tiny folds
            accs = [float(np.mean(fit_predict(value, k, x[tr], y[tr], x[te]) == y[te])) for k, (tr, te) in enumerate(folds)]
        scores[value] = float(np.mean(accs))
    return float(grid[int(np.argmax([scores[v] for v in grid]))])


def _arrays(arrays: dict[str, np.ndarray], *names: str) -> tuple[FloatArray, ...]:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise HistovlError(f"head.safetensors lacks {missing}; it was not written by this head type")
    return tuple(np.asarray(arrays[n]) for n in names)

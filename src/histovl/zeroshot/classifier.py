"""Text classifiers for zero-shot classification: one pure construction, memoised per model.

For each class the prompts are every (description × template). The classifier weight is the
normalised mean of the normalised prompt embeddings (open_clip's `build_zero_shot_classifier`,
which it equals exactly for one description per class), or, with ``aggregate="max"``, one weight
per description and the class score is the best description's score.

Everything here is NumPy, in float64 where it scores: the prompt embeddings come through the
embedding cache (`histovl.embed.text`), so a run whose prompts and images are all cached builds
its classifier and its probabilities without torch or the model, and gives the same bytes as the
run that encoded them. (Scoring in float64 also makes the probabilities independent of the BLAS
kernel to ~1e-13, where float32 matrix products differed in the 7th digit between torch's and
NumPy's kernels.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from histovl.embed.text import TEXT_BATCH, encode_texts

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

Aggregate = Literal["mean", "max"]


class PromptSetLike(Protocol):
    """What the classifier needs from a prompt set (see `histovl.prompts.PromptSet`)."""

    @property
    def name(self) -> str: ...

    @property
    def classes(self) -> Mapping[str, Sequence[str]]: ...

    @property
    def templates(self) -> Sequence[str]: ...

    def content_hash(self) -> str: ...


def _as_array(x: object) -> np.ndarray:
    """Embeddings as a float64 array (NumPy arrays, or torch tensors from callers that hold one)."""
    detach = getattr(x, "detach", None)
    if detach is not None:
        x = detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero, as torch's ``F.normalize``)."""
    norm = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return x / np.maximum(norm, 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class TextClassifier:
    """Class weights in the shared embedding space.

    Attributes:
        weights: float64 [C, D] (``mean``) or [C, M, D] with `mask` [C, M] (``max``), L2-normalised rows.
        class_names: label of each row, in prompt-set order.
        logit_scale: the model's inverse temperature; logits = scale × cosine.
        prompts: the exact prompt texts per class (recorded in run.json).
    """

    weights: np.ndarray
    class_names: tuple[str, ...]
    logit_scale: float
    aggregate: Aggregate
    prompts: dict[str, list[list[str]]]
    mask: np.ndarray | None = None

    def cosine(self, image_embeddings: object) -> np.ndarray:
        """[N, C] cosine similarity (float64) of L2-normalised image embeddings to each class."""
        x = _as_array(image_embeddings)
        w = self.weights
        if self.aggregate == "mean":
            return x @ w.T
        if self.mask is None:
            raise ValueError("a max-aggregate classifier needs its description mask")
        sims = np.einsum("nd,cmd->ncm", x, w)
        sims = np.where(self.mask[None], sims, -np.inf)
        return sims.max(axis=-1)

    def logits(self, image_embeddings: object) -> np.ndarray:
        """[N, C] logits = logit_scale × cosine (softmax of these is the class probability)."""
        return self.logit_scale * self.cosine(image_embeddings)

    def probabilities(self, image_embeddings: object) -> np.ndarray:
        """[N, C] softmax over classes (float64)."""
        return softmax(self.logits(image_embeddings))


def encode_prompts(encoder: Encoder, prompts: Sequence[str], batch_size: int = TEXT_BATCH) -> np.ndarray:
    """L2-normalised float32 embeddings of `prompts`, each distinct prompt encoded once, cached
    ones read from the encoder's prompt cache (`histovl.embed.text.encode_texts`)."""
    return encode_texts(encoder, prompts, batch_size=batch_size)


_MEMO: dict[tuple[int, str, str, str], TextClassifier] = {}
_MEMO_LOCK = threading.Lock()


def build_text_classifier(
    encoder: Encoder, prompt_set: PromptSetLike, aggregate: Aggregate = "mean", *, memoise: bool = True
) -> TextClassifier:
    """Build (or fetch the memoised) zero-shot classifier for `encoder` × `prompt_set`.

    All prompts of all classes are encoded in one batched pass (distinct prompts once), so a
    sweep over data sets or corruptions pays for the text tower once per (model, prompt set).

    Example:
        >>> clf = build_text_classifier(load_model("histovl-lite"), load_prompt_set("lung-he-v1"))  # doctest: +SKIP
        >>> clf.probabilities(image_embeddings).shape  # doctest: +SKIP
        (n_images, 3)
    """
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    memo_key = (id(encoder), encoder.weights_id, prompt_set.content_hash(), aggregate)
    if memoise:
        with _MEMO_LOCK:
            hit = _MEMO.get(memo_key)
        if hit is not None:
            return hit

    class_names = list(prompt_set.classes)
    texts: dict[str, list[list[str]]] = {
        c: [[t.replace("{}", d) for t in prompt_set.templates] for d in prompt_set.classes[c]] for c in class_names
    }
    flat = [p for c in class_names for desc in texts[c] for p in desc]
    emb = encode_prompts(encoder, flat).astype(np.float64)
    weights, mask = _class_weights(emb, [[len(desc) for desc in texts[c]] for c in class_names], aggregate)

    clf = TextClassifier(
        weights=weights,
        class_names=tuple(class_names),
        logit_scale=float(encoder.logit_scale),
        aggregate=aggregate,
        prompts=texts,
        mask=mask,
    )
    if memoise:
        with _MEMO_LOCK:
            _MEMO[memo_key] = clf
    return clf


def _class_weights(emb: np.ndarray, sizes: list[list[int]], aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray | None]:
    """Class weights from the prompt embeddings `emb` (rows in class, description, template
    order; `sizes[c][d]` templates per description): the normalised mean over each class's
    prompts (``mean``), or over each description's with a mask of real descriptions (``max``)."""
    per_desc: list[list[np.ndarray]] = []
    pos = 0
    for class_sizes in sizes:
        per_desc.append([emb[pos + sum(class_sizes[:d]) : pos + sum(class_sizes[: d + 1])] for d in range(len(class_sizes))])
        pos += sum(class_sizes)
    if aggregate == "mean":
        return np.stack([l2_normalise(np.concatenate(rows).mean(axis=0)) for rows in per_desc]), None
    m = max(len(rows) for rows in per_desc)
    weights = np.zeros((len(per_desc), m, emb.shape[1]))
    mask = np.zeros((len(per_desc), m), dtype=bool)
    for ci, rows in enumerate(per_desc):
        for di, r in enumerate(rows):
            weights[ci, di] = l2_normalise(r.mean(axis=0))
            mask[ci, di] = True
    return weights, mask


def clear_classifier_memo() -> None:
    """Forget memoised classifiers (e.g. after changing weights in place during training)."""
    with _MEMO_LOCK:
        _MEMO.clear()

"""Text classifiers for zero-shot classification: one pure construction, memoised per model.

For each class the prompts are every (description × template). The classifier weight is the
normalised mean of the normalised prompt embeddings (open_clip's `build_zero_shot_classifier`,
which it equals exactly for one description per class), or, with ``aggregate="max"``, one weight
per description and the class score is the best description's score.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from histovl.models.encoder import Encoder

Aggregate = Literal["mean", "max"]
TEXT_BATCH = 256


class PromptSetLike(Protocol):
    """What the classifier needs from a prompt set (see `histovl.prompts.PromptSet`)."""

    @property
    def name(self) -> str: ...

    @property
    def classes(self) -> Mapping[str, Sequence[str]]: ...

    @property
    def templates(self) -> Sequence[str]: ...

    def content_hash(self) -> str: ...


@dataclass(frozen=True)
class TextClassifier:
    """Class weights in the shared embedding space.

    Attributes:
        weights: [C, D] (``mean``) or [C, M, D] with `mask` [C, M] (``max``), L2-normalised rows.
        class_names: label of each row, in prompt-set order.
        logit_scale: the model's inverse temperature; logits = scale × cosine.
        prompts: the exact prompt texts per class (recorded in run.json).
    """

    weights: torch.Tensor
    class_names: tuple[str, ...]
    logit_scale: float
    aggregate: Aggregate
    prompts: dict[str, list[list[str]]]
    mask: torch.Tensor | None = None

    def cosine(self, image_embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, C] cosine similarity of L2-normalised image embeddings to each class."""
        x = torch.as_tensor(np.asarray(image_embeddings), dtype=torch.float32)
        w = self.weights.to(torch.float32)
        if self.aggregate == "mean":
            return (x @ w.T).numpy()
        sims = torch.einsum("nd,cmd->ncm", x, w)
        assert self.mask is not None
        sims = sims.masked_fill(~self.mask.unsqueeze(0), float("-inf"))
        return sims.max(dim=-1).values.numpy()

    def logits(self, image_embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, C] logits = logit_scale × cosine (softmax of these is the class probability)."""
        return self.logit_scale * self.cosine(image_embeddings)

    def probabilities(self, image_embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, C] softmax over classes."""
        logits = torch.as_tensor(self.logits(image_embeddings))
        return torch.softmax(logits.double(), dim=-1).numpy()


def encode_prompts(encoder: Encoder, prompts: Sequence[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """L2-normalised embeddings of `prompts`, each distinct prompt encoded once."""
    unique = list(dict.fromkeys(prompts))
    chunks = []
    with torch.inference_mode():
        for s in range(0, len(unique), batch_size):
            chunks.append(encoder.encode_text(unique[s : s + batch_size]).float().cpu())
    emb = torch.cat(chunks) if chunks else torch.zeros(0, encoder.card.embed_dim)
    if not torch.isfinite(emb).all():
        bad = unique[int((~torch.isfinite(emb).all(dim=1)).nonzero()[0])]
        from histovl.errors import NonFiniteError

        raise NonFiniteError(f"the text tower produced NaN/Inf for prompt {bad!r}")
    row = {p: i for i, p in enumerate(unique)}
    return emb[[row[p] for p in prompts]]


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
    emb = encode_prompts(encoder, flat)

    per_desc: list[list[torch.Tensor]] = []
    pos = 0
    for c in class_names:
        rows = []
        for desc in texts[c]:
            rows.append(emb[pos : pos + len(desc)])
            pos += len(desc)
        per_desc.append(rows)

    mask: torch.Tensor | None = None
    if aggregate == "mean":
        weights = torch.stack([F.normalize(torch.cat(rows).mean(dim=0), dim=-1) for rows in per_desc])
    else:
        m = max(len(rows) for rows in per_desc)
        weights = torch.zeros(len(class_names), m, emb.shape[1])
        mask = torch.zeros(len(class_names), m, dtype=torch.bool)
        for ci, rows in enumerate(per_desc):
            for di, r in enumerate(rows):
                weights[ci, di] = F.normalize(r.mean(dim=0), dim=-1)
                mask[ci, di] = True

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


def clear_classifier_memo() -> None:
    """Forget memoised classifiers (e.g. after changing weights in place during training)."""
    with _MEMO_LOCK:
        _MEMO.clear()

"""Where `histovl predict` gets its class probabilities: a prompt set or a fitted few-shot head.

A prompt set becomes the zero-shot text classifier of the model (`histovl.zeroshot`); a head
folder is loaded by `histovl.heads.fewshot.load_head` and must have been fitted on the same
encoder (`check_encoder`). Given both, the head scores and the prompt set must name the same
classes: the pair is a consistency check, refused with one line when they disagree.

Slide pooling (docs/predict.md): ``top-j`` with a prompt set is MI-Zero exactly as
`histovl.slides.slide_zeroshot` computes it (per class, the mean of the j highest tile cosine
similarities, then a softmax at the model's logit scale); with a head, the mean of the j highest
tile probabilities per class, renormalised to sum to 1. ``mean`` averages tile probabilities.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from histovl.errors import HistovlError
from histovl.models.encoder import Encoder
from histovl.zeroshot.classifier import Aggregate, TextClassifier, build_text_classifier

Pooling = Literal["top-j", "mean"]
POOLING_CHOICES: tuple[Pooling, ...] = ("top-j", "mean")


@runtime_checkable
class HeadLike(Protocol):
    """What `predict` needs from a fitted head (`histovl.heads.fewshot.load_head` returns one)."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def weights_id(self) -> str: ...

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray: ...

    def check_encoder(self, encoder: Encoder) -> None: ...


@dataclass(frozen=True)
class Sources:
    """The scoring inputs, loaded and checked before any model work."""

    prompt_set: Any | None
    head: HeadLike | None
    head_path: str | None

    @property
    def classes(self) -> list[str]:
        if self.head is not None:
            return [str(c) for c in self.head.classes]
        assert self.prompt_set is not None  # load_sources guarantees one of the two
        return [str(c) for c in self.prompt_set.classes]

    @property
    def kind(self) -> str:
        if self.head is not None:
            return "head+prompts" if self.prompt_set is not None else "head"
        return "prompts"


def load_sources(prompts: Any | None, head: Any | None) -> Sources:
    """Load the prompt set and/or the head; check that they agree on the classes."""
    if prompts is None and head is None:
        raise HistovlError("give a prompt set (--prompts) or a fitted head (--head) to score with")
    prompt_set = None
    if prompts is not None:
        from histovl.prompts import load_prompt_set

        prompt_set = load_prompt_set(prompts)
    loaded, head_path = _load_head(head) if head is not None else (None, None)
    sources = Sources(prompt_set, loaded, head_path)
    if prompt_set is not None and loaded is not None:
        check_same_classes(prompt_set, loaded, head_path)
    return sources


def _load_head(head: Any) -> tuple[HeadLike, str]:
    if not isinstance(head, str | os.PathLike):
        if not isinstance(head, HeadLike):
            raise TypeError(f"head must be a head folder or an object with {_HEAD_ATTRS}, not {type(head).__name__}")
        return head, type(head).__name__
    folder = Path(head)
    if not folder.is_dir():
        raise FileNotFoundError(f"head folder {folder} does not exist (fit one with `histovl fewshot fit`)")
    try:
        fewshot = importlib.import_module("histovl.heads.fewshot")
    except ImportError as err:
        raise HistovlError(f"few-shot heads are not available in this installation ({err})") from err
    return fewshot.load_head(folder), str(folder)


_HEAD_ATTRS = "classes, weights_id, predict_proba and check_encoder"


def check_same_classes(prompt_set: Any, head: HeadLike, head_path: str | None) -> None:
    """One line naming both class lists when a prompt set and a head disagree."""
    p, h = [str(c) for c in prompt_set.classes], [str(c) for c in head.classes]
    if set(p) != set(h) or len(p) != len(h):
        only_p, only_h = sorted(set(p) - set(h)), sorted(set(h) - set(p))
        raise HistovlError(
            f"prompt set {getattr(prompt_set, 'name', '?')!r} classes {p} differ from the classes of head "
            f"{head_path} {h} (only in prompts: {only_p}; only in head: {only_h}); give prompts with the head's classes"
        )


@dataclass(frozen=True)
class Scorer:
    """Class probabilities of image embeddings, from a text classifier or a head."""

    classes: tuple[str, ...]
    classifier: TextClassifier | None = None
    head: HeadLike | None = None

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, C] class probabilities (rows sum to 1), columns in `classes` order."""
        if self.head is not None:
            probs = np.asarray(self.head.predict_proba(np.asarray(embeddings, dtype=np.float32)), dtype=np.float64)
            if probs.shape != (len(embeddings), len(self.classes)):
                raise HistovlError(f"the head returned probabilities of shape {probs.shape}, expected "
                                   f"({len(embeddings)}, {len(self.classes)})")
            return probs
        assert self.classifier is not None
        return np.asarray(self.classifier.probabilities(embeddings), dtype=np.float64)

    def pool(self, embeddings: np.ndarray, tile_probs: np.ndarray, pooling: Pooling, top_j: int) -> dict[str, Any]:
        """Slide-level scores and probabilities from tile embeddings (see the module docstring)."""
        if pooling == "mean":
            probs = tile_probs.mean(axis=0)
            return {"pooling": "mean", "pooled": "tile probabilities", "scores": probs, "probabilities": probs}
        j = min(top_j, len(tile_probs))
        if self.classifier is not None:
            from histovl.slides import slide_zeroshot

            zs = slide_zeroshot(self.classifier, embeddings, (j,))
            return {"pooling": "top-j", "top_j": j, "pooled": "tile cosine similarities (MI-Zero)",
                    "scores": zs.slide_scores[j], "probabilities": zs.slide_probabilities[j]}
        from histovl.slides import top_j_pool

        pooled = top_j_pool(tile_probs, j)
        return {"pooling": "top-j", "top_j": j, "pooled": "tile probabilities",
                "scores": pooled, "probabilities": pooled / pooled.sum()}

    def record(self) -> dict[str, Any]:
        """What run.json records about the scorer."""
        if self.classifier is not None:
            return {"logit_scale": self.classifier.logit_scale, "prompts_used": self.classifier.prompts}
        return {"head_weights_id": getattr(self.head, "weights_id", None)}


def build_scorer(sources: Sources, encoder: Encoder, aggregate: Aggregate) -> Scorer:
    """The scorer for `encoder`; a head fitted on another encoder is refused here, before encoding."""
    if sources.head is not None:
        sources.head.check_encoder(encoder)
        return Scorer(tuple(sources.classes), head=sources.head)
    assert sources.prompt_set is not None
    clf = build_text_classifier(encoder, sources.prompt_set, aggregate)
    return Scorer(tuple(clf.class_names), classifier=clf)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (top-1 itself with a single class)."""
    if probs.shape[1] < 2:
        return probs[:, 0].copy() if len(probs) else np.zeros(0)
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]

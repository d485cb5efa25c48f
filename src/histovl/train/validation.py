"""Per-epoch validation: zero-shot macro F1 of the model being trained.

Uses the zero-shot package's `build_text_classifier` (no second zero-shot implementation); the
classifier is rebuilt each epoch without memoisation because the weights change in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from histovl.models.encoder import Encoder


def zero_shot_scores(
    encoder: Encoder, image_embeddings: np.ndarray, labels: Sequence[str], prompt_set: Any
) -> dict[str, float]:
    """``val_f1_macro`` and ``val_balanced_accuracy`` of zero-shot prediction."""
    from histovl.zeroshot import build_text_classifier

    clf = build_text_classifier(encoder, prompt_set, memoise=False)
    pred = [clf.class_names[i] for i in clf.logits(image_embeddings).argmax(axis=1)]
    return {
        "val_f1_macro": float(f1_score(list(labels), pred, labels=list(clf.class_names), average="macro", zero_division=0)),
        "val_balanced_accuracy": float(balanced_accuracy_score(list(labels), pred)),
    }

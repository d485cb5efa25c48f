"""Per-epoch validation: zero-shot macro F1 of the model being trained.

Uses the zero-shot package's `build_text_classifier` (no second zero-shot implementation); the
classifier is rebuilt each epoch without memoisation because the weights change in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from histovl.embed.engine import encode_batch_with_backoff
from histovl.models.encoder import Encoder
from histovl.train.features import SplitTowers, image_loader


@dataclass
class ValidationSet:
    """What each epoch's validation scores (rank 0 only), unreadable images already left out.

    Attributes:
        features: frozen-backbone features when the image tower is frozen, else None (the
            images are encoded each epoch).
        skipped: the left-out images, as ``finetune.json`` lists them (``split: val``).
    """

    labels: list[str]
    prompt_set: Any
    features: torch.Tensor | None
    paths: list[Path]
    batch_size: int
    num_workers: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def check_validation(val_data: Any, val_prompts: Any, allow_absolute_paths: bool) -> tuple[Any, Any] | None:
    """Load the validation set and prompt set and check they agree (cheap; runs before training).

    A validation label without a prompt would be scored as always wrong, silently; a typo here
    must fail before the first feature pass, not after it.
    """
    if val_data is None and val_prompts is None:
        return None
    if val_data is None or val_prompts is None:
        raise ValueError("per-epoch validation needs both val_data and val_prompts (--val-data and --val-prompts)")
    from histovl.data import load_image_set, validate_labels
    from histovl.prompts import load_prompt_set

    vset = load_image_set(val_data, allow_absolute_paths=allow_absolute_paths)
    prompt_set = load_prompt_set(val_prompts)
    validate_labels(vset, list(prompt_set.classes), allow_missing_classes=True)
    return vset, prompt_set


def validate(encoder: Encoder, val: ValidationSet) -> dict[str, float]:
    """This epoch's zero-shot scores on the validation set."""
    with torch.inference_mode():
        if val.features is not None:
            emb = nn.functional.normalize(cast(SplitTowers, encoder).project_image(val.features).float(), dim=-1)
        else:
            emb = torch.cat([encode_batch_with_backoff(encoder.encode_image, px, len(px))[0]
                             for px in image_loader(val.paths, encoder.preprocess, val.batch_size, val.num_workers)])
    return zero_shot_scores(encoder, emb.cpu().numpy().astype(np.float32), val.labels, val.prompt_set)


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

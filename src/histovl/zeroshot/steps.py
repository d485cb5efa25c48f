"""The steps the zero-shot commands share.

`zeroshot`, `ablate_fusion` and `multilabel` are each these steps in order, with their own scoring
in the middle: check every input before any model work (`load_labelled_inputs`), load the
encoders (`load_encoders`), encode with the run options (`encode_with_options`), keep the records
that were read (`kept_records`) and score single-label probabilities against the labels
(`classification_metrics_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from histovl.data.records import ImageRecord, ImageSet
from histovl.embed import EmbeddingResult, ImageTransform, cache_for
from histovl.options import RunOptions

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder


def require_single_label(image_set: ImageSet) -> None:
    """Refuse multi-label data with a message that says where it belongs."""
    if image_set.multilabel:
        raise ValueError(
            f"{image_set.source} holds multi-label data (a `labels` column); "
            "use `histovl multilabel` for it, or give a `label` column for single-label zero-shot"
        )


def load_labelled_inputs(
    data: Any,
    prompts: Any,
    opts: RunOptions,
    *,
    allow_missing_classes: bool,
    require: Callable[[ImageSet], None] = require_single_label,
) -> tuple[Any, ImageSet, list[str]]:
    """Load the prompt set and the labelled image set and check one against the other.

    Runs before any model loads, so a typo in a label or a path costs nothing. `require` refuses
    the wrong kind of data (single- or multi-label) before the labels are compared.

    Returns:
        (prompt set, image set, class names in prompt-set order).
    """
    from histovl.data import load_image_set, validate_labels
    from histovl.prompts import load_prompt_set

    prompt_set = load_prompt_set(prompts)
    image_set = load_image_set(data, allow_absolute_paths=opts.allow_absolute_paths)
    require(image_set)
    class_names = list(prompt_set.classes)
    validate_labels(image_set, class_names, allow_missing_classes=allow_missing_classes)
    return prompt_set, image_set, class_names


def load_encoders(models: Sequence[Any], opts: RunOptions) -> list[Encoder]:
    """Each model spec (or already-loaded `Encoder`) as an `Encoder` on ``opts.device``, opened
    through `histovl.embed.open_encoder`: with the cache on, a model whose identity is known is
    loaded only when an image or prompt misses the cache (once per process), and its prompt
    embeddings are cached too."""
    from histovl.embed.encoders import open_encoder

    return [open_encoder(m, opts) for m in models]


def encode_with_options(
    encoder: Encoder, paths: Sequence[Any], opts: RunOptions, *, transform: ImageTransform | None = None
) -> EmbeddingResult:
    """`histovl.embed.encode_images` with the run's cache, batch size, workers, on_error, progress
    and seed."""
    from histovl.embed import encode_images  # looked up per call: tests stand in for it

    return encode_images(
        encoder, paths, cache=cache_for(opts), transform=transform, batch_size=opts.batch_size,
        num_workers=opts.workers, on_error=opts.on_error, progress=opts.progress, seed=opts.seed,
    )


def no_image_read(n: int) -> ValueError:
    """The error when every image was skipped as unreadable."""
    return ValueError(f"no image of {n} could be read; see the skipped list for reasons")


def kept_records(image_set: ImageSet, ok: np.ndarray) -> list[ImageRecord]:
    """The records of the images that were read (``ok`` is a mask over ``image_set.records``)."""
    return [r for r, keep in zip(image_set.records, ok, strict=True) if keep]


def classification_metrics_for(
    records: Sequence[ImageRecord], probs: np.ndarray, class_names: list[str], opts: RunOptions
) -> dict[str, Any]:
    """Single-label metrics of `probs` against the records' labels, with bootstrap CIs grouped by
    the records' ``group`` where any is given."""
    from histovl.metrics import classification_metrics

    index = {c: i for i, c in enumerate(class_names)}
    y_true = np.array([index[str(r.label)] for r in records])
    groups = [r.group for r in records]
    return classification_metrics(
        y_true, probs, class_names,
        groups=np.array(groups, dtype=object) if any(g is not None for g in groups) else None,
        n_boot=opts.n_boot, seed=opts.seed,
    )

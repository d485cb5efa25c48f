"""Check that a data set's labels and a prompt set's classes agree before anything is encoded.

A label with no prompt cannot be predicted (every such image is silently wrong), and a prompt class
with no images changes the classifier and the macro metrics. Both are caught here with the counts
and close-match suggestions, because the usual cause is a typo (``lung_ACA`` vs ``lung_aca``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from histovl.data.records import ImageSet
from histovl.errors import did_you_mean


def validate_labels(
    image_set: ImageSet,
    class_names: Iterable[str] | Any,
    *,
    allow_missing_classes: bool = False,
) -> dict[str, int]:
    """Check every data label against `class_names` (usually the prompt set's classes).

    Args:
        image_set: The loaded data; it must carry labels.
        class_names: The labels the model can predict, or a `PromptSet` (its `class_names`).
        allow_missing_classes: Accept prompt classes that have no images (CLI:
            ``--allow-missing-classes``); they stay in the classifier as distractors.

    Returns:
        Images per class, for every name in `class_names` (0 where allowed to be missing).

    Raises:
        ValueError: The data has no labels; a data label is not among `class_names` (named, with
            its image count and close matches); or a class has no images and
            `allow_missing_classes` is False.

    Example:
        >>> validate_labels(images, prompt_set.classes)  # doctest: +SKIP
        {'lung_aca': 1500, 'lung_n': 1500, 'lung_scc': 1500}
    """
    names = getattr(class_names, "class_names", class_names)  # a PromptSet iterates as fields
    classes = [str(c) for c in dict.fromkeys(names)]
    if not classes:
        raise ValueError("the prompt set has no classes; add at least two under `classes:`")
    if not image_set.has_labels:
        raise ValueError(
            f"data {image_set.source} has no labels; evaluation needs a class-folder tree or a "
            "manifest with a `label` (or `labels`) column"
        )
    counts = Counter(lab for labs in image_set.label_sets for lab in labs)
    known = set(classes)
    unknown = sorted(lab for lab in counts if lab not in known)
    if unknown:
        lines = "\n".join(
            f"  {lab!r}: {counts[lab]} image(s).{did_you_mean(lab, classes)}" for lab in unknown[:10]
        )
        more = f"\n  ... and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(
            f"{len(unknown)} label(s) in {image_set.source} have no prompts:\n{lines}{more}\n"
            f"Prompt-set classes: {classes}. Rename the data labels or add these classes to the "
            "prompt set."
        )
    missing = [c for c in classes if counts.get(c, 0) == 0]
    if missing and not allow_missing_classes:
        present = {c: counts[c] for c in classes if counts.get(c, 0)}
        raise ValueError(
            f"{len(missing)} prompt-set class(es) have no images in {image_set.source}: "
            f"{missing}. Images per class: {present}. Pass --allow-missing-classes "
            "(allow_missing_classes=True) to keep them as distractor classes, or remove them from "
            "the prompt set."
        )
    return {c: counts.get(c, 0) for c in classes}

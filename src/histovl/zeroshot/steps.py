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
from histovl.errors import HistovlError
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


class SkippedInputsError(HistovlError, ValueError):
    """``--on-error skip`` left too little to evaluate; `skipped` lists each file and its reason
    (the command writes them to run.json before raising: docs/reliability.md, "skips")."""

    def __init__(self, message: str, skipped: dict[str, str]) -> None:
        super().__init__(message)
        self.skipped = dict(skipped)


def no_image_read(n: int, skipped: dict[str, str] | None = None) -> SkippedInputsError:
    """The error when every image was skipped as unreadable."""
    where = "; the reasons are listed in run.json" if skipped else "; see the skipped list for reasons"
    example = next(iter((skipped or {}).items()), None)
    first = f" (e.g. {example[0]}: {example[1]})" if example else ""
    return SkippedInputsError(f"no image of {n} could be read{first}{where}", skipped or {})


def kept_records(
    image_set: ImageSet,
    ok: np.ndarray,
    *,
    allow_missing_classes: bool = True,
    skipped: dict[str, str] | None = None,
) -> list[ImageRecord]:
    """The records of the images that were read (``ok`` is a mask over ``image_set.records``).

    With ``allow_missing_classes=False``, skips that leave a class with no image stop the run
    (`SkippedInputsError` naming the classes): metrics over fewer classes than the data holds
    would not be comparable, and AUROC and F1 would quietly cover different class sets.
    """
    kept = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
    if not allow_missing_classes and len(kept) < len(image_set.records):
        before = {c for r in image_set.records for c in r.label_set}
        after = {c for r in kept for c in r.label_set}
        emptied = sorted(before - after)
        if emptied:
            raise SkippedInputsError(
                f"--on-error skip left no image of class(es) {', '.join(emptied)} "
                f"({len(image_set.records) - len(kept)} image(s) skipped; reasons in run.json); fix or "
                "remove those files, or pass --allow-missing-classes to evaluate the other classes",
                skipped or {},
            )
    return kept


def checked_records(image_set: ImageSet, res: EmbeddingResult, allow_missing_classes: bool) -> list[ImageRecord]:
    """`kept_records` of an encoding result: `SkippedInputsError` when nothing was read, or when
    skips emptied a class without ``allow_missing_classes``."""
    skipped = {str(f.path): f.reason for f in res.failures}
    if len(res.ok) and not res.ok.any():
        raise no_image_read(len(res.ok), skipped)
    return kept_records(image_set, res.ok, allow_missing_classes=allow_missing_classes, skipped=skipped)


def write_failed_run(
    out: Any, err: SkippedInputsError, *, command: str, config: dict[str, Any], prompt_set: Any, image_set: ImageSet, seed: int
) -> None:
    """run.json alone, with the error and every skipped file's reason, as `out`'s new contents
    (staged like any output folder), so a run that could not evaluate still says why."""
    from histovl._io import atomic_write_json
    from histovl.outputs_guard import staged_folder
    from histovl.reports import build_run_record

    record = build_run_record(
        command=command, config=config, models=[], prompt_set=prompt_set, seed=seed,
        inputs=[str(p) for p in image_set.paths],
        skipped=[{"path": p, "reason": r} for p, r in err.skipped.items()],
        extra={"status": "failed", "error": str(err)},
    )
    with staged_folder(out) as stage:
        atomic_write_json(stage / "run.json", record)


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

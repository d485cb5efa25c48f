"""`StainAlignParams`: every hyper-parameter of `HistoStainAlign` in one frozen value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("auto", "two-stage", "joint")
THRESHOLDS = ("train", "none")


@dataclass(frozen=True)
class StainAlignParams:
    """Hyper-parameters (all of `HistoStainAlign.__init__`; defaults as in docs/stainalign.md)."""

    align: bool = True
    """False is the paper's baseline: classification loss only, the IHC branch unused."""
    schedule: str = "auto"
    """``two-stage``: align, then a logistic regression on the frozen H&E embedding;
    ``joint``: classification and alignment losses together; ``auto``: two-stage when some pairs
    are unlabelled, joint otherwise (the better of the two in each case on the planted benchmark,
    docs/stainalign.md)."""
    hidden_dim: int = 128
    """Width of the attention-MIL pooling (per stain)."""
    attention_dim: int = 64
    projection_dim: int = 64
    """Dimension of the shared, L2-normalised H&E/IHC slide space."""
    temperature: float = 0.1
    """Of the symmetric InfoNCE alignment loss."""
    align_weight: float = 1.0
    logit_scale: float = 10.0
    """The classifier reads the unit-length H&E embedding times this (a cosine classifier)."""
    head_c: float = 30.0
    """Inverse L2 strength of the two-stage logistic-regression head (scikit-learn's ``C``)."""
    dropout: float = 0.1
    """In the attention-MIL pooling while training."""
    epochs: int = 60
    batch_size: int = 16
    """Paired slides per training step (the global batch under torchrun)."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_tiles: int = 512
    """Tiles sampled per bag and step when a bag is larger."""
    class_weight: str | None = "balanced"
    standardize: bool = True
    """Standardise each tile feature with the training tiles' mean and standard deviation."""
    threshold: str = "train"
    """``train``: binary decision threshold chosen on the training pairs; ``none``: argmax."""
    num_threads: int | None = 1
    """torch threads while training and predicting (None: leave as is; see `torch_threads`)."""
    random_state: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, not {self.threshold!r}")
        if self.logit_scale <= 0 or self.head_c <= 0:
            raise ValueError("logit_scale and head_c must be positive")

    @classmethod
    def coerce(cls, params: StainAlignParams | Mapping[str, Any] | None, **changes: Any) -> StainAlignParams:
        """`params` (a `StainAlignParams`, a partial mapping of its fields, or None for the
        defaults) with `changes` applied; an unknown name is a `TypeError` naming it."""
        base = asdict(params) if isinstance(params, StainAlignParams) else dict(params or {})
        merged = {**base, **changes}
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown HistoStainAlign parameter(s): {sorted(unknown)}")
        return cls(**merged)


def resolve_schedule(schedule: str, has_unlabelled: bool) -> str:
    """The schedule ``auto`` stands for: two-stage with unlabelled pairs, joint without."""
    if schedule != "auto":
        return schedule
    return "two-stage" if has_unlabelled else "joint"

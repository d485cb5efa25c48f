"""What the training loop feeds on: towers split into backbone + projection, and cached features.

When a tower's backbone is frozen its output never changes, so encoding every image once and
training the heads on the cached features gives the same gradients as running the backbone each
step, at a fraction of the cost (measured in docs/model_card_histovl_lite.md). Families opt in by
implementing `SplitTowers` (histovl-lite does); others train through `encode_image`/`encode_text`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histovl._io import atomic_path
from histovl.embed.engine import encode_batch_with_backoff
from histovl.errors import ImageReadError, NonFiniteError
from histovl.models.encoder import Encoder
from histovl.models.preprocess import Preprocess
from histovl.options import OnError

GROUPS = ("image", "text", "image_projection", "text_projection", "logit_scale")
log = logging.getLogger(__name__)


@runtime_checkable
class SplitTowers(Protocol):
    """An encoder whose towers split into a backbone and a projection head."""

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def project_image(self, features: torch.Tensor) -> torch.Tensor: ...

    def text_features(self, texts: Sequence[str]) -> torch.Tensor: ...

    def project_text(self, features: torch.Tensor) -> torch.Tensor: ...


def parameter_groups(encoder: Encoder) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: image/text backbone, image/text projection, logit scale.

    Families may define ``trainable_groups()``; otherwise open_clip naming is assumed
    (``visual.*``, ``visual.proj``, ``text_projection``, ``logit_scale``).
    """
    custom = getattr(encoder, "trainable_groups", None)
    if callable(custom):
        groups: dict[str, list[nn.Parameter]] = custom()
        return groups
    groups = {g: [] for g in GROUPS}
    for name, param in encoder.named_parameters():
        short = name.removeprefix("model.")
        if short.endswith(("logit_scale", "logit_bias")):
            groups["logit_scale"].append(param)
        elif short == "visual.proj" or short.startswith(("visual.head", "visual.proj.")):
            groups["image_projection"].append(param)
        elif short.startswith(("text_projection", "text.proj")):
            groups["text_projection"].append(param)
        elif short.startswith("visual."):
            groups["image"].append(param)
        else:
            groups["text"].append(param)
    return groups


def log_logit_scale_parameter(encoder: Encoder) -> nn.Parameter:
    """The stored log inverse temperature the losses learn."""
    for name, param in encoder.named_parameters():
        if name.endswith("logit_scale"):
            return param
    raise ValueError(f"{type(encoder).__name__} has no logit_scale parameter to train")


class _ImageDataset(Dataset[torch.Tensor]):
    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from histovl.data import read_rgb

        return self.preprocess(read_rgb(self.paths[index]))


def image_loader(paths: Sequence[Path], preprocess: Preprocess, batch_size: int, num_workers: int) -> DataLoader[torch.Tensor]:
    """Batches of preprocessed pixels in path order (decode in workers when num_workers > 0)."""
    return DataLoader(_ImageDataset(paths, preprocess), batch_size=batch_size, shuffle=False, num_workers=num_workers)


class _CheckedDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Like `_ImageDataset`, but a decode failure comes back as a reason instead of an exception.

    Raising inside a DataLoader worker loses the exception's type and file name; returning the
    reason lets the main process raise `ImageReadError` naming the file, or skip it.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        from histovl.data import read_rgb

        try:
            return index, self.preprocess(read_rgb(self.paths[index])), ""
        except ImageReadError as err:
            return index, None, err.reason
        except (OSError, ValueError, SyntaxError) as err:  # decoder faults Pillow lets through
            return index, None, f"{type(err).__name__}: {err}"


def _collate_checked(
    batch: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in batch if x is not None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, [(i, r) for i, x, r in batch if x is None]


def _checked_batches(
    paths: Sequence[Path], preprocess: Preprocess, batch_size: int, num_workers: int, on_error: OnError
) -> DataLoader[Any]:
    return DataLoader(
        _CheckedDataset(paths, preprocess), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate_checked,
    )


def unreadable_images(
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    on_error: OnError = "skip",
) -> dict[int, str]:
    """Index -> reason for every path that cannot be decoded and preprocessed (one pass, no model).

    With ``on_error="raise"`` the first such path raises `ImageReadError` naming it instead.
    """
    failures: dict[int, str] = {}
    for _, _, bad in _checked_batches(paths, preprocess, batch_size, num_workers, on_error):
        for i, reason in bad:
            if on_error == "raise":
                raise ImageReadError(paths[i], reason)
            failures[i] = reason
    return failures


def _backbone_key(encoder: Encoder) -> str:
    """Identity of the image backbone and its preprocessing (what a cached feature depends on)."""
    parts = [type(encoder).__name__, encoder.card.architecture, encoder.card.preprocessing_key()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _file_key(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class ImageFeatures:
    """Backbone features of a list of paths.

    Attributes:
        features: float32 [N, F] in path order; the rows of `failures` are zeros.
        failures: index -> reason for each path skipped under ``on_error="skip"``.
        batch_size_used: the forward batch size after any out-of-memory back-off (0 when every
            feature came from the cache).
    """

    features: torch.Tensor
    failures: dict[int, str] = field(default_factory=dict)
    batch_size_used: int = 0


def extract_image_features(
    encoder: SplitTowers,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    on_error: OnError = "raise",
) -> ImageFeatures:
    """Backbone features of `paths`, reusing and extending a per-file cache in `cache_dir`.

    Each cached row is keyed by the file's resolved path, size and modification time, and the
    cache file by the backbone identity and preprocessing, so edited images or another backbone
    never reuse stale features, while any subset of already-seen files costs nothing.
    Only backbones that training leaves frozen are cached.

    An unreadable (or missing) file raises `ImageReadError` naming it, or under
    ``on_error="skip"`` is listed in `failures` (never cached). A batch that runs out of memory
    is halved down to 1 (`histovl.embed.engine.encode_batch_with_backoff`, logged).
    """
    if not isinstance(encoder, Encoder):
        raise TypeError("extract_image_features needs an Encoder that implements SplitTowers")
    failures: dict[int, str] = {}
    keys = _file_keys(paths, on_error, failures)
    target = Path(cache_dir) / f"image-features-{_backbone_key(encoder)}.pt" if cache_dir is not None else None
    known: dict[str, torch.Tensor] = {}
    if target is not None and target.is_file():
        stored = torch.load(target, map_location="cpu", weights_only=True)
        known = dict(zip(stored["keys"], stored["features"], strict=True))
    todo = [i for i, k in enumerate(keys) if k is not None and k not in known]
    used = 0
    if todo:
        new, used = _compute_features(encoder, [paths[i] for i in todo], batch_size, num_workers, on_error)
        failures.update({todo[j]: reason for j, reason in new.failures.items()})
        known.update({cast(str, keys[todo[j]]): f for j, f in new.rows.items()})
        if target is not None and new.rows:
            all_keys = list(known)
            with atomic_path(target, suffix=".pt") as tmp:
                torch.save({"keys": all_keys, "features": torch.stack([known[k] for k in all_keys])}, tmp)
    width = next((known[k].shape[-1] for k in keys if k is not None and k in known), 0)
    zero = torch.zeros(width)
    rows = [zero if (k is None or i in failures) else known[k] for i, k in enumerate(keys)]
    out = torch.stack(rows) if rows else torch.zeros(0, width)
    return ImageFeatures(out, dict(sorted(failures.items())), used)


def _file_keys(paths: Sequence[Path], on_error: OnError, failures: dict[int, str]) -> list[str | None]:
    """The cache key of each file; a file that cannot be stat-ed raises, or is recorded in `failures`."""
    keys: list[str | None] = []
    for i, p in enumerate(paths):
        try:
            keys.append(_file_key(p))
        except OSError as err:
            reason = "file not found" if isinstance(err, FileNotFoundError) else str(err)
            if on_error == "raise":
                raise ImageReadError(p, reason) from None
            keys.append(None)
            failures[i] = reason
    return keys


@dataclass
class _Computed:
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def _compute_features(
    encoder: SplitTowers, paths: Sequence[Path], batch_size: int, num_workers: int, on_error: OnError
) -> tuple[_Computed, int]:
    """Backbone features of `paths` (index -> row, index -> reason), and the batch size that fit."""
    done, used = _Computed(), batch_size
    with torch.inference_mode():
        for local, pixels, bad in _checked_batches(paths, cast(Encoder, encoder).preprocess, batch_size, num_workers, on_error):
            for j, reason in bad:
                if on_error == "raise":
                    raise ImageReadError(paths[j], reason)
                done.failures[j] = reason
            if pixels is None:
                continue
            feats, used = encode_batch_with_backoff(encoder.image_features, pixels, used)
            feats = feats.float().cpu()
            if not torch.isfinite(feats).all():
                bad_row = int((~torch.isfinite(feats).all(dim=1)).nonzero()[0])
                raise NonFiniteError(f"the image backbone produced NaN/Inf for {paths[local[bad_row]]}")
            done.rows.update(zip(local, feats, strict=True))
    if used < batch_size:
        log.info("backbone features computed with batch size %d (out-of-memory back-off from %d)", used, batch_size)
    return done, used


def backbone_text_features(encoder: SplitTowers, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Backbone features of `texts` (each distinct text once)."""
    unique = list(dict.fromkeys(texts))
    chunks = []
    with torch.inference_mode():
        for s in range(0, len(unique), batch_size):
            chunks.append(encoder.text_features(unique[s : s + batch_size]).float().cpu())
    feats = torch.cat(chunks)
    row = {t: i for i, t in enumerate(unique)}
    return feats[[row[t] for t in texts]]

"""What the training loop feeds on: towers split into backbone + projection, and cached features.

When a tower's backbone is frozen its output never changes, so encoding every image once and
training the heads on the cached features gives the same gradients as running the backbone each
step, at a fraction of the cost (measured in docs/model_card_histovl_lite.md). Families opt in by
implementing `SplitTowers` (histovl-lite does); others train through `encode_image`/`encode_text`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histovl._io import atomic_path
from histovl.errors import NonFiniteError
from histovl.models.encoder import Encoder
from histovl.models.preprocess import Preprocess

GROUPS = ("image", "text", "image_projection", "text_projection", "logit_scale")


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


def _backbone_key(encoder: Encoder) -> str:
    """Identity of the image backbone and its preprocessing (what a cached feature depends on)."""
    parts = [type(encoder).__name__, encoder.card.architecture, encoder.card.preprocessing_key()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _file_key(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def backbone_image_features(
    encoder: SplitTowers,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Backbone features [N, F] of `paths`, reusing and extending a per-file cache in `cache_dir`.

    Each cached row is keyed by the file's resolved path, size and modification time, and the
    cache file by the backbone identity and preprocessing, so edited images or another backbone
    never reuse stale features, while any subset of already-seen files costs nothing.
    Only backbones that training leaves frozen are cached.
    """
    if not isinstance(encoder, Encoder):
        raise TypeError("backbone_image_features needs an Encoder that implements SplitTowers")
    keys = [_file_key(p) for p in paths]
    known: dict[str, torch.Tensor] = {}
    target: Path | None = None
    if cache_dir is not None:
        target = Path(cache_dir) / f"image-features-{_backbone_key(encoder)}.pt"
        if target.is_file():
            stored = torch.load(target, map_location="cpu", weights_only=True)
            known = dict(zip(stored["keys"], stored["features"], strict=True))
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        chunks = []
        with torch.inference_mode():
            for pixels in image_loader([paths[i] for i in todo], encoder.preprocess, batch_size, num_workers):
                chunks.append(encoder.image_features(pixels).float().cpu())
        feats = torch.cat(chunks)
        if not torch.isfinite(feats).all():
            bad = paths[todo[int((~torch.isfinite(feats).all(dim=1)).nonzero()[0])]]
            raise NonFiniteError(f"the image backbone produced NaN/Inf for {bad}")
        known.update({keys[i]: f for i, f in zip(todo, feats, strict=True)})
        if target is not None:
            all_keys = list(known)
            with atomic_path(target, suffix=".pt") as tmp:
                torch.save({"keys": all_keys, "features": torch.stack([known[k] for k in all_keys])}, tmp)
    return torch.stack([known[k] for k in keys])


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

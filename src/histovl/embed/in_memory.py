"""Encode many corrupted views of one image set while decoding every file only once.

A robustness sweep encodes the same images under ~29 corruption levels. Re-reading and
re-decoding the files for each level (what `encode_images(..., transform=...)` does, and what
peers do) repeats the JPEG decode and resize 29 times; here each image is decoded once into its
model-sized, unnormalised tensor and kept in memory, and every level is corrupted from there in
batches.

Why uint8 in memory: the model-sized tensor comes from ``to_tensor`` on an 8-bit RGB image, so
its values are exactly ``k / 255`` and ``uint8 -> float32 / 255`` gives back the same bits
(checked per image at decode time; an image whose preprocessing yields other values keeps the
whole bank in float32). That is 4× less memory (4,500 tiles at 224 px: 0.68 GB instead of 2.7 GB)
with no change to any embedding.

The results equal `encode_images` with the same transform and seed, and are cached in the same
`EmbeddingCache` namespace under the same content keys, so the two paths share work and an
interrupted sweep resumes from whatever either path already encoded.

Example:
    >>> bank = DecodedImages(paths, encoder.preprocess)  # doctest: +SKIP
    >>> clean = encode_decoded(encoder, bank, cache=EmbeddingCache("cache"))  # doctest: +SKIP
    >>> blurred = encode_decoded(encoder, bank, transform=get_corruption("blur").transform(3))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from histovl._stopwatch import phase
from histovl.embed.cache import CacheNamespace, EmbeddingCache, content_keys
from histovl.embed.engine import (
    ImageTransform,
    OnError,
    default_num_workers,
    encode_pixels,
    seed_for_key,
)
from histovl.embed.fill import (
    CacheFill,
    EmbeddingResult,
    Failure,
    cache_namespace,
    raise_first_failure,
    unreadable_inputs,
)
from histovl.embed.progress import progress_bar
from histovl.errors import ImageReadError

if TYPE_CHECKING:  # torch is imported on the first decode: a fully cached sweep never imports it
    import torch

    from histovl.models.encoder import Encoder
    from histovl.models.preprocess import Preprocess


class DecodedImages:
    """The model-sized, unnormalised pixels of an image set, decoded lazily and once.

    Content keys are computed at construction (cheap: file hashing); the decode itself happens on
    the first call that needs pixels, so a sweep whose embeddings are all cached never decodes.

    Args:
        paths: image files.
        preprocess: the model's `Preprocess` (resize + crop); models with equal preprocessing can
            share one `DecodedImages`.
        keys: content keys if already computed (`histovl.embed.cache.content_keys`).
        on_error: ``"raise"``: an unreadable file raises `ImageReadError` naming it; ``"skip"``:
            it is recorded in `failures` and left out of every result.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        preprocess: Preprocess,
        *,
        keys: Sequence[str | None] | None = None,
        on_error: OnError = "raise",
        num_workers: int | None = None,
        decode_batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.preprocess = preprocess
        self.keys: list[str | None] = list(keys) if keys is not None else content_keys(self.paths)
        if len(self.keys) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.keys)} content keys")
        self.on_error = on_error
        self.num_workers = num_workers
        self.decode_batch_size = decode_batch_size
        self.progress = progress
        self.failures: dict[int, str] = unreadable_inputs(self.keys)
        raise_first_failure(self.paths, self.failures, on_error)
        self._pixels: torch.Tensor | None = None
        self._row = np.full(len(self.paths), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def decoded(self) -> bool:
        return self._pixels is not None

    @property
    def pixels(self) -> torch.Tensor:
        """[n_decoded, 3, S, S] uint8 (or float32 if not lossless), decoding on first use."""
        self.decode()
        assert self._pixels is not None
        return self._pixels

    @property
    def nbytes(self) -> int:
        """Memory held by the pixels (0 before decoding)."""
        return 0 if self._pixels is None else self._pixels.numel() * self._pixels.element_size()

    def readable(self) -> np.ndarray:
        """Bool mask: not (yet) known to be unreadable."""
        mask = np.ones(len(self.paths), dtype=bool)
        mask[list(self.failures)] = False
        return mask

    def decode(self) -> None:
        """Read and preprocess every readable file once (idempotent)."""
        if self._pixels is not None:
            return
        with phase("read_decode"):
            self._decode_all()

    def _decode_all(self) -> None:
        import torch
        from torch.utils.data import DataLoader

        from histovl.embed._decode_pixels import UnnormalisedDataset, keep_batch, one_thread

        todo = [i for i in range(len(self.paths)) if i not in self.failures]
        workers = default_num_workers(len(todo), self.decode_batch_size) if self.num_workers is None else self.num_workers
        loader: DataLoader[Any] = DataLoader(
            UnnormalisedDataset(self.paths, todo, self.preprocess), batch_size=self.decode_batch_size,
            num_workers=workers, collate_fn=keep_batch, worker_init_fn=one_thread if workers else None,
        )
        tensors: list[torch.Tensor] = []
        with progress_bar(total=len(todo), description="decoding images", enabled=self.progress) as bar:
            for batch in loader:
                for i, x, reason in batch:
                    if x is None:
                        if self.on_error == "raise":
                            raise ImageReadError(self.paths[i], reason)
                        self.failures[i] = reason
                        continue
                    self._row[i] = len(tensors)
                    tensors.append(x)
                bar.advance(len(batch))
        if not tensors:
            size = self.preprocess.image_size
            self._pixels = torch.zeros((0, 3, size, size), dtype=torch.uint8)
        elif all(t.dtype == torch.uint8 for t in tensors):
            self._pixels = torch.stack(tensors)
        else:
            self._pixels = torch.stack([t.to(torch.float32) / 255 if t.dtype == torch.uint8 else t for t in tensors])

    def float_pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """Float32 [len(indices), 3, S, S] in [0, 1] for the given (decoded) path indices."""
        import torch

        rows = self._row[np.asarray(indices, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError("asked for pixels of images that did not decode")
        x = self.pixels[torch.from_numpy(rows)]
        return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x.clone()

    def failure_list(self) -> list[Failure]:
        return [Failure(self.paths[i], r) for i, r in sorted(self.failures.items())]


def corrupt_batch(
    pixels: torch.Tensor, transform: ImageTransform | None, seeds: Sequence[int]
) -> torch.Tensor:
    """Apply `transform` to a float batch (batched when it offers ``apply_batch``), clamped."""
    import torch

    if transform is None:
        return pixels
    apply_batch = getattr(transform, "apply_batch", None)
    if apply_batch is not None:
        out: torch.Tensor = apply_batch(pixels, seeds)
    else:
        out = torch.stack([transform(x, s) for x, s in zip(pixels, seeds, strict=True)])
    return out.clamp_(0.0, 1.0)


def encode_cached(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    keys: Sequence[str | None],
    *,
    transform: ImageTransform | None = None,
    cache: EmbeddingCache | CacheNamespace | None = None,
    on_error: OnError = "raise",
    batch_size: int = 64,
) -> EmbeddingResult | None:
    """What `encode_decoded` returns for these images when every readable one is in the cache,
    without decoding anything nor needing the model's preprocessing (so no torch); None when
    any row is missing (then decode and encode with `encode_decoded`)."""
    if cache is None:
        return None
    fill = CacheFill([os.fspath(p) for p in paths], keys, cache_namespace(encoder, cache, transform), on_error=on_error)
    if fill.missing():
        return None
    return fill.result(batch_size_used=batch_size)


def encode_decoded(
    encoder: Encoder,
    images: DecodedImages,
    *,
    transform: ImageTransform | None = None,
    cache: EmbeddingCache | CacheNamespace | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> EmbeddingResult:
    """Encode the decoded images (optionally transformed), reusing and filling the cache.

    Same contract and same numbers as `histovl.embed.encode_images` with the same `transform`,
    `seed` and `batch_size`: cached rows are reused, the rest are corrupted in batches from the
    in-memory pixels, normalised and encoded; nothing is decoded when every row is cached.
    """
    if images.preprocess != encoder.preprocess:
        raise ValueError(
            f"these images were decoded for preprocessing {images.preprocess}, but the model "
            f"{encoder.card.name} expects {encoder.preprocess}; decode them again for this model"
        )
    fill = CacheFill(images.paths, images.keys, cache_namespace(encoder, cache, transform),
                     on_error=images.on_error, failures=images.failures)
    if fill.missing():
        images.decode()  # nothing is decoded when every row is cached
        fill.failures.update(images.failures)
    todo = fill.missing()
    used = batch_size
    with fill.flushing(), progress_bar(total=len(todo), description="encoding", enabled=progress and bool(todo)) as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            seeds = [seed_for_key(images.keys[i], seed) for i in idx]
            pixels = encoder.preprocess.normalise(corrupt_batch(images.float_pixels(idx), transform, seeds))
            emb, used = encode_pixels(encoder, pixels, used)
            fill.store(idx, emb)
            bar.advance(len(idx))
    return fill.result(batch_size_used=used)

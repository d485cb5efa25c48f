"""The encoding engine: decode in worker processes, batch, encode, check, cache.

The model forward is already near this machine's arithmetic limit (docs/performance.md), so the
engine wins by never encoding an image twice (content-keyed cache) and by keeping the model busy
(decode + preprocess run in DataLoader workers while the main process encodes).

torch is imported only when something has to be decoded or encoded (`histovl.embed._decode`):
a job served entirely from the cache hashes the files, reads the cache and returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histovl._stopwatch import phase
from histovl.embed.cache import CacheNamespace, EmbeddingCache, cache_for, content_keys
from histovl.embed.fill import CacheFill, EmbeddingResult, cache_namespace
from histovl.embed.progress import progress_bar
from histovl.embed.transform import ImageTransform
from histovl.options import OnError, RunOptions

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from histovl.models.encoder import Encoder

log = logging.getLogger(__name__)


def seed_for_key(key: str | None, base_seed: int) -> int:
    """Per-image seed from its content key: the same image always gets the same corruption."""
    k = int(key[:8], 16) if key else 0
    return (k ^ (base_seed * 0x9E3779B1)) & 0x7FFFFFFF


def default_num_workers(n_items: int, batch_size: int) -> int:
    """0 for tiny jobs (worker start-up would dominate), else up to cores-1 (min 1)."""
    if n_items <= batch_size:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def encode_batch_with_backoff(
    encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, int]:
    """Encode `pixels` in chunks of `batch_size`, halving the chunk on out-of-memory down to 1.

    Returns the features and the chunk size that worked (reported to the user).
    """
    import torch

    size = max(1, min(batch_size, len(pixels)))
    while True:
        try:
            outs = [encode(pixels[s : s + size]) for s in range(0, len(pixels), size)]
            return torch.cat(outs), size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            log.warning("out of memory: retrying with batch size %d", size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def encode_images(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    *,
    cache: EmbeddingCache | CacheNamespace | None = None,
    transform: ImageTransform | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: OnError = "raise",
    progress: bool = True,
    seed: int = 0,
) -> EmbeddingResult:
    """Encode image files into L2-normalised embeddings, reusing and filling the cache.

    Args:
        encoder: any histovl `Encoder`; its card's preprocessing is applied.
        paths: image files.
        cache: an `EmbeddingCache` (the namespace is derived from the encoder and transform) or a
            namespace; None disables caching.
        transform: optional `ImageTransform` (e.g. a corruption) applied before normalisation.
        on_error: ``"raise"`` stops at the first unreadable image with `ImageReadError` naming it
            (after saving every embedding computed so far to the cache); ``"skip"`` records it in
            `failures` and goes on.
        seed: base seed for per-image transform randomness.

    Example:
        >>> res = encode_images(load_model("histovl-lite"), ["a.png", "b.png"])  # doctest: +SKIP
        >>> res.embeddings.shape  # doctest: +SKIP
        (2, 512)
    """
    str_paths = [os.fspath(p) for p in paths]
    ns = cache_namespace(encoder, cache, transform)
    # Content keys address the cache and seed a transform; without either, no file is hashed.
    with phase("read_decode"):
        keys = content_keys(str_paths) if (ns is not None or transform is not None) else None
    fill = CacheFill(str_paths, keys, ns, on_error=on_error)
    todo = fill.missing()
    if not todo:
        return fill.result(batch_size_used=batch_size)
    loader = _decode_loader(encoder, fill, todo, transform, batch_size=batch_size, num_workers=num_workers, seed=seed)
    with fill.flushing():
        used = _encode_loop(encoder, loader, fill, progress)
    return fill.result(batch_size_used=used)


def encode_with_options(
    encoder: Encoder, paths: Sequence[str | os.PathLike[str]], options: RunOptions, *, transform: ImageTransform | None = None
) -> EmbeddingResult:
    """`encode_images` as a command runs it: cache, batch size, decode workers, on_error, progress
    and seed from the command's `RunOptions` (the cache opened by `cache_for`)."""
    return encode_images(
        encoder, paths, cache=cache_for(options), transform=transform, batch_size=options.batch_size,
        num_workers=options.workers, on_error=options.on_error, progress=options.progress, seed=options.seed,
    )


def encode_pixels(encoder: Encoder, pixels: torch.Tensor, batch_size: int) -> tuple[np.ndarray, int]:
    """Normalised pixels -> float32 embeddings (no autograd, OOM back-off); also the batch size used."""
    import torch

    with phase("model"), torch.inference_mode():
        feats, used = encode_batch_with_backoff(encoder.encode_image, pixels, batch_size)
    return feats.cpu().numpy().astype(np.float32, copy=False), used


def _decode_loader(
    encoder: Encoder, fill: CacheFill, todo: list[int], transform: ImageTransform | None,
    *, batch_size: int, num_workers: int | None, seed: int,
) -> DataLoader[Any]:
    """Batches of the `todo` images, decoded (and transformed) in worker processes."""
    from torch.utils.data import DataLoader

    from histovl.embed._decode import DecodeDataset, collate, worker_init

    seeds = [seed_for_key(fill.keys[i], seed) for i in todo]
    ds = DecodeDataset(fill.paths, todo, encoder.preprocess, transform, seeds)
    workers = default_num_workers(len(todo), batch_size) if num_workers is None else num_workers
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=False,
    )


def _encode_loop(encoder: Encoder, loader: DataLoader[Any], fill: CacheFill, progress: bool) -> int:
    """Encode every batch the loader decodes into `fill`; returns the batch size that worked."""
    used = loader.batch_size or 1
    with progress_bar(total=len(fill), completed=fill.n_cached, description="encoding images", enabled=progress) as bar:
        batches: Iterator[Any] = iter(loader)
        while True:
            with phase("read_decode"):  # waiting for the decode workers
                batch = next(batches, None)
            if batch is None:
                break
            idx, pixels, bad = batch
            for i, reason in bad:
                fill.fail(i, reason)
            if pixels is not None:
                emb, used = encode_pixels(encoder, pixels, used)
                fill.store(idx, emb)
            bar.advance(len(idx) + len(bad))
    return used


def as_paths(items: Sequence[str | Path]) -> list[str]:
    """Normalise a list of paths to strings (helper for callers holding `Path`s)."""
    return [os.fspath(p) for p in items]

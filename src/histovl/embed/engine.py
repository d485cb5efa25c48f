"""The encoding engine: decode in worker processes, batch, encode, check, cache.

The model forward is already near this machine's arithmetic limit (PERFORMANCE.md), so the
engine wins by never encoding an image twice (content-keyed cache) and by keeping the model busy
(decode + preprocess run in DataLoader workers while the main process encodes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histovl.embed.cache import CacheNamespace, EmbeddingCache, content_keys
from histovl.embed.progress import progress_bar
from histovl.errors import ImageReadError, NonFiniteError
from histovl.models.encoder import Encoder
from histovl.models.preprocess import Preprocess
from histovl.options import OnError

log = logging.getLogger(__name__)


class ImageTransform(Protocol):
    """A deterministic change applied to the model-sized image before normalisation.

    `key` names it (e.g. ``blur:3``) and becomes part of the cache namespace; `__call__` takes a
    float tensor [3, S, S] in [0, 1] plus a per-image seed and returns the same shape and range.
    Working on the model-sized tensor makes a corruption independent of the source image size.
    """

    @property
    def key(self) -> str: ...

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor: ...


@dataclass
class Failure:
    """One input that produced no embedding, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class EmbeddingResult:
    """Embeddings for the inputs that decoded, in input order.

    Attributes:
        embeddings: float32 [n_ok, D], L2-normalised.
        ok: bool mask over the inputs; `embeddings[i]` belongs to the i-th True entry.
        failures: inputs skipped under ``on_error="skip"``, with reasons.
        n_cached / n_encoded: how many came from the cache / were encoded now.
        batch_size_used: the batch size after any out-of-memory back-off.
    """

    embeddings: np.ndarray
    ok: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    n_cached: int = 0
    n_encoded: int = 0
    batch_size_used: int = 0


def _read_rgb(path: str) -> Any:
    # Imported lazily: keeps `embed` importable while `data` evolves, and workers import it once.
    from histovl.data import read_rgb

    return read_rgb(path)


def seed_for_key(key: str | None, base_seed: int) -> int:
    """Per-image seed from its content key: the same image always gets the same corruption."""
    k = int(key[:8], 16) if key else 0
    return (k ^ (base_seed * 0x9E3779B1)) & 0x7FFFFFFF


class _DecodeDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Reads, converts to RGB, preprocesses (and transforms) one image; errors are returned."""

    def __init__(
        self,
        paths: Sequence[str],
        indices: Sequence[int],
        preprocess: Preprocess,
        transform: ImageTransform | None,
        seeds: Sequence[int],
    ) -> None:
        self.paths, self.indices, self.preprocess = paths, indices, preprocess
        self.transform, self.seeds = transform, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str]:
        i = self.indices[j]
        try:
            img = _read_rgb(self.paths[i])
            x = self.preprocess.to_unnormalised(img)
            if self.transform is not None:
                x = self.transform(x, self.seeds[j]).clamp_(0.0, 1.0)
            return i, self.preprocess.normalise(x), ""
        except ImageReadError as err:
            return i, None, err.reason
        except (OSError, ValueError, SyntaxError) as err:  # decoder faults Pillow lets through
            return i, None, f"{type(err).__name__}: {err}"


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, r) for i, x, r in batch if x is None]
    idx = [i for i, _ in good]
    pixels = torch.stack([x for _, x in good]) if good else None
    return idx, pixels, bad


def _worker_init(_: int) -> None:
    # One thread per decode worker: the model in the main process owns the cores' BLAS threads.
    torch.set_num_threads(1)


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


def check_finite(emb: np.ndarray, paths: Sequence[str]) -> None:
    """Raise `NonFiniteError` naming the first item whose embedding has NaN/Inf."""
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"the model produced NaN/Inf for {int(bad.sum())} image(s), first: {paths[first]}; "
            "check the weights (e.g. a fp16 checkpoint run in fp32 overflow) and the input image"
        )


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
    n = len(str_paths)
    tf_key = transform.key if transform is not None else "none"
    ns: CacheNamespace | None
    if isinstance(cache, EmbeddingCache):
        ns = cache.namespace(
            weights_id=encoder.weights_id,
            preprocessing=encoder.card.preprocessing_key(),
            transform=tf_key,
            meta={"model": encoder.card.name},
        )
    else:
        ns = cache

    keys: list[str | None] = content_keys(str_paths) if (ns is not None or transform is not None) else [None] * n
    out: list[np.ndarray | None] = [None] * n
    failures: dict[int, str] = {}
    n_cached = 0
    if ns is not None:
        hit, rows = ns.get(keys)
        for hit_index, row in zip(np.flatnonzero(hit), rows, strict=True):
            out[int(hit_index)] = row
        n_cached = int(hit.sum())
    for i, k in enumerate(keys):
        if (ns is not None or transform is not None) and k is None:
            failures[i] = "file missing or unreadable"
    todo = [i for i in range(n) if out[i] is None and i not in failures]
    if failures and on_error == "raise":
        first = min(failures)
        raise ImageReadError(str_paths[first], failures[first])

    used = batch_size
    if todo:
        seeds = [seed_for_key(keys[i], seed) for i in todo]
        ds = _DecodeDataset(str_paths, todo, encoder.preprocess, transform, seeds)
        workers = default_num_workers(len(todo), batch_size) if num_workers is None else num_workers
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
            worker_init_fn=_worker_init if workers else None,
            persistent_workers=False,
        )
        try:
            used = _encode_loop(encoder, loader, str_paths, keys, out, failures, ns, on_error, progress, n_cached, n)
        finally:
            if ns is not None:
                ns.flush()  # whatever finished is kept, also on error or Ctrl-C

    ok = np.array([o is not None for o in out], dtype=bool)
    rows_ok = [o for o in out if o is not None]
    dim = rows_ok[0].shape[0] if rows_ok else 0
    emb = np.stack(rows_ok).astype(np.float32, copy=False) if rows_ok else np.zeros((0, dim), np.float32)
    return EmbeddingResult(
        embeddings=emb,
        ok=ok,
        failures=[Failure(str_paths[i], r) for i, r in sorted(failures.items())],
        n_cached=n_cached,
        n_encoded=len(todo) - sum(1 for i in todo if i in failures),
        batch_size_used=used,
    )


def _encode_loop(
    encoder: Encoder,
    loader: DataLoader[Any],
    paths: list[str],
    keys: list[str | None],
    out: list[np.ndarray | None],
    failures: dict[int, str],
    ns: CacheNamespace | None,
    on_error: OnError,
    progress: bool,
    n_done: int,
    n_total: int,
) -> int:
    used = loader.batch_size or 1
    with progress_bar(total=n_total, completed=n_done, description="encoding images", enabled=progress) as bar:
        batches: Iterator[Any] = iter(loader)
        for idx, pixels, bad in batches:
            for i, reason in bad:
                if on_error == "raise":
                    raise ImageReadError(paths[i], reason)
                failures[i] = reason
            if pixels is not None:
                with torch.inference_mode():
                    feats, used = encode_batch_with_backoff(encoder.encode_image, pixels, used)
                emb = feats.cpu().numpy().astype(np.float32, copy=False)
                check_finite(emb, [paths[i] for i in idx])
                for row, i in zip(emb, idx, strict=True):
                    out[i] = row
                if ns is not None:
                    ks = [keys[i] for i in idx]
                    ns.put([k for k in ks if k is not None], emb[[k is not None for k in ks]])
            bar.advance(len(idx) + len(bad))
    return used


def as_paths(items: Sequence[str | Path]) -> list[str]:
    """Normalise a list of paths to strings (helper for callers holding `Path`s)."""
    return [os.fspath(p) for p in items]

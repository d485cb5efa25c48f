"""Filling an encoding job from the cache: one helper for every engine.

The local engine (`histovl.embed.engine`), the in-memory corruption path
(`histovl.embed.in_memory`) and the Ray engine (`histovl.embed.ray_engine`) differ only in how
they turn files into features. What they share is here, written once: the cache namespace for an
encoder and transform, the lookup of every content key before any decoding, the bookkeeping of
unreadable inputs, storing each encoded batch (checked for NaN/Inf, committed to the cache before
the next batch starts), and stacking the rows into an `EmbeddingResult` in input order.

Example:
    >>> fill = CacheFill(paths, content_keys(paths), cache_namespace(enc, EmbeddingCache("c"), None))  # doctest: +SKIP
    >>> with fill.flushing():  # doctest: +SKIP
    ...     fill.store(fill.missing(), features)
    >>> fill.result(batch_size_used=64).embeddings.shape  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from histovl.embed.cache import CacheNamespace, EmbeddingCache
from histovl.errors import ImageReadError, NonFiniteError
from histovl.options import OnError

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

#: The reason recorded for an input whose bytes could not be read (so it has no content key).
UNREADABLE = "file missing or unreadable"


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


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


def check_finite(emb: np.ndarray, paths: Sequence[str]) -> None:
    """Raise `NonFiniteError` naming the first item whose embedding has NaN/Inf."""
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"the model produced NaN/Inf for {int(bad.sum())} image(s), first: {paths[first]}; "
            "check the weights (e.g. a fp16 checkpoint run in fp32 overflow) and the input image"
        )


def cache_namespace(
    encoder: Encoder, cache: EmbeddingCache | CacheNamespace | None, transform: _Keyed | None
) -> CacheNamespace | None:
    """The namespace of this encoder and image transform in `cache` (a namespace is used as it
    is; None: no cache). Every engine derives it here, so they read and fill the same entries."""
    if not isinstance(cache, EmbeddingCache):
        return cache
    return cache.namespace(
        weights_id=encoder.weights_id,
        preprocessing=encoder.card.preprocessing_key(),
        transform=transform.key if transform is not None else "none",
        meta={"model": encoder.card.name},
    )


def unreadable_inputs(keys: Sequence[str | None]) -> dict[int, str]:
    """Input index -> reason, for every input whose content key could not be computed."""
    return {i: UNREADABLE for i, k in enumerate(keys) if k is None}


def raise_first_failure(paths: Sequence[str], failures: Mapping[int, str], on_error: OnError) -> None:
    """Under ``on_error="raise"``: `ImageReadError` for the first failed input, if any."""
    if failures and on_error == "raise":
        first = min(failures)
        raise ImageReadError(paths[first], failures[first])


class CacheFill:
    """The rows of one encoding job: cache hits first, then every encoded batch as it arrives.

    Args:
        paths: the inputs, in order.
        keys: their content keys (`histovl.embed.cache.content_keys`); None when the job needs
            none (no cache and no seeded transform): then no input counts as unreadable up front.
        ns: the cache namespace to read and fill; None disables caching.
        on_error: ``"raise"`` turns the first unreadable input (here or in `fail`) into
            `ImageReadError`; ``"skip"`` records it in `failures`.
        failures: inputs already known to have failed (kept, with their reasons).
    """

    def __init__(
        self,
        paths: Sequence[str],
        keys: Sequence[str | None] | None,
        ns: CacheNamespace | None,
        *,
        on_error: OnError = "raise",
        failures: Mapping[int, str] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.keys: list[str | None] = list(keys) if keys is not None else [None] * len(self.paths)
        self.ns = ns
        self.on_error = on_error
        self.rows: list[np.ndarray | None] = [None] * len(self.paths)
        self.failures: dict[int, str] = dict(failures or {})
        self.n_cached = 0
        self.n_encoded = 0
        if ns is not None:
            hit, rows = ns.get(self.keys)
            for hit_index, row in zip(np.flatnonzero(hit), rows, strict=True):
                self.rows[int(hit_index)] = row
            self.n_cached = int(hit.sum())
        if keys is not None:
            self.failures.update(unreadable_inputs(self.keys))
        raise_first_failure(self.paths, self.failures, on_error)

    def __len__(self) -> int:
        return len(self.paths)

    def missing(self) -> list[int]:
        """Indices still to encode: not from the cache, not failed."""
        return [i for i, row in enumerate(self.rows) if row is None and i not in self.failures]

    def fail(self, i: int, reason: str) -> None:
        """Input `i` could not be decoded: raise (``on_error="raise"``) or record it."""
        if self.on_error == "raise":
            raise ImageReadError(self.paths[i], reason)
        self.failures[i] = reason

    def store(self, indices: Sequence[int], embeddings: np.ndarray) -> None:
        """Keep the embeddings of inputs `indices` (after a NaN/Inf check) and add them to the cache
        (committed before this returns: a run killed later keeps this batch)."""
        check_finite(embeddings, [self.paths[i] for i in indices])
        for row, i in zip(embeddings, indices, strict=True):
            self.rows[i] = row
        self.n_encoded += len(indices)
        if self.ns is not None and len(indices):
            keys = [self.keys[i] for i in indices]
            self.ns.put([k for k in keys if k is not None], embeddings[[k is not None for k in keys]])

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """Close the block with the cache flushed: every batch is already committed by `store`, so
        whatever finished is kept, also on an error, Ctrl-C, SIGTERM or SIGKILL, and the next run
        resumes from there."""
        try:
            yield
        finally:
            if self.ns is not None:
                self.ns.flush()

    def result(self, *, batch_size_used: int) -> EmbeddingResult:
        """The rows stacked in input order, with the failures and counts."""
        ok = np.array([row is not None for row in self.rows], dtype=bool)
        rows_ok = [row for row in self.rows if row is not None]
        dim = rows_ok[0].shape[0] if rows_ok else 0
        emb = np.stack(rows_ok).astype(np.float32, copy=False) if rows_ok else np.zeros((0, dim), np.float32)
        return EmbeddingResult(
            embeddings=emb,
            ok=ok,
            failures=[Failure(self.paths[i], r) for i, r in sorted(self.failures.items())],
            n_cached=self.n_cached,
            n_encoded=self.n_encoded,
            batch_size_used=batch_size_used,
        )

"""Prompt embeddings through the cache: each exact prompt text is encoded once per model.

Prompts are cached like images, in their own namespace of the embedding cache: keyed by the
weights id, the tokenizer and context length (what turns a text into tokens), and the sha256 of
the exact prompt text. Editing one prompt of a prompt set therefore re-encodes that prompt only,
and a run whose prompts are all cached never needs the text tower, nor the model.

Only the `EmbeddingCache` namespace API is used (``namespace``, ``get``, ``put``, ``flush``),
so the texts follow the cache's storage wherever it goes.

Example:
    >>> emb = encode_texts(encoder, ["an H&E image of lung adenocarcinoma."], cache=EmbeddingCache("c"))  # doctest: +SKIP
    >>> emb.shape  # doctest: +SKIP
    (1, 256)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from types import EllipsisType
from typing import TYPE_CHECKING

import numpy as np

from histovl._stopwatch import phase
from histovl.embed.cache import CacheNamespace, EmbeddingCache
from histovl.embed.prompt_tokens import TOKENS_TRANSFORM, note_long_prompts
from histovl.errors import NonFiniteError

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

TEXT_BATCH = 256
#: The namespace transform of prompt embeddings (image namespaces use an image transform's key).
TEXT_TRANSFORM = "text"


def prompt_key(text: str) -> str:
    """The cache key of one exact prompt text."""
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_namespace(encoder: Encoder, cache: EmbeddingCache, transform: str = TEXT_TRANSFORM) -> CacheNamespace:
    """The namespace of `encoder`'s prompt embeddings (or, with `TOKENS_TRANSFORM`, of their
    token counts): weights id, tokenizer, context length."""
    card = encoder.card
    return cache.namespace(
        weights_id=encoder.weights_id,
        preprocessing=f"tokenizer={card.tokenizer}|context={card.context_length}",
        transform=transform,
        meta={"model": card.name, "kind": transform},
    )


def encode_texts(
    encoder: Encoder, texts: Sequence[str], *, cache: EmbeddingCache | None | EllipsisType = ..., batch_size: int = TEXT_BATCH
) -> np.ndarray:
    """L2-normalised float32 embeddings [len(texts), D] of `texts`, each distinct text encoded once,
    cached ones read from `cache` (default: the encoder's ``text_cache``, set by
    `histovl.embed.open_encoder`; None: no cache)."""
    if cache is ...:
        cache = getattr(encoder, "text_cache", None)
    unique = list(dict.fromkeys(texts))
    if unique:  # prompts cut to the context: one warning per run, counted in run.json
        tokens_ns = text_namespace(encoder, cache, TOKENS_TRANSFORM) if isinstance(cache, EmbeddingCache) else None
        note_long_prompts(encoder, unique, tokens_ns, prompt_key)
    rows: dict[str, np.ndarray] = {}
    ns = text_namespace(encoder, cache) if isinstance(cache, EmbeddingCache) else None
    if ns is not None and unique:
        hit, found = ns.get([prompt_key(t) for t in unique])
        rows.update(zip([t for t, h in zip(unique, hit, strict=True) if h], found, strict=True))
    missing = [t for t in unique if t not in rows]
    if missing:
        emb = _encode_with_model(encoder, missing, batch_size)
        rows.update(zip(missing, emb, strict=True))
        if ns is not None:
            ns.put([prompt_key(t) for t in missing], emb)
            ns.flush()
    if not texts:
        return np.zeros((0, encoder.card.embed_dim), np.float32)
    return np.stack([rows[t] for t in texts]).astype(np.float32, copy=False)


def _encode_with_model(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """Run the text tower (this is where torch and the model are needed)."""
    import torch

    chunks = []
    with phase("model"), torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            chunks.append(encoder.encode_text(texts[s : s + batch_size]).float().cpu().numpy())
    emb = np.concatenate(chunks).astype(np.float32, copy=False)
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        raise NonFiniteError(f"the text tower produced NaN/Inf for prompt {texts[int(np.flatnonzero(~finite)[0])]!r}")
    return emb

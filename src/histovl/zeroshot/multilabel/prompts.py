"""Subset prompts for the power-set and top-k strategies, and a memo that encodes each once.

A label subset S is described by one prompt per template: the first description of every class
in S, listed comma-separated in the prompt set's class order, put through the template
(``"an H&E image of {}."`` -> ``"an H&E image of tumour, stroma."``). The subset's text embedding
is the normalised mean over templates, exactly like a class embedding in the text classifier.
The empty subset is scored by the prompt set's ``negative`` prompt (used as is, not templated).

Using the prompt set's class order (not the image's ranking, as the paper's Fig. 5 does) makes a
top-k prefix the same prompt as the matching power-set subset, so both strategies share one memo
and top-k can never beat power-set on the same image (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from histovl.embed.text import encode_texts
from histovl.errors import HistovlError
from histovl.zeroshot.classifier import l2_normalise


class TextEncoderLike(Protocol):
    """What the memo needs from a model: `histovl.models.Encoder` satisfies it."""

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> Any: ...


class TextEmbeddingMemo:
    """Encodes each distinct prompt once and remembers it (across images, chunks and calls).

    The encoder's own `encode_text` already cuts causal text towers to the longest prompt in the
    batch, so the memo only has to avoid repeats. Prompts go through the encoder's prompt cache
    (`histovl.embed.text.encode_texts`), so a re-run reads them instead of loading the model.
    `n_encoded` counts distinct prompts embedded (by the model or from that cache), `n_requested`
    every prompt asked for: their ratio is the saving. Embeddings are NumPy float32 (no torch
    unless the model has to encode a prompt).

    Example:
        >>> from tests.helpers.tiny import tiny_encoder  # doctest: +SKIP
        >>> memo = TextEmbeddingMemo(tiny_encoder())  # doctest: +SKIP
        >>> memo.encode(["a", "b", "a"]).shape, memo.n_encoded  # doctest: +SKIP
        ((3, 32), 2)
    """

    def __init__(self, encoder: TextEncoderLike, *, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self._store: dict[str, np.ndarray] = {}
        self.n_encoded = 0
        self.n_requested = 0

    def __len__(self) -> int:
        return len(self._store)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings [len(texts), D] on the CPU, in the order given."""
        texts = list(texts)
        self.n_requested += len(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            emb = encode_texts(self.encoder, batch, batch_size=self.batch_size)  # type: ignore[arg-type]
            emb = np.asarray(emb, dtype=np.float32)
            finite = np.isfinite(emb).all(axis=1)
            if not finite.all():
                bad = batch[int(np.flatnonzero(~finite)[0])]
                raise HistovlError(f"the text encoder returned NaN/Inf for prompt {bad!r}")
            for text, row in zip(batch, emb, strict=True):
                self._store[text] = row
            self.n_encoded += len(batch)
        if not texts:
            raise ValueError("no prompts to encode")
        return np.stack([self._store[t] for t in texts])


def apply_template(template: str, text: str) -> str:
    """Put `text` into `template` at ``{}`` (``str.replace``, so other braces are left alone)."""
    return template.replace("{}", text) if "{}" in template else f"{template} {text}"


def subset_prompt_texts(
    members: Sequence[int], descriptions: Sequence[str], templates: Sequence[str]
) -> list[str]:
    """The prompts (one per template) describing the non-empty subset `members`."""
    if not members:
        raise ValueError("the empty subset has no templated prompt; it uses the negative prompt")
    listed = ", ".join(descriptions[i] for i in sorted(members))
    return [apply_template(t, listed) for t in templates]


def subset_masks_from_codes(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Bit codes (bit c set = class c in the subset) -> boolean masks [len(codes), n_labels]."""
    codes = np.asarray(codes, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_labels, dtype=np.int64)) & 1).astype(bool)


def embed_subsets(
    memo: TextEmbeddingMemo,
    masks: np.ndarray,
    descriptions: Sequence[str],
    templates: Sequence[str],
    negative: str,
) -> np.ndarray:
    """Float32 text embeddings [K, D] for subset masks [K, C]; an all-False row gets the negative prompt.

    Non-empty subsets: mean over templates of the subset prompts, then L2-normalised (the paper's
    eq. 2 applied to a subset). All prompts of the chunk go to the memo in one call so the model
    sees full batches.
    """
    if not templates:
        raise ValueError("the prompt set has no templates")
    n_templates = len(templates)
    texts: list[str] = []
    for row in np.asarray(masks, dtype=bool):
        members = np.flatnonzero(row).tolist()
        texts.extend(subset_prompt_texts(members, descriptions, templates) if members else [negative] * n_templates)
    emb = memo.encode(texts).reshape(len(masks), n_templates, -1).mean(axis=1)  # float32, as before
    return l2_normalise(emb)

"""Prompts longer than the text tower's context: counted, cached, and noted for the run.

`note_long_prompts` gives each prompt's token count (`Encoder.text_token_counts`) to
`histovl._prompt_cuts.note_cut`, which warns once per run and feeds run.json's ``prompts_cut``.
The counts are kept in the embedding cache beside the prompt embeddings (their own namespace,
keyed like them by weights id, tokenizer, context length and exact text), so a fully cached run
still warns without loading the model or its tokenizer. docs/reliability.md, "long prompt".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from histovl._prompt_cuts import note_cut

if TYPE_CHECKING:
    from histovl.embed.cache import CacheNamespace

#: The namespace transform of prompt token counts (one row per prompt: [tokens, context]).
TOKENS_TRANSFORM = "text-tokens"
_UNKNOWN = -1.0


def note_long_prompts(encoder: Any, texts: Sequence[str], ns: CacheNamespace | None, key: Callable[[str], str]) -> None:
    """Note the distinct `texts` that `encoder`'s tokenizer cuts to its context (see module doc).

    Args:
        ns: the cache namespace of the counts (`histovl.embed.text.text_namespace` with
            `TOKENS_TRANSFORM`), or None without a cache.
        key: the cache key of a text (`histovl.embed.text.prompt_key`).
    """
    unique = list(dict.fromkeys(texts))
    if not unique:
        return
    rows: dict[str, tuple[float, float]] = {}
    if ns is not None:
        hit, found = ns.get([key(t) for t in unique])
        rows.update(zip([t for t, h in zip(unique, hit, strict=True) if h], map(tuple, found.tolist()), strict=True))
    missing = [t for t in unique if t not in rows]
    if missing:
        counted = _count(encoder, missing)
        rows.update(zip(missing, counted, strict=True))
        if ns is not None:
            ns.put([key(t) for t in missing], np.asarray(counted, dtype=np.float32).reshape(len(missing), 2))
    known = [(t, int(n), int(c)) for t, (n, c) in rows.items() if n != _UNKNOWN]
    for context in sorted({c for _, _, c in known}):
        group = [(t, n) for t, n, c in known if c == context]
        note_cut(encoder.card.name, [t for t, _ in group], [n for _, n in group], context)


def _count(encoder: Any, texts: list[str]) -> list[tuple[float, float]]:
    counter = getattr(encoder, "text_token_counts", None)  # a LazyEncoder loads its model here
    result = counter(texts) if callable(counter) else None
    if result is None:  # a tokenizer we cannot ask: recorded as unknown, so it is not asked again
        return [(_UNKNOWN, _UNKNOWN)] * len(texts)
    counts, context = result
    return [(float(n), float(context)) for n in counts]

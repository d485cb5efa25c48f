"""How many tokens a text has before its tokenizer cuts it to the text tower's context.

`token_counts` knows the tokenizers histovl's families use: a `transformers` tokenizer (HF CLIP,
histovl-lite's MiniLM, open_clip's `HFTokenizer` and SigLIP tokenizers through their
``.tokenizer``), open_clip's CLIP BPE (`SimpleTokenizer`) and CONCH's (`ConchTokenizer`, whose
tower reads one token less than its context). Special tokens are counted, as the tower sees them.
Used to warn about prompts cut to the context (`histovl._prompt_cuts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_counts(tokenizer: Any, texts: Sequence[str], context_length: int) -> tuple[list[int], int] | None:
    """(tokens of each text before truncation, the most the tower reads), or None for a tokenizer
    this function does not know."""
    if tokenizer is None:
        return None
    inner = getattr(tokenizer, "_tok", None)
    if inner is not None and hasattr(tokenizer, "context_length"):  # CONCH: max_length = context - 1
        return _hf_counts(inner, texts), int(tokenizer.context_length) - 1
    if _is_hf(tokenizer):
        return _hf_counts(tokenizer, texts), int(context_length)
    limit = int(getattr(tokenizer, "context_length", None) or context_length)
    if _is_hf(getattr(tokenizer, "tokenizer", None)):  # open_clip HFTokenizer / SigLIP
        return _hf_counts(tokenizer.tokenizer, texts), limit
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return [_bpe_count(tokenizer, t, limit) for t in texts], limit
    return None


def _is_hf(tokenizer: Any) -> bool:
    return tokenizer is not None and hasattr(tokenizer, "model_max_length") and callable(tokenizer)


def _hf_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def _bpe_count(tokenizer: Any, text: str, limit: int) -> int:
    """Tokens with start and end of text; a short ASCII text is counted by its length (an upper
    bound: a byte-level BPE token covers at least one ASCII character), skipping the BPE."""
    if text.isascii() and len(text) + 2 <= limit:
        return len(text) + 2
    return len(tokenizer.encode(text)) + 2

"""Prompts cut to the text tower's context: noted while encoding, warned once, kept for run.json.

A text tower reads at most its context length of tokens (77 for CLIP); a longer prompt is cut
to it by the tokenizer, so its end changes nothing. `histovl.embed.text.encode_texts` notes each
prompt it finds too long (`note_cut`); the first time a run meets such prompts it warns once
(`PromptCutWarning`, one line: how many, the context length, the longest), and
`histovl.reports.build_run_record` records them under ``prompts_cut`` (`cuts_record`).
docs/reliability.md, "long prompt".

A run is the block inside `collecting()` (the CLI opens one around every command); outside any,
a process-wide log collects until a run record reads it (`cuts_record` then starts it afresh),
so library calls made one run after another each record their own.

This module imports nothing from histovl, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

#: Characters of each cut prompt shown in run.json (the first few prompts only).
EXAMPLE_CHARS = 80
N_EXAMPLES = 3


class PromptCutWarning(UserWarning):
    """Prompts longer than the text tower's context were cut to it."""


@dataclass
class CutLog:
    """Prompts cut during one run: sha256 of the text -> (model, tokens, context length, text head)."""

    cuts: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_CURRENT: ContextVar[CutLog | None] = ContextVar("histovl_prompt_cuts", default=None)
_PROCESS = [CutLog()]


def current() -> CutLog:
    """The log of the run in progress (the process-wide one outside `collecting`)."""
    return _CURRENT.get() or _PROCESS[0]


@contextmanager
def collecting() -> Iterator[CutLog]:
    """A fresh log for the code run inside the block (one run)."""
    log = CutLog()
    token = _CURRENT.set(log)
    try:
        yield log
    finally:
        _CURRENT.reset(token)


def note_cut(model: str, texts: Sequence[str], tokens: Sequence[int], context: int) -> None:
    """Note the `texts` whose token count exceeds `context`; warn once per run about new ones."""
    cut = [(t, n) for t, n in zip(texts, tokens, strict=True) if n > context]
    if not cut:
        return
    log = current()
    with log.lock:
        new = []
        for text, n in cut:
            key = hashlib.sha256(text.encode("utf-8")).hexdigest()
            log.cuts.setdefault(key, (model, int(n), int(context), text[:EXAMPLE_CHARS]))
            if key not in log.warned:
                log.warned.add(key)
                new.append(n)
        first = len(log.warned) == len(new)
    if new:
        again = "" if first else " more"
        warnings.warn(PromptCutWarning(
            f"{len(new)}{again} prompt(s) longer than the text context of {model} ({context} tokens) were cut "
            f"to it (longest: {max(new)} tokens); words past the limit change nothing. Shorten them; the "
            "count is in run.json under prompts_cut"), stacklevel=2)


def cuts_record() -> dict[str, Any] | None:
    """What run.json records under ``prompts_cut`` (None: no prompt was cut)."""
    log = current()
    if log is _PROCESS[0]:
        _PROCESS[0] = CutLog()  # outside a run block: this record closes the run
    with log.lock:
        cuts = list(log.cuts.values())
    if not cuts:
        return None
    by_model: dict[str, dict[str, Any]] = {}
    for model, n, context, head in cuts:
        entry = by_model.setdefault(model, {"n_prompts_cut": 0, "context_length": context, "longest_tokens": 0,
                                            "examples": []})
        entry["n_prompts_cut"] += 1
        entry["longest_tokens"] = max(entry["longest_tokens"], n)
        if len(entry["examples"]) < N_EXAMPLES:
            entry["examples"].append(head + ("…" if len(head) == EXAMPLE_CHARS else ""))
    return {"n_prompts_cut": len(cuts), "models": by_model}

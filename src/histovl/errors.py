"""Error types users can catch. Messages always say what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HistovlError(Exception):
    """Base class for errors histovl raises about the user's input or environment."""


class UnknownNameError(HistovlError, KeyError):
    """A registry lookup failed (model, prompt set, corruption, loss, ...)."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ImageReadError(HistovlError):
    """An image file could not be decoded. `path` names the file."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


class NonFiniteError(HistovlError, ValueError):
    """NaN or Inf appeared in embeddings, logits or a loss."""


class UntrustedCheckpointError(HistovlError):
    """A pickle-based checkpoint was given without the explicit trust flag."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to `n` candidates that look like `name` (for "did you mean" hints)."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A " Did you mean ...?" suffix, or "" when nothing is close."""
    hits = close_matches(name, candidates)
    return f" Did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""

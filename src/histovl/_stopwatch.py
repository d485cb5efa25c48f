"""Where a run's time goes: read/decode, model forward, model loading, and the rest.

A `Stopwatch` is installed for one run with `running()` (``histovl bench`` does so around each
cell); the engine marks its phases with `phase(name)`. With no stopwatch installed, `phase` costs
one context-variable lookup and nothing is measured, so commands run as before.

Phases (exclusive: time in a phase nested inside another counts only for the inner one):

* ``read_decode``: hashing the image files for the cache (reading their bytes) and waiting for
  decoded batches. Decoding runs in DataLoader worker processes, overlapped with the model, so
  this is the time the main process *waited* for decoded images (with ``workers=0``, the whole
  decode time);
* ``model``: image and text forward passes (`histovl.embed.engine.encode_pixels`, the text tower);
* ``model_load``: building the model and reading its weights;
* the rest: everything else (data set checks, cache lookups, heads, metrics, bootstrap, reports,
  writing files).

Example:
    >>> with running() as sw:
    ...     with phase("model"):
    ...         pass
    >>> sorted(sw.split())
    ['model_load_s', 'model_s', 'other_s', 'read_decode_s', 'total_s']
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

PHASES = ("read_decode", "model", "model_load")

_CURRENT: ContextVar[Stopwatch | None] = ContextVar("histovl_stopwatch", default=None)


class Stopwatch:
    """Seconds per phase of one run (exclusive of nested phases), and the run's total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[str] = []
        self._start = time.perf_counter()
        self._stop: float | None = None

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def stop(self) -> None:
        self._stop = time.perf_counter()

    @property
    def total(self) -> float:
        return (self._stop if self._stop is not None else time.perf_counter()) - self._start

    def split(self) -> dict[str, float]:
        """``total_s``, ``read_decode_s``, ``model_s``, ``model_load_s`` and ``other_s`` (the
        total less read/decode and model; model loading is part of it), rounded to ms."""
        total = self.total
        read, model, load = (self.seconds.get(p, 0.0) for p in PHASES)
        return {"total_s": round(total, 3), "read_decode_s": round(read, 3), "model_s": round(model, 3),
                "model_load_s": round(load, 3), "other_s": round(max(0.0, total - read - model), 3)}


@contextmanager
def running(stopwatch: Stopwatch | None = None) -> Iterator[Stopwatch]:
    """Install `stopwatch` (a new one by default) for the code run inside the block."""
    sw = stopwatch or Stopwatch()
    token = _CURRENT.set(sw)
    try:
        yield sw
    finally:
        sw.stop()
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's time for phase `name` in the installed stopwatch (no-op without one)."""
    sw = _CURRENT.get()
    if sw is None:
        yield
        return
    stack = sw._stack
    stack.append(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        stack.pop()
        sw.add(name, elapsed)
        if stack:  # exclusive time: the enclosing phase does not count this block again
            sw.add(stack[-1], -elapsed)

"""Counting model loads in tests: the way to assert that a run did (or did not) load a model."""

from __future__ import annotations

import pytest


def count_model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch `histovl.models.loading.load_model` to record each spec it loads (and still load it);
    returns the list it appends to."""
    from histovl.models import loading

    calls: list[str] = []
    real = loading.load_model

    def counting(spec, **kw):  # type: ignore[no-untyped-def]
        calls.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model", counting)
    return calls

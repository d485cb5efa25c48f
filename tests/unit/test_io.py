"""Atomic writes give the permissions of an ordinary open(): 0o666 minus the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from histovl._io import atomic_path, atomic_write_json, atomic_write_text, current_umask
from histovl.embed.cache import EmbeddingCache


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask_like_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        atomic_write_json(tmp_path / "atomic.json", {"a": 1})
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    expected = _mode(tmp_path / "plain.txt")
    assert expected == 0o666 & ~mask
    for name in ("atomic.txt", "atomic.json", "w.bin"):
        assert _mode(tmp_path / name) == expected, name


def test_replacing_a_file_keeps_it_atomic_and_group_readable(tmp_path, umask_022):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2})
    assert target.read_text().strip().endswith("}") and '"v": 2' in target.read_text()
    assert _mode(target) & stat.S_IRGRP and _mode(target) & stat.S_IROTH
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp file left behind"


def test_cache_store_is_group_readable(tmp_path, umask_022):
    ns = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    ns.put(["k"], np.ones((1, 4), np.float32))
    ns.flush()
    assert _mode(ns.directory / "index.sqlite") == 0o644
    assert _mode(ns.directory / "meta.json") == 0o644

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from histovl.embed.cache import EmbeddingCache, file_content_key, namespace_key


def test_namespace_key_changes_with_every_input():
    base = dict(weights_id="w", preprocessing="p", transform="none")
    k = namespace_key(**base)
    for field, other in [("weights_id", "w2"), ("preprocessing", "p2"), ("transform", "blur:1")]:
        assert namespace_key(**{**base, field: other}) != k


def test_put_flush_reload_roundtrip(tmp_path: Path):
    cache = EmbeddingCache(tmp_path)
    ns = cache.namespace(weights_id="w", preprocessing="p")
    emb = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    ns.put([f"k{i}" for i in range(5)], emb)
    ns.flush()
    again = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    hit, rows = again.get(["k3", "missing", "k0", None])
    assert hit.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(rows, emb[[3, 0]])
    assert not list(tmp_path.rglob("*.tmp"))


def test_put_is_on_disk_before_flush_and_stray_files_are_ignored(tmp_path: Path):
    ns = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    ns.put(["a"], np.ones((1, 4), np.float32))  # committed: no flush needed
    # A format-1 writer killed mid-write left only a temp file (never named shard-*.npz) ...
    (ns.directory / ".shard-x.npz.123.npz").write_bytes(b"\x00garbage")
    # ... and a damaged format-1 shard is quarantined rather than crashing the next run.
    (ns.directory / "shard-broken.npz").write_bytes(b"not a zip")
    fresh = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    assert "a" in fresh and len(fresh) == 1
    assert (ns.directory / "quarantine" / "shard-broken.npz").is_file()


def _writer(root: str, start: int) -> None:
    ns = EmbeddingCache(root).namespace(weights_id="w", preprocessing="p")
    ns.flush_every = 7
    for i in range(start, start + 50):
        ns.put([f"k{i}"], np.full((1, 4), i, np.float32))
    ns.flush()


def test_two_processes_writing_one_namespace(tmp_path: Path):
    ctx = mp.get_context("fork")  # the child needs only numpy; fork starts in milliseconds
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 25)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ns = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    assert len(ns) == 75
    hit, rows = ns.get([f"k{i}" for i in range(75)])
    assert hit.all()
    np.testing.assert_array_equal(rows[:, 0], np.arange(75, dtype=np.float32))
    ns.compact()
    assert not list(ns.directory.glob("shard-*.npz")) and (ns.directory / "index.sqlite").is_file()
    assert len(EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")) == 75


def test_content_key_depends_on_bytes_not_name(tmp_path: Path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"other")
    assert file_content_key(a) == file_content_key(b) != file_content_key(c)

"""`histovl cache info | verify | prune | compact` through the CLI (and the library functions)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from histovl import cache_compact, cache_info, cache_prune
from histovl.cli.app import app
from histovl.embed import EmbeddingCache


def _cache(root: Path) -> None:
    cache = EmbeddingCache(root)
    for weights, n in (("sha256:aaaa-vit-b-32", 30), ("sha256:bbbb-conch", 5)):
        ns = cache.namespace(weights_id=weights, preprocessing="p", transform="none", meta={"model": weights[-8:]})
        for s in range(0, n, 4):
            m = min(4, n - s)
            ns.put([f"{weights}-{i}" for i in range(s, s + m)], np.full((m, 16), s, np.float32))
        ns.store.end_segment()  # as a process ending: the next call writes a segment of its own
        ns.close()


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["cache", *args], env={"COLUMNS": "250"})
    return r.exit_code, r.output


def test_info_lists_each_namespace_with_its_model_size_and_entries(tmp_path: Path) -> None:
    _cache(tmp_path)
    code, out = _run("info", "--cache", str(tmp_path))
    assert code == 0, out
    assert "sha256:aaaa-vit-b-32" in out and "sha256:bbbb-conch" in out and "2 namespace(s)" in out
    code, out = _run("info", "--cache", str(tmp_path), "--json")
    rows = {r["weights_id"]: r for r in json.loads(out)}
    assert rows["sha256:aaaa-vit-b-32"]["entries"] == 30 and rows["sha256:bbbb-conch"]["entries"] == 5
    assert rows["sha256:bbbb-conch"]["dim"] == 16 and rows["sha256:bbbb-conch"]["transform"] == "none"
    assert all(r["size_bytes"] > 0 and r["last_used"] > time.time() - 600 for r in rows.values())


def test_verify_is_ok_then_names_the_damaged_segment_and_exits_2(tmp_path: Path) -> None:
    _cache(tmp_path)
    code, out = _run("verify", "--cache", str(tmp_path))
    assert code == 0 and "35 record(s)" in out and "ok" in out
    seg = sorted(tmp_path.glob("*/seg-*.f32"))[0]
    data = bytearray(seg.read_bytes())
    data[70] ^= 1
    seg.write_bytes(bytes(data))
    code, out = _run("verify", "--cache", str(tmp_path))
    assert code == 2 and "index.sqlite" in out and "CRC-32" in out and "--repair" in out
    code, out = _run("verify", "--cache", str(tmp_path), "--repair")
    assert code == 2 and "quarantined" in out
    assert _run("verify", "--cache", str(tmp_path))[0] == 0
    assert sum(r.entries or 0 for r in cache_info(tmp_path)) == 34


def test_prune_by_model_and_by_age_with_dry_run(tmp_path: Path) -> None:
    _cache(tmp_path)
    code, out = _run("prune", "--cache", str(tmp_path), "--model", "*conch*", "--dry-run")
    assert code == 0 and "would remove 1 namespace(s)" in out and len(cache_info(tmp_path)) == 2
    code, out = _run("prune", "--cache", str(tmp_path), "--model", "*conch*")
    assert code == 0 and "removed 1 namespace(s)" in out
    assert [r.weights_id for r in cache_info(tmp_path)] == ["sha256:aaaa-vit-b-32"]
    assert cache_prune(tmp_path, older_than="30d") == []  # used just now
    old = time.time() - 40 * 86400
    for stamp in tmp_path.glob("*/last-used"):
        os.utime(stamp, (old, old))
    assert [r.weights_id for r in cache_prune(tmp_path, older_than="30d")] == ["sha256:aaaa-vit-b-32"]
    assert cache_info(tmp_path) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]
    code, out = _run("prune", "--cache", str(tmp_path))
    assert code != 0


def test_compact_merges_segments_and_keeps_every_entry(tmp_path: Path) -> None:
    for _ in range(3):  # three "processes", three segments
        _cache(tmp_path)
    assert len(list(tmp_path.glob("*/seg-*.f32"))) == 6
    code, out = _run("compact", "--cache", str(tmp_path))
    assert code == 0 and "MB ->" in out
    assert len(list(tmp_path.glob("*/seg-*.f32"))) == 2
    assert sorted(r.entries or 0 for r in cache_info(tmp_path)) == [5, 30]
    assert cache_compact(tmp_path) and _run("verify", "--cache", str(tmp_path))[0] == 0

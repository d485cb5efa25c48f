"""The embedding store (`histovl.embed.store`): damage is detected, named, quarantined and
re-encoded; concurrent writers and a reader agree with one writer; format-1 caches migrate;
compaction keeps every entry (docs/reliability.md, "embedding cache")."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from histovl.embed import EmbeddingCache, encode_images
from histovl.embed.cache import namespace_key
from histovl.embed.store import INDEX_FILE, digest, segment_name
from histovl.errors import HistovlError

NS = dict(weights_id="w", preprocessing="p")


def _vec(i: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=dim).astype(np.float32)
    v[0] = i
    return v


def _fill(root: Path, ids: range, batch: int = 5) -> None:
    ns = EmbeddingCache(root).namespace(**NS)
    for s in range(ids.start, ids.stop, batch):
        part = range(s, min(s + batch, ids.stop))
        ns.put([f"k{i}" for i in part], np.stack([_vec(i) for i in part]))
    ns.store.end_segment()  # as a process ending: the next fill writes a segment of its own
    ns.close()


def _all(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    return EmbeddingCache(root).namespace(**NS).get([f"k{i}" for i in range(n)])


def _segments(root: Path) -> list[Path]:
    return sorted(root.glob("*/seg-*.f32"))


def test_lookups_read_only_the_keys_asked_for_and_rows_are_exact(tmp_path: Path) -> None:
    _fill(tmp_path, range(40))
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    hit, rows = ns.get(["k7", "nope", "k39", None, "k7"])
    assert hit.tolist() == [True, False, True, False, True]
    np.testing.assert_array_equal(rows, np.stack([_vec(7), _vec(39), _vec(7)]))
    assert len(ns) == 40 and "k0" in ns and "k40" not in ns
    ns.put(["k0"], np.zeros((1, 8), np.float32))  # a key already there keeps its first row
    np.testing.assert_array_equal(ns.get(["k0"])[1][0], _vec(0))


def test_a_bit_flip_in_a_segment_is_named_quarantined_and_re_encoded(tiny_clip, class_folder: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    paths = sorted(class_folder.rglob("*.png"))
    cache = EmbeddingCache(tmp_path / "c")
    first = encode_images(tiny_clip, paths, cache=cache, batch_size=4, num_workers=0, progress=False)
    seg = _segments(tmp_path / "c")[0]
    data = bytearray(seg.read_bytes())
    data[5 * 32 * 4 + 9] ^= 0x10  # one bit of row 5
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="histovl"):
        again = encode_images(tiny_clip, paths, cache=cache, batch_size=4, num_workers=0, progress=False)
    assert again.n_encoded == 1 and again.n_cached == 11
    np.testing.assert_allclose(again.embeddings, first.embeddings, atol=1e-6)
    warned = [r.getMessage() for r in caplog.records if "CRC-32" in r.getMessage()]
    assert len(warned) == 1 and seg.name in warned[0]
    third = encode_images(tiny_clip, paths, cache=cache, batch_size=4, num_workers=0, progress=False)
    assert third.n_encoded == 0


def test_a_truncated_segment_is_named_moved_aside_and_its_keys_are_misses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _fill(tmp_path, range(10))
    _fill(tmp_path, range(10, 20))  # a second process's segment
    first, second = _segments(tmp_path)
    with open(second, "r+b") as fh:
        fh.truncate(second.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="histovl"):
        hit, _ = _all(tmp_path, 20)
    assert hit[:10].all() and not hit[10:].any()
    assert any(second.name in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert not second.exists() and (second.parent / "quarantine" / second.name).is_file() and first.exists()
    _fill(tmp_path, range(10, 20))  # recomputed
    assert _all(tmp_path, 20)[0].all()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_index_is_named_moved_aside_and_the_cache_starts_again(tmp_path: Path, damage: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    _fill(tmp_path, range(3000), batch=500)
    index = next(tmp_path.glob(f"*/{INDEX_FILE}"))
    assert not Path(str(index) + "-wal").exists()  # the last close folded the WAL in
    if damage == "truncate":
        with open(index, "r+b") as fh:
            fh.truncate(index.stat().st_size // 3)
    else:
        index.write_bytes(b"\x00" * 100 + index.read_bytes()[100:])
    with caplog.at_level(logging.WARNING, logger="histovl"):
        hit, _ = _all(tmp_path, 3000)
    assert not hit.all()
    assert any(INDEX_FILE in r.getMessage() for r in caplog.records)
    assert list((index.parent / "quarantine").rglob(INDEX_FILE + "*"))
    _fill(tmp_path, range(3000), batch=500)
    hit, rows = _all(tmp_path, 3000)
    assert hit.all() and (rows[:, 0] == np.arange(3000)).all()


def _writer(root: str, start: int, stop: int) -> None:
    _fill(Path(root), range(start, stop), batch=3)


def _reader(root: str, rounds: int, out: mp.Queue) -> None:
    seen = 0
    ns = EmbeddingCache(root).namespace(**NS)
    for _ in range(rounds):
        keys = [f"k{i}" for i in range(120)]
        hit, rows = ns.get(keys)
        expected = np.stack([_vec(i) for i, h in enumerate(hit) if h]) if hit.any() else rows
        if not np.array_equal(rows, expected):
            out.put(-1)
            return
        seen = max(seen, int(hit.sum()))
    out.put(seen)


@pytest.mark.parametrize("level0", [None, 3], ids=["default", "merge-every-put"])
def test_two_writers_and_a_reader_equal_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level0: int | None) -> None:
    if level0:  # the forked processes inherit it: every put merges level 0 into the main index
        monkeypatch.setattr("histovl.embed.store.LEVEL0_ROWS", level0)
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "two"), 0, 80)),
             ctx.Process(target=_writer, args=(str(tmp_path / "two"), 40, 120)),
             ctx.Process(target=_reader, args=(str(tmp_path / "two"), 40, queue))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert queue.get(timeout=5) >= 0, "the reader saw a row that is not its key's"
    _fill(tmp_path / "one", range(120))
    two, one = _all(tmp_path / "two", 120), _all(tmp_path / "one", 120)
    assert two[0].all() and one[0].all()
    np.testing.assert_array_equal(two[1], one[1])
    ns = EmbeddingCache(tmp_path / "two").namespace(**NS)
    ns.compact()
    assert len(_segments(tmp_path / "two")) == 1 and len(ns) == 120
    np.testing.assert_array_equal(_all(tmp_path / "two", 120)[1], one[1])


def _v1_namespace(root: Path, n_shards: int) -> Path:
    """A format-1 namespace as histovl <= 0.x wrote it: meta.json + shard-*.npz."""
    d = root / namespace_key(**NS, transform="none")
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"format_version": 1, "weights_id": "w", "preprocessing": "p", "transform": "none"}))
    for s in range(n_shards):
        ids = range(s * 10, s * 10 + 10)
        with open(d / f"shard-123-abc-{s:05d}.npz", "wb") as fh:
            np.savez(fh, keys=np.array([f"k{i}" for i in ids]), embeddings=np.stack([_vec(i) for i in ids]))
    return d


def test_a_format_1_namespace_is_migrated_once(tmp_path: Path) -> None:
    d = _v1_namespace(tmp_path, 3)
    hit, rows = _all(tmp_path, 30)
    assert hit.all() and (rows[:, 0] == np.arange(30)).all()
    assert not list(d.glob("shard-*.npz")) and (d / INDEX_FILE).is_file()
    assert json.loads((d / "meta.json").read_text())["store_format"] == 2


def test_a_format_1_namespace_with_a_corrupt_shard_keeps_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = _v1_namespace(tmp_path, 3)
    bad = d / "shard-123-abc-00001.npz"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # "Bad CRC-32" in format 1
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="histovl"):
        hit, _ = _all(tmp_path, 30)
    assert hit[:10].all() and not hit[10:20].any() and hit[20:].all()
    assert any(bad.name in r.getMessage() for r in caplog.records)
    assert (d / "quarantine" / bad.name).is_file() and not list(d.glob("shard-*.npz"))


def test_a_format_1_namespace_that_cannot_be_written_is_refused_saying_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _v1_namespace(tmp_path, 1)
    monkeypatch.setattr("histovl.embed.cache_v1.os.access", lambda *a: False)
    with pytest.raises(HistovlError, match="format-1 embedding cache.*write access"):
        EmbeddingCache(tmp_path).namespace(**NS)
    assert list(d.glob("shard-*.npz"))


def test_a_forked_child_gets_its_own_connection_and_segment(tmp_path: Path) -> None:
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    ns.put(["k0"], _vec(0)[None])
    pid = os.fork()
    if pid == 0:  # the child: inherits the parent's connection and segment, must not use them
        try:
            ns.put(["k1"], _vec(1)[None])
            os._exit(0 if ns.get(["k0", "k1"])[0].all() else 1)
        except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ns.put(["k2"], _vec(2)[None])
    assert _all(tmp_path, 3)[0].all() and len(_segments(tmp_path)) == 2
    assert segment_name(1) in {p.name for p in _segments(tmp_path)}


# ---- two levels: ``recent`` (level 0) merged into ``entries`` ---------------------------------------


def _level_rows(ns: object) -> dict[str, int]:
    conn = ns.store.conn()  # type: ignore[attr-defined]
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("entries", "recent")}


def test_puts_and_merges_equal_a_dict_and_lookups_read_both_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("histovl.embed.store.LEVEL0_ROWS", 32)
    rng = np.random.default_rng(0)
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    reference: dict[str, np.ndarray] = {}
    merges = 0
    for step in range(60):  # random batches, a third of their keys seen before (they keep their first row)
        ids = rng.choice(400, size=int(rng.integers(1, 12)), replace=False)
        rows = np.stack([_vec(int(i) + 1000 * step) for i in ids])
        before = _level_rows(ns)["entries"]
        ns.put([f"k{i}" for i in ids], rows)
        merges += _level_rows(ns)["entries"] > before
        for i, row in zip(ids, rows, strict=True):
            reference.setdefault(f"k{i}", row)
    levels = _level_rows(ns)
    assert merges >= 3 and levels["entries"] > 0 and levels["recent"] > 0
    keys = [f"k{i}" for i in range(420)]
    hit, rows = ns.get(keys)
    assert [k for k, h in zip(keys, hit, strict=True) if h] == [k for k in keys if k in reference]
    np.testing.assert_array_equal(rows, np.stack([reference[k] for k in keys if k in reference]))
    assert len(ns) == len(reference) <= sum(levels.values())  # a key put again after its merge is in both
    assert ns.store.merge() and _level_rows(ns)["recent"] == 0
    np.testing.assert_array_equal(ns.get(keys)[1], rows)


def test_a_key_in_both_levels_is_served_and_counted_once_with_its_first_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("histovl.embed.store.LEVEL0_ROWS", 1 << 18)  # merges only where the test asks
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    ns.put(["k0", "k1"], np.stack([_vec(0), _vec(1)]))
    assert ns.store.merge()
    ns.put(["k0", "k2"], np.stack([np.zeros(8, np.float32), _vec(2)]))  # k0 again, now into level 0
    assert _level_rows(ns) == {"entries": 2, "recent": 2}
    hit, rows = ns.get(["k0", "k1", "k2"])
    assert hit.all() and len(ns) == 3
    np.testing.assert_array_equal(rows, np.stack([_vec(0), _vec(1), _vec(2)]))
    assert ns.store.verify().n_checked == 3
    assert ns.store.merge() and _level_rows(ns) == {"entries": 3, "recent": 0}
    np.testing.assert_array_equal(ns.get(["k0", "k1", "k2"])[1], rows)


def test_verify_repair_compact_and_len_see_both_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("histovl.embed.store.LEVEL0_ROWS", 1 << 18)  # merges only where the test asks
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    ns.put([f"k{i}" for i in range(6)], np.stack([_vec(i) for i in range(6)]))
    ns.store.merge()
    ns.put([f"k{i}" for i in range(6, 10)], np.stack([_vec(i) for i in range(6, 10)]))
    ns.store.end_segment()
    assert _level_rows(ns) == {"entries": 6, "recent": 4} and len(ns) == 10
    seg = _segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    for row in (2, 8):  # one row indexed in each level
        data[row * 32 + 5] ^= 0x01
    seg.write_bytes(bytes(data))
    res = ns.store.verify(repair=True)
    assert res.n_checked == 10 and sorted(res.bad_keys) == sorted(digest(f"k{i}") for i in (2, 8))
    assert len(ns) == 8 and ns.store.count_quarantined() == 2 and ns.store.verify().ok
    ns.put(["k2", "k8"], np.stack([_vec(2), _vec(8)]))  # re-encoded
    ns.store.end_segment()
    ns.compact()
    assert len(_segments(tmp_path)) == 1 and len(ns) == 10 and _level_rows(ns)["recent"] == 0
    hit, rows = ns.get([f"k{i}" for i in range(10)])
    assert hit.all() and (rows[:, 0] == np.arange(10)).all()


def test_an_index_with_one_level_opens_gets_its_level_0_and_works(tmp_path: Path) -> None:
    _fill(tmp_path, range(20))
    index = next(tmp_path.glob(f"*/{INDEX_FILE}"))
    with sqlite3.connect(index) as conn:  # as written before the two levels
        conn.execute("INSERT INTO entries SELECT * FROM recent")
        conn.execute("DROP TABLE recent")
    ns = EmbeddingCache(tmp_path).namespace(**NS)
    assert len(ns) == 20 and _level_rows(ns)["recent"] == 0
    ns.put(["k20"], _vec(20)[None])
    hit, rows = _all(tmp_path, 21)
    assert hit.all() and (rows[:, 0] == np.arange(21)).all()

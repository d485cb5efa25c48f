"""kill -KILL and kill -TERM at random points of an embedding-cache writer (docs/reliability.md,
"embedding cache"): 20 trials.

* 18 trials of a bare writer subprocess (`_WRITER`: one `CacheNamespace.put` per batch of 16,
  printing each batch index once `put` returned, under the CLI's own signal handling,
  `histovl.cli.guard`): after the kill, the batches present are exactly a prefix 0..m with
  m = the last batch reported or the one after it (the batch in flight is all or nothing), every
  row is its key's, and `histovl cache verify` finds nothing damaged. SIGTERM exits 143 with
  one line, within 5 s.
* 2 trials of `histovl embed --batch-size 2` (the case that used to keep nothing): the cache
  verifies clean, and a re-run uses every stored embedding and exports exactly what an
  uninterrupted run exports.
* 4 more trials (SIGKILL, SIGTERM) in the middle of a merge of the index's level 0 into its main
  table (`_MERGE_WRITER`): every committed batch is kept, `verify` is clean, the next merge
  completes.

The kill points are seeded (``HISTOVL_FAULT_SEED``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from histovl.embed.cache_admin import cache_verify
from tests.faults.conftest import REPO, FaultLog, run_main, spawn

SEED = int(os.environ.get("HISTOVL_FAULT_SEED", "19"))
BATCH, N_BATCHES, DIM = 16, 400, 64
_WRITER = f"""
import sys
import numpy as np
from histovl.cli.guard import exit_now, install_signal_handlers, run_cli
from histovl.embed import EmbeddingCache

def body():
    ns = EmbeddingCache(sys.argv[1]).namespace(weights_id="w", preprocessing="p")
    for b in range({N_BATCHES}):
        rows = np.arange(b * {BATCH}, (b + 1) * {BATCH}, dtype=np.float32)[:, None] * np.ones((1, {DIM}), np.float32)
        ns.put([f"k{{i}}" for i in range(b * {BATCH}, (b + 1) * {BATCH})], rows)
        print(b, flush=True)

install_signal_handlers()
exit_now(run_cli(body))
"""


def _batches_present(root: Path) -> np.ndarray:
    from histovl.embed import EmbeddingCache

    ns = EmbeddingCache(root).namespace(weights_id="w", preprocessing="p")
    hit, rows = ns.get([f"k{i}" for i in range(BATCH * N_BATCHES)])
    ids = np.flatnonzero(hit)
    np.testing.assert_array_equal(rows[:, 0], ids.astype(np.float32))  # every row is its key's
    ns.close()
    per_batch = hit.reshape(N_BATCHES, BATCH)
    assert (per_batch.all(axis=1) | ~per_batch.any(axis=1)).all(), "a batch was stored in part"
    return per_batch.all(axis=1)


@pytest.mark.parametrize("trial", range(9))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_a_killed_writer_loses_at_most_the_batch_in_flight(sig: signal.Signals, trial: int, tmp_path: Path,
                                                           faults: FaultLog) -> None:
    rng = random.Random(f"{SEED}-cache-{sig.name}-{trial}")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    target = rng.randint(1, N_BATCHES // 2)
    reported = -1
    while reported < target:
        line = proc.stdout.readline()
        if not line:
            break
        reported = int(line)
    time.sleep(rng.uniform(0.0, 0.01))  # land anywhere inside the next put
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    faults.inject(f"kill -{sig.name.removeprefix('SIG')} cache writer")
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    rest, stderr = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""  # the buffered lines too
    reported = max([reported, *(int(x) for x in rest.split())])
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and took < 5.0, (proc.returncode, took, stderr)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert "Traceback" not in stderr and lines[-1].startswith("stopped by SIGTERM"), stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    present = _batches_present(tmp_path)
    m = int(present.sum()) - 1
    assert present[: m + 1].all(), "the batches kept are not a prefix"
    assert m in (reported, reported + 1), (m, reported)
    assert cache_verify(tmp_path).ok


def _embed_args(fx: dict[str, Path]) -> list[str]:
    return ["embed", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "--batch-size", "2", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def reference_export(fx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`histovl embed --export` run once, uninterrupted."""
    root = tmp_path_factory.mktemp("embed-reference")
    assert run_main([*_embed_args(fx), "--cache", str(root / "cache"), "--export", str(root / "ref.parquet")]) == 0
    return root / "ref.parquet"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_killed_embed_keeps_what_it_committed_and_a_rerun_equals_an_uninterrupted_run(
    sig: signal.Signals, fx: dict[str, Path], reference_export: Path, tmp_path: Path, faults: FaultLog
) -> None:
    import pyarrow.parquet as pq

    rng = random.Random(f"{SEED}-embed-{sig.name}")
    args = _embed_args(fx)
    cache = tmp_path / "cache"
    proc = spawn([*args, "--cache", str(cache)])
    if _started(cache, proc):
        time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        faults.inject(f"kill -{sig.name.removeprefix('SIG')} histovl embed")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, -sig, 128 + sig), (proc.returncode, stderr)
    report = cache_verify(cache)
    assert report.ok, report.bad_files
    stored = report.n_records
    assert run_main([*args, "--cache", str(cache), "--export", str(tmp_path / "again.parquet")]) == 0
    ref, again = pq.read_table(reference_export), pq.read_table(tmp_path / "again.parquet")
    assert ref.column("path").to_pylist() == again.column("path").to_pylist()
    np.testing.assert_allclose(np.array(again.column("embedding").to_pylist()), np.array(ref.column("embedding").to_pylist()), atol=1e-6)
    assert cache_verify(cache).n_records == 24 and stored <= 24


def _started(cache: Path, proc: subprocess.Popen[str]) -> bool:
    """The embed body is running once its namespace's index exists (or the process ended)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if list(cache.glob("*/index.sqlite")):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError("histovl embed did not start within 240 s")


# ---- a kill in the middle of a merge of level 0 into the main index ---------------------------------
#
# The writer runs with a tiny level 0 (``HISTOVL_CACHE_LEVEL0_ROWS=64``: a merge every 4 batches) and
# an 8-page SQLite cache (a merge spills uncommitted pages into the write-ahead log). Once past batch
# `argv[2]`, a progress handler pauses a merge statement at its `argv[3]`-th callback and prints
# "merging"; the test kills it there. A SIGTERM is held back until that statement returns, as
# CPython holds back a signal that arrives during a C call.
_MERGE_WRITER = _WRITER.replace("def body():", '''import signal, time
import histovl.embed.store as st

state = {"armed": False, "n": 0, "stop": int(sys.argv[3]), "held": None, "pending": []}
_merge = st.RecordStore.merge

def merge(self, at_least=0):
    state["n"] = 0
    try:
        return _merge(self, at_least)
    finally:
        state["n"] = -1
        state["stop"] = max(1, state["stop"] // 2)  # not reached in this merge: earlier in the next

def progress():
    if state["armed"] and state["n"] >= 0:
        state["n"] += 1
        if state["n"] == state["stop"]:
            state["held"] = signal.signal(signal.SIGTERM, lambda signum, frame: state["pending"].append(signum))
            print("merging", flush=True)
            time.sleep(3)
    return 0

class Conn:
    def __init__(self, conn):
        self._conn = conn
    def __getattr__(self, name):
        return getattr(self._conn, name)
    def execute(self, *args):
        try:
            return self._conn.execute(*args)
        finally:
            if state["held"] is not None:  # deliver a SIGTERM held back while the statement ran
                signal.signal(signal.SIGTERM, state["held"])
                state["held"] = None
                if state["pending"]:
                    signal.raise_signal(signal.SIGTERM)

st.RecordStore.merge = merge

def body():''').replace('''        ns.put(''', '''        if b == 0:
            ns.store.conn().execute("PRAGMA cache_size=8")
            ns.store.conn().set_progress_handler(progress, 5)
            ns.store._conn = Conn(ns.store.conn())
        state["armed"] = b >= int(sys.argv[2])
        ns.put(''')


@pytest.mark.parametrize("trial", range(2))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_a_writer_killed_during_a_merge_keeps_every_committed_batch(sig: signal.Signals, trial: int, tmp_path: Path,
                                                                     faults: FaultLog) -> None:
    rng = random.Random(f"{SEED}-merge-{sig.name}-{trial}")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HISTOVL_CACHE_LEVEL0_ROWS": "64"}
    args = [str(tmp_path), str(rng.randint(8, 60)), str(rng.randint(1, 60))]
    proc = subprocess.Popen([sys.executable, "-c", _MERGE_WRITER, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    reported = -1
    while (line := proc.stdout.readline().strip()) != "merging":
        assert line, proc.stderr.read() if proc.stderr else ""
        reported = int(line)
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(proc.pid, sig)
    faults.inject(f"kill -{sig.name.removeprefix('SIG')} cache writer during a merge")
    proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), (proc.returncode, stderr)
    present = _batches_present(tmp_path)
    m = int(present.sum()) - 1
    assert present[: m + 1].all() and m == reported + 1, (m, reported)  # the batch whose put was merging is kept
    assert cache_verify(tmp_path).ok
    from histovl.embed import EmbeddingCache

    ns = EmbeddingCache(tmp_path).namespace(weights_id="w", preprocessing="p")
    ns.store.merge()  # what the kill interrupted (if it had not committed yet) goes through now
    assert len(ns) == (m + 1) * BATCH and ns.store.conn().execute("SELECT count(*) FROM recent").fetchone()[0] == 0
    ns.close()
    np.testing.assert_array_equal(_batches_present(tmp_path), present)

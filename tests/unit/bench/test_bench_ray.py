"""`histovl bench --engine ray`: cells as Ray tasks give the same leaderboard as the local engine
(timing columns aside)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from histovl.bench import BenchConfig, bench
from tests.unit.bench.test_bench import board_without_timing, opts, run_json_mtimes, write_suite

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_engine_resumes_to_the_local_leaderboard(fixture: dict[str, str], tmp_path: Path) -> None:
    import ray

    suite = write_suite(tmp_path, fixture, tasks="  - task: zeroshot\n")
    out = tmp_path / "out"
    bench(suite, out, options=opts(fixture))
    local_board = board_without_timing(out)
    kept = run_json_mtimes(out)
    gone = sorted(kept)[1]
    shutil.rmtree((out / gone).parent)  # one cell to recompute; its embeddings are in the cache
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = bench(suite, out, BenchConfig(engine="ray"), opts(fixture))
    finally:
        ray.shutdown()
    assert sorted(res.cells["status"]) == ["computed", "reused"]
    assert {k: v for k, v in run_json_mtimes(out).items() if k != gone} == {k: v for k, v in kept.items() if k != gone}
    assert board_without_timing(out) == local_board  # the recomputed cell's timing differs

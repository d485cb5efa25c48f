"""`histovl bench`: a resumable models x data sets x tasks grid with a leaderboard (docs/bench.md)."""

from __future__ import annotations

from histovl._command_module import make_callable
from histovl.bench.run import BenchConfig, BenchError, BenchResult, bench
from histovl.bench.suite import Suite, SuiteError, load_suite

__all__ = ["BenchConfig", "BenchError", "BenchResult", "Suite", "SuiteError", "bench", "load_suite"]

make_callable(__name__, bench)  # histovl.bench(...) runs the command

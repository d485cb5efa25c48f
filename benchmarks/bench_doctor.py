"""`histovl doctor` wall time: the whole command as a user runs it, and the checks alone.

Each run is a fresh process (nothing cached in memory), so the numbers include the interpreter
start and every import. The target (docs: README, "Check an installation") is under 3 s for the
command; `bare python` is the floor any Python command pays on this machine.

Usage:
    python benchmarks/bench_doctor.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "bare python": [sys.executable, "-c", "pass"],
    "histovl doctor (CLI)": [str(BIN / "histovl"), "doctor"],
    "histovl doctor --json (CLI)": [str(BIN / "histovl"), "doctor", "--json"],
    "histovl.doctor.doctor() (library)": [sys.executable, "-c", "from histovl.doctor import doctor; doctor()"],
    "histovl doctor --deep (imports torch)": [str(BIN / "histovl"), "doctor", "--deep"],
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache once
        wall(cmd)
    print(f"{'what':40s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  (runs={args.runs})")
    for name, cmd in COMMANDS.items():
        times = [wall(cmd) for _ in range(args.runs)]
        print(f"{name:40s} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()

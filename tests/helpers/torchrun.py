"""Run `histovl` under torchrun in tests and record which process wrote which file.

`audited_env` installs a `sitecustomize` audit hook in the subprocesses that logs, per rank, every
file opened for writing, renamed, created or removed under a watched folder, so a test can prove
that only rank 0 wrote outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

WORLD = 2

AUDIT_HOOK = '''
import json, os, sys
_root, _log, _rank = os.environ.get("AUDIT_WATCH"), os.environ.get("AUDIT_LOG"), os.environ.get("RANK")
if _root and _log and _rank is not None:  # torchrun's workers only, not its launcher
    _root = os.path.realpath(_root)
    _out = f"{_log}.rank{_rank}"
    open(_out, "w").close()
    _parent, _name = os.path.split(_root)
    def _inside(p):  # the output, or a hidden sibling histovl writes it through (staging folder, lock)
        try:
            q = os.path.realpath(os.fsdecode(p))
        except (TypeError, ValueError):
            return False
        return q.startswith(_root) or q.startswith(os.path.join(_parent, "." + _name + "."))
    def _record(event, path):
        with open(_out, "a") as fh:
            fh.write(json.dumps([event, os.fsdecode(path)]) + "\\n")
    def _hook(event, args):
        if event == "open" and _inside(args[0]):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if (mode and any(c in str(mode) for c in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)):
                _record(event, args[0])
        elif event in ("os.rename", "os.replace") and _inside(args[1]):
            _record(event, args[1])
        elif event in ("os.mkdir", "os.remove") and _inside(args[0]):
            _record(event, args[0])
    sys.addaudithook(_hook)
'''


def audited_env(tmp_path: Path, watch: Path) -> tuple[dict[str, str], Path]:
    """Environment for a subprocess whose Python records every write under `watch`, per rank."""
    site = tmp_path / "audit_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT_HOOK)
    log = tmp_path / "writes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HISTOVL_DIST_BACKEND": "gloo", "AUDIT_WATCH": str(watch),
           "AUDIT_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env, log


def torchrun(args: list[str], env: dict[str, str], world: int = WORLD) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "histovl"
    if not script.is_file():
        pytest.skip("the `histovl` console script is not installed next to this Python")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           "--no-python", str(script), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def free_port() -> int:
    """A free TCP port on localhost for a test's process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gloo_worker(rank: int, port: int, out: str, world: int, fn: Callable[[int], Any]) -> None:
    import torch

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "HISTOVL_DIST_BACKEND": "gloo"})
    torch.set_num_threads(1)
    from histovl.distributed import init_distributed

    init_distributed()
    torch.save(fn(rank), Path(out) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def spawn_gloo_ranks(fn: Callable[[int], Any], out: Path, world: int = WORLD) -> list[Any]:
    """Run module-level `fn(rank)` in `world` gloo processes joined in one group; return each rank's result."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(free_port(), str(out), world, fn), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]

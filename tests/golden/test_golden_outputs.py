"""Behaviour unchanged by refactoring: zeroshot, retrieve, robustness and multilabel write the same
metrics.json and predictions.csv as at the commit that recorded `tests/golden/expected/`.

On the machine signature the files were recorded on (torch build, NumPy, CPU kernels, CPU vendor)
the bytes must be identical. Elsewhere a different BLAS kernel sums the models' float32 products in
another order, so the files must agree in every non-numeric cell exactly and in every number to
float32 rounding (`RTOL`, `ATOL`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.golden.cases import CASES, COMPARED, EXPECTED, machine_signature, output_bytes, run_all

pytestmark = pytest.mark.slow

#: Agreement asked of numbers computed on another machine: float32 rounding carried through a
#: model's layers (2**-23 ~ 1.2e-7 per operation). Measured between an AMD EPYC and the recording
#: CPU: at most 1.3e-6 relative (multi-label scores), 2e-8 for zero-shot scores.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("golden")
    return work, run_all(work)


def _close(a: Any, b: Any, path: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", COMPARED)
def test_outputs_match_the_recorded_ones(golden_run: tuple[Path, Path], case: str, name: str) -> None:
    work, out = golden_run
    got = output_bytes(work, out, case, name)
    expected = (EXPECTED / case / name).read_bytes()
    recorded_on = json.loads((EXPECTED / "machine.json").read_text())
    if recorded_on == machine_signature():
        assert got == expected, f"{case}/{name} differs from the recorded output"
        return
    if name.endswith(".json"):
        _close(json.loads(expected), json.loads(got), f"{case}/{name}")
    else:
        a = pd.read_csv(EXPECTED / case / name)
        b = pd.read_csv(pd.io.common.BytesIO(got))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL, atol=ATOL)

"""Compare runs over the same images: paired statistics, calibration, temperature scaling.

`compare` (the `histovl compare` command) reads run folders; the statistics are pure functions in
`histovl.compare.stats` (`paired_bootstrap_difference`, `mcnemar_exact`, `delong_test`, `holm`).
This package sits above zeroshot/heads: it reads their outputs and nothing below imports it.
See docs/compare.md.
"""

from histovl._command_module import make_callable
from histovl.compare.run import CompareConfig, CompareResult, compare
from histovl.compare.runs import CompareInputError
from histovl.compare.stats import (
    PAIRED_METRICS,
    delong_test,
    holm,
    mcnemar_exact,
    paired_bootstrap_difference,
    paired_bootstrap_differences,
)

__all__ = [
    "PAIRED_METRICS",
    "CompareConfig",
    "CompareInputError",
    "CompareResult",
    "compare",
    "delong_test",
    "holm",
    "mcnemar_exact",
    "paired_bootstrap_difference",
    "paired_bootstrap_differences",
]

make_callable(__name__, compare)  # histovl.compare(...) runs the command

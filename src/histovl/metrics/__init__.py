"""Metrics: scikit-learn point estimates with percentile bootstrap intervals.

Single-label: `classification_metrics`; multi-label: `multilabel_metrics`; the bootstrap itself
is `bootstrap_ci` (any order-independent metric, optionally resampling whole groups); calibration
(ECE, Brier, NLL, reliability curves, temperature scaling) is `histovl.metrics.calibration`.
See docs/metrics.md for the definitions.
"""

from typing import TYPE_CHECKING

from histovl._lazy import lazy_exports
from histovl.metrics.bootstrap import (
    ConfidenceInterval,
    bootstrap_ci,
    bootstrap_cis,
    percentile_interval,
    resample_counts,
)
from histovl.metrics.calibration import (
    ReliabilityCurve,
    apply_temperature,
    brier,
    ece,
    fit_temperature,
    nll,
    reliability_curve,
)
from histovl.metrics.classification import CLASSIFICATION_METRICS, classification_metrics

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from histovl.metrics.multilabel import MULTILABEL_METRICS, binary_decisions, multilabel_metrics

# multi-label metrics use sklearn (~2.5 s to import): loaded on first use, so a single-label run
# never imports it (docs/performance.md)
_EXPORTS = {name: "histovl.metrics.multilabel" for name in ("MULTILABEL_METRICS", "binary_decisions", "multilabel_metrics")}

__all__ = [
    "CLASSIFICATION_METRICS",
    "MULTILABEL_METRICS",
    "ConfidenceInterval",
    "ReliabilityCurve",
    "apply_temperature",
    "binary_decisions",
    "bootstrap_ci",
    "bootstrap_cis",
    "brier",
    "classification_metrics",
    "ece",
    "fit_temperature",
    "multilabel_metrics",
    "nll",
    "percentile_interval",
    "reliability_curve",
    "resample_counts",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

"""Metrics: scikit-learn point estimates with percentile bootstrap intervals.

Single-label: `classification_metrics`; multi-label: `multilabel_metrics`; the bootstrap itself
is `bootstrap_ci` (any order-independent metric, optionally resampling whole groups).
See docs/metrics.md for the definitions.
"""

from histovl.metrics.bootstrap import (
    ConfidenceInterval,
    bootstrap_ci,
    bootstrap_cis,
    percentile_interval,
    resample_counts,
)
from histovl.metrics.classification import CLASSIFICATION_METRICS, classification_metrics
from histovl.metrics.multilabel import MULTILABEL_METRICS, binary_decisions, multilabel_metrics

__all__ = [
    "CLASSIFICATION_METRICS",
    "MULTILABEL_METRICS",
    "ConfidenceInterval",
    "binary_decisions",
    "bootstrap_ci",
    "bootstrap_cis",
    "classification_metrics",
    "multilabel_metrics",
    "percentile_interval",
    "resample_counts",
]

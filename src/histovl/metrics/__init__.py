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

__all__ = [
    "CLASSIFICATION_METRICS",
    "ConfidenceInterval",
    "bootstrap_ci",
    "bootstrap_cis",
    "classification_metrics",
    "percentile_interval",
    "resample_counts",
]

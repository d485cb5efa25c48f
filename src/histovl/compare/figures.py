"""Figures of the compare report: the paired differences with their intervals (a forest plot)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from histovl.compare.pairwise import PairResult
from histovl.compare.stats import LOWER_IS_BETTER


def differences_figure(pairs: Sequence[PairResult], metrics: Sequence[str]) -> Figure:
    """One panel per metric: each pair's difference (a - b) as a dot with its 95% CI whisker.

    A whisker that does not cross 0 is drawn dark: the bootstrap interval excludes no difference.
    """
    n_cols = min(4, len(metrics))
    n_rows = int(np.ceil(len(metrics) / n_cols))
    height = max(1.6, 0.32 * len(pairs) + 1.1)
    fig = Figure(figsize=(3.4 * n_cols, height * n_rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    labels = [f"{p.a} − {p.b}" for p in pairs]
    for ax, metric in zip(axes, metrics, strict=False):
        ypos = np.arange(len(pairs))
        for y, pair in zip(ypos, pairs, strict=True):
            d = pair.differences[metric]
            if not np.isfinite(d.difference):
                ax.text(0, y, "n/a", ha="center", va="center", fontsize=7)
                continue
            excludes_zero = np.isfinite(d.low) and np.isfinite(d.high) and (d.low > 0 or d.high < 0)
            colour = "#1f3b73" if excludes_zero else "#8FA8D6"
            if np.isfinite(d.low) and np.isfinite(d.high):
                ax.plot([d.low, d.high], [y, y], color=colour, linewidth=2)
            ax.plot([d.difference], [y], marker="o", color=colour)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(ypos, labels=labels, fontsize=7)
        ax.invert_yaxis()
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{metric} ({better})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("Paired differences (a − b) with 95% bootstrap intervals (dark: the interval excludes 0)")
    return fig

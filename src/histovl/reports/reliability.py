"""Reliability diagrams (calibration plots) for reports, on `matplotlib.figure.Figure`.

One column per run: on top, the accuracy in each equal-width confidence bin (bars), the mean
confidence of the bin (a tick on each bar) and the diagonal of perfect calibration, with the
equal-mass curve drawn over them; below, how many images fall in each bin. The curves come from
`histovl.metrics.calibration.reliability_curve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from histovl.metrics.calibration import ReliabilityCurve
from histovl.reports import layout

#: Top of the accuracy axis: the band above 1.0 holds the legend.
HEADROOM = 1.3

if TYPE_CHECKING:  # imported where a figure is drawn (histovl.reports.figures says why)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def reliability_figure(
    uniform: Mapping[str, ReliabilityCurve],
    quantile: Mapping[str, ReliabilityCurve] | None = None,
    *,
    title: str = "Reliability diagram",
) -> Figure:
    """Reliability diagrams of one or more runs (keys: run names), side by side.

    Example:
        >>> import numpy as np
        >>> from histovl.metrics.calibration import reliability_curve
        >>> c = reliability_curve([0, 1, 1], np.array([[.9, .1], [.4, .6], [.2, .8]]), n_bins=5)
        >>> len(reliability_figure({"run": c}).axes)
        2
    """
    from matplotlib.figure import Figure

    names = list(uniform)
    if not names:
        raise ValueError("reliability_figure needs at least one curve")
    width = min(4.0 * len(names), 16.0)
    fig = Figure(figsize=(max(width, 4.2), 4.6), dpi=layout.DPI)
    axes = fig.subplots(2, len(names), squeeze=False, height_ratios=[3, 1], sharex=True)
    for col, name in enumerate(names):
        _draw(axes[0][col], axes[1][col], name, uniform[name], None if quantile is None else quantile.get(name))
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("images")
    layout.fit_grid(fig, axes.tolist(), title=fig.suptitle(title), height_ratios=[3, 1])
    return fig


def _draw(top: Axes, bottom: Axes, name: str, curve: ReliabilityCurve, mass: ReliabilityCurve | None) -> None:
    centres = (curve.lower + curve.upper) / 2.0
    widths = curve.upper - curve.lower
    full = curve.count > 0
    top.bar(centres[full], curve.accuracy[full], width=widths[full] * 0.92, color="#4C72B0",
            alpha=0.85, label="accuracy (equal-width bins)")
    top.scatter(centres[full], curve.confidence[full], marker="_", s=160, color="#C44E52",
                label="mean confidence", zorder=3)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if mass is not None:
        keep = mass.count > 0
        top.plot(mass.confidence[keep], mass.accuracy[keep], marker="o", markersize=3,
                 color="#DD8452", linewidth=1.2, label="equal-mass bins")
    n_bins = len(curve.count)
    top.set_title(f"{name}\nECE {curve.ece:.3f} ({n_bins} equal-width bins)", fontsize=9)
    top.set_xlim(0, 1)
    # the legend sits in a band above accuracy 1.0, where no bar or point can reach: anywhere
    # inside [0, 1] some calibration would put it over the bars (it covered the first bar before)
    top.set_ylim(0, HEADROOM)
    top.set_yticks(np.linspace(0.0, 1.0, 6))
    top.axhline(1.0, color="#DDDDDD", linewidth=0.8, zorder=0)
    top.legend(fontsize=6, loc="upper center", ncol=2, frameon=False, borderaxespad=0.2, columnspacing=1.0,
               handlelength=1.5)
    bottom.bar(centres, curve.count, width=widths * 0.92, color="#8C8C8C")
    bottom.set_xlabel("top-label confidence")
    if full.any() and np.max(curve.count) > 50 * max(1.0, float(np.median(curve.count[full]))):
        bottom.set_yscale("symlog")  # one crowded bin would hide the others

"""Plots of results tables (one row per run): a metric against a swept parameter."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_results(table: pd.DataFrame, *, y: str, x: str | None = None, hue: str | None = None,
                 path: str | None = None, logx: bool = False, logy: bool = False):
    """Line plot of ``y`` against ``x`` (the run index when None), one line per ``hue``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = x or "run"
    groups = table.groupby(hue) if hue else [(None, table)]
    for key, group in groups:
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=None if key is None else f"{hue}={key}")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if hue:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig

"""Matplotlib figures of loaded traces: a Gantt chart (one row per device and track, the
critical path outlined) and step curves of counters (memory, KV blocks) over time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLOURS = {"compute": "#4c72b0", "optimizer": "#8172b2", "comm": "#dd8452", "p2p": "#55a868"}


def gantt(spans: pd.DataFrame, *, path: pd.DataFrame | None = None, ax=None, title: str = ""):
    """Spans as bars, one row per (device, track); spans on ``path`` outlined in black."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 0.45 * spans.groupby(["device", "track"]).ngroups + 1))
    rows = list(spans.groupby(["device", "track"], sort=True).groups)
    on_path = set(zip(path["device"], path["track"], path["start_s"])) if path is not None else set()
    for y, (device, track) in enumerate(rows):
        group = spans[(spans["device"] == device) & (spans["track"] == track)]
        for category, part in group.groupby("category"):
            bars = list(zip(part["start_s"] * 1e3, (part["end_s"] - part["start_s"]) * 1e3))
            ax.broken_barh(bars, (y - 0.4, 0.8), color=COLOURS.get(category, "#999999"),
                           label=category)
        marked = [(s * 1e3, (e - s) * 1e3) for s, e in zip(group["start_s"], group["end_s"])
                  if (device, track, s) in on_path]
        if marked:
            ax.broken_barh(marked, (y - 0.45, 0.9), facecolor="none", edgecolor="black", lw=1.2)
    ax.set_yticks(range(len(rows)), [f"{d} {t}" for d, t in rows])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    ax.set_title(title)
    return ax


def step_curves(table: pd.DataFrame, *, value: str, by: str, ax=None, scale: float = 1.0,
                ylabel: str = "", title: str = ""):
    """One step curve per value of ``by`` (e.g. memory per device, KV blocks per replica)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.5))
    for name, group in table.groupby(by, sort=True):
        group = group.sort_values("time_s", kind="stable")
        ax.step(group["time_s"] * 1e3, group[value] * scale, where="post", label=str(name))
    ax.set_xlabel("time (ms)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return ax

"""Matplotlib views of a trace: a Gantt timeline per (device, stream) and memory over time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

_CATEGORY_COLOURS = {"compute": "#4c72b0", "optimizer": "#8172b2", "comm": "#dd8452",
                     "p2p": "#55a868", "idle": "#dddddd"}


def plot_timeline(trace, path: str | None = None, *, title: str = "", max_tracks: int = 32,
                  colour_by: str = "category"):
    """Gantt chart: one row per (device, stream), one bar per span; memory in a lower panel."""
    spans = trace.spans
    tracks = list(dict.fromkeys(zip(spans["device"], spans["stream"])))[:max_tracks] if not spans.empty else []
    memory = trace.memory
    if not memory.empty:  # tiers that never held anything (an unused host tier) are left out
        used = memory.groupby(["device", "tier"])["used_bytes"].transform("max") > 0
        memory = memory[used]
    has_memory = not memory.empty
    fig, axes = plt.subplots(2 if has_memory else 1, 1, figsize=(12, 0.35 * len(tracks) + 3.5),
                             sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] if has_memory else [1]})
    ax = axes[0][0]
    index = {track: i for i, track in enumerate(tracks)}
    if not spans.empty:
        keys = spans[colour_by] if colour_by in spans else spans["category"]
        palette = plt.get_cmap("tab20")
        colours: dict = {}
        # One broken_barh call per (track, colour): tens of thousands of spans draw in a second.
        bars: dict[tuple[int, object], list[tuple[float, float]]] = {}
        for (device, stream, start, end), key in zip(
                spans[["device", "stream", "start_s", "end_s"]].itertuples(index=False, name=None), keys):
            row = index.get((device, stream))
            if row is not None:
                bars.setdefault((row, key), []).append((start * 1e3, (end - start) * 1e3))
        for (row, key), ranges in bars.items():
            if colour_by == "category":
                colour = _CATEGORY_COLOURS.get(key, "#999999")
            else:
                colour = colours.setdefault(key, palette(len(colours) % 20))
            ax.broken_barh(ranges, (row - 0.4, 0.8), facecolors=colour, edgecolor="none")
    ax.set_yticks(range(len(tracks)), [f"{d} {s}" for d, s in tracks], fontsize=7)
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_title(title or "timeline")
    if colour_by == "category":
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _CATEGORY_COLOURS.values()]
        ax.legend(handles, list(_CATEGORY_COLOURS), loc="upper right", fontsize=7, ncol=5)
    if has_memory:
        mem_ax = axes[1][0]
        for (device, tier), group in list(memory.groupby(["device", "tier"]))[:16]:
            mem_ax.step(group["time_s"] * 1e3, group["used_bytes"] / 2**30, where="post",
                        label=f"{device} {tier}", linewidth=1)
        mem_ax.set_ylabel("GiB in use")
        if memory["device"].nunique() <= 8:
            mem_ax.legend(fontsize=6, ncol=4)
    axes[-1][0].set_xlabel("time (ms)")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig

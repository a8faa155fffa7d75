"""Matplotlib views of a trace: a Gantt timeline per (device, stream) and memory over time.

Drawn on an Agg canvas without pyplot (cheaper to import, no global figure state). Bars of one
track and colour closer than a quarter of a pixel at the saved resolution are drawn as one: the
picture is the same and a step of tens of thousands of spans draws in a fraction of a second.
"""

from __future__ import annotations

from clustersim.gc_pause import gc_paused

_WIDTH_IN, _DPI = 12.0, 110

_CATEGORY_COLOURS = {"compute": "#4c72b0", "optimizer": "#8172b2", "comm": "#dd8452",
                     "p2p": "#55a868", "idle": "#dddddd"}


def plot_timeline(trace, path: str | None = None, *, title: str = "", max_tracks: int = 32,
                  colour_by: str = "category"):
    """Gantt chart: one row per (device, stream), one bar per span; memory in a lower panel."""
    with gc_paused():  # a row per span and thousands of artists, no cycles worth collecting
        return _plot_timeline(trace, path, title=title, max_tracks=max_tracks,
                              colour_by=colour_by)


def _plot_timeline(trace, path, *, title, max_tracks, colour_by):
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    # Column lists (from the task records when there is no label to colour by): building the
    # span DataFrame costs more than the plot.
    if colour_by in ("category", "name", "device", "stream"):
        columns = trace.span_columns()
        keys = columns[colour_by]
    else:
        spans = trace.spans
        columns = {c: spans[c].tolist() for c in ("device", "stream", "start_s", "end_s")}
        keys = (spans[colour_by] if colour_by in spans else spans["category"]).tolist()
    device_of, stream_of = columns["device"], columns["stream"]
    starts, ends = columns["start_s"], columns["end_s"]
    tracks = list(dict.fromkeys(zip(device_of, stream_of)))[:max_tracks]
    memory = trace.memory
    if not memory.empty:  # tiers that never held anything (an unused host tier) are left out
        used = memory.groupby(["device", "tier"])["used_bytes"].transform("max") > 0
        memory = memory[used]
    has_memory = not memory.empty
    fig = Figure(figsize=(_WIDTH_IN, 0.35 * len(tracks) + 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if has_memory else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3, 1] if has_memory else [1]})
    ax = axes[0][0]
    index = {track: i for i, track in enumerate(tracks)}
    if starts:
        palette = colormaps["tab20"]
        colours: dict = {}
        bars: dict[tuple[int, object], list[tuple[float, float]]] = {}
        for device, stream, start, end, key in zip(device_of, stream_of, starts, ends, keys):
            row = index.get((device, stream))
            if row is not None:
                bars.setdefault((row, key), []).append((start * 1e3, (end - start) * 1e3))
        extent_ms = 1e3 * (max(ends) - min(starts))
        merge_ms = extent_ms / (_WIDTH_IN * _DPI) / 4  # a quarter of a pixel
        # One broken_barh call per (track, colour): tens of thousands of spans draw in a second.
        # (One compound path for all bars draws no faster here and loses Agg's pixel snapping.)
        for (row, key), ranges in bars.items():
            ranges = _merged(ranges, merge_ms)
            if colour_by == "category":
                colour = _CATEGORY_COLOURS.get(key, "#999999")
            else:
                colour = colours.setdefault(key, palette(len(colours) % 20))
            ax.broken_barh(ranges, (row - 0.4, 0.8), facecolors=colour, edgecolor="none")
    ax.set_yticks(range(len(tracks)), [f"{d} {s}" for d, s in tracks], fontsize=7)
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_title(title or "timeline")
    if colour_by == "category":
        handles = [Rectangle((0, 0), 1, 1, color=c) for c in _CATEGORY_COLOURS.values()]
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
    # Fixed margins sized for the labels instead of tight_layout, which draws the figure once
    # more just to measure it.
    height_in = fig.get_figheight()
    longest = max((len(f"{d} {s}") for d, s in tracks), default=8)
    fig.subplots_adjust(left=min(0.5, (0.3 + 0.055 * longest) / _WIDTH_IN), right=0.99,
                        top=1 - 0.4 / height_in, bottom=0.55 / height_in, hspace=0.12)
    if path:
        fig.savefig(path, dpi=_DPI)
    return fig


def _merged(ranges: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """(start, width) bars with gaps below ``gap`` joined (drawn identically at this scale)."""
    ranges.sort()
    out: list[list[float]] = []
    for start, width in ranges:
        if out and start - (out[-1][0] + out[-1][1]) <= gap:
            out[-1][1] = max(out[-1][1], start + width - out[-1][0])
        else:
            out.append([start, width])
    return [(start, width) for start, width in out]

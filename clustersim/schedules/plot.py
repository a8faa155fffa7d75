"""Matplotlib pictures of a list-scheduled schedule: a Gantt chart and activation memory.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``: nothing global (the backend, the current figure) changes and nothing is shown or
printed. Save with ``fig.savefig(path)``; in Jupyter the returned figure displays itself.
"""

from __future__ import annotations

from typing import Any

from clustersim.schedules.actions import ActionKind
from clustersim.schedules.analysis import Durations, Timeline, memory_over_time, simulate
from clustersim.schedules.schedule import Schedule

_STYLE: dict[ActionKind, dict[str, Any]] = {
    ActionKind.F: {"alpha": 1.0, "hatch": None},
    ActionKind.B: {"alpha": 0.6, "hatch": None},
    ActionKind.BW: {"alpha": 0.6, "hatch": None},
    ActionKind.W: {"alpha": 0.3, "hatch": "//"},
    ActionKind.S: {"alpha": 0.9, "hatch": ".."},
    ActionKind.T: {"alpha": 0.4, "hatch": ".."},
    ActionKind.IF: {"alpha": 0.9, "hatch": "xx"},
    ActionKind.IB: {"alpha": 0.4, "hatch": "xx"},
}


def _new_axes(ax, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, [ax]
    fig = Figure(figsize=(12, 1.2 + 2.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(rows, 1, squeeze=False)[:, 0])


def _draw_gantt(ax, timeline: Timeline, label: bool) -> None:
    from matplotlib import colormaps

    schedule = timeline.schedule
    palette = colormaps["tab10"]
    show_chunk = schedule.num_chunks > 1
    for stage, row in enumerate(schedule.actions):
        for action in row:
            start, end = timeline.start[action], timeline.end[action]
            style = _STYLE[action.kind]
            ax.barh(stage, end - start, left=start, height=0.8,
                    color=palette(action.microbatch % palette.N), alpha=style["alpha"],
                    hatch=style["hatch"], edgecolor="black", linewidth=0.4)
            if label and end - start > 0:
                ax.text((start + end) / 2, stage, action.token(show_chunk=show_chunk),
                        ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(range(schedule.num_stages), [f"stage {s}" for s in range(schedule.num_stages)])
    ax.invert_yaxis()
    ax.set_xlabel("time")
    ax.set_xlim(0, max(timeline.makespan, 1e-12))
    ax.set_title(f"{schedule.name}: p={schedule.num_stages} m={schedule.num_microbatches} "
                 f"v={schedule.num_chunks}, bubble {timeline.bubble_fraction:.1%}")


def _draw_memory(ax, timeline: Timeline, **memory: float) -> None:
    for stage, steps in enumerate(memory_over_time(timeline, **memory)):
        times = [t for t, _ in steps] + [timeline.makespan]
        levels = [level for _, level in steps] + [steps[-1][1]]
        ax.step(times, levels, where="post", label=f"stage {stage}")
    ax.set_xlabel("time")
    ax.set_ylabel("activations\n(micro-batch x stage)")
    ax.legend(fontsize=7, ncol=min(timeline.schedule.num_stages, 8), loc="upper right")


def plot_gantt(timeline: Timeline, *, ax=None, label: bool = True):
    """Stages on y, time on x; colour per micro-batch, shading per kind (F solid, B light, W hatched)."""
    fig, (axes,) = _new_axes(ax)
    _draw_gantt(axes, timeline, label)
    return fig


def plot_memory(timeline: Timeline, *, ax=None, **memory: float):
    """Activation memory of every stage over time (see :func:`analysis.memory_over_time`)."""
    fig, (axes,) = _new_axes(ax)
    _draw_memory(axes, timeline, **memory)
    return fig


def plot_schedule(schedule: Schedule, durations: Durations = None, *, label: bool = True, **memory: float):
    """Gantt chart above the memory curves, for ``schedule`` list-scheduled with ``durations``."""
    timeline = simulate(schedule, durations)
    fig, (gantt, mem) = _new_axes(None, rows=2)
    _draw_gantt(gantt, timeline, label)
    _draw_memory(mem, timeline, **memory)
    mem.sharex(gantt)
    return fig

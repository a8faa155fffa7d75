"""A quick timeline of a saved Chrome trace (trace.json): one row of busy bars per track.

For a first look from the shell (``clustersim plot runs/x/trace.json``); Perfetto remains the
tool to explore a trace. Reads the complete ("X") events of the PyTorch-profiler layout that
``sim/chrome_trace.py`` writes, groups them by (process, thread) and draws each track's spans
with one ``broken_barh`` call, so a trace of a million spans plots in seconds. Only the
``MAX_TRACKS`` busiest tracks are drawn, and the title says so when others were left out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from clustersim.errors import ConfigError
from clustersim.input_files import read_text

MAX_TRACKS = 48
_US = 1e-6


def read_tracks(path: str | Path) -> tuple[dict[str, list[tuple[float, float]]], float]:
    """``{track name: [(start_s, duration_s), ...]}`` and the trace's end time in seconds."""
    file = str(path)
    try:
        data = json.loads(read_text(path, what="Chrome trace (JSON)"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}: not JSON ({exc.msg}); expected a trace.json "
                          "written by `clustersim run`", file=file) from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ConfigError("expected a Chrome trace: a list of events or {traceEvents: [...]}",
                          file=file)
    process, thread = {}, {}
    spans: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    end_s = 0.0
    for event in events:
        if not isinstance(event, dict):
            continue
        phase, pid, tid = event.get("ph"), event.get("pid"), event.get("tid")
        if phase == "M":
            name = (event.get("args") or {}).get("name")
            if event.get("name") == "process_name":
                process[pid] = str(name)
            elif event.get("name") == "thread_name":
                thread[(pid, tid)] = str(name)
        elif phase == "X":
            try:
                start, duration = float(event["ts"]) * _US, float(event.get("dur", 0)) * _US
            except (KeyError, TypeError, ValueError):
                continue
            spans[(pid, tid)].append((start, duration))
            end_s = max(end_s, start + duration)
    if not spans:
        raise ConfigError("the trace holds no complete (\"X\") events to plot", file=file)
    named = {f"{process.get(pid, pid)} / {thread.get((pid, tid), tid)}": bars
             for (pid, tid), bars in spans.items()}
    return named, end_s


def plot_trace(path: str | Path, out: str | Path) -> Path:
    """Draw the busiest tracks of the trace at ``path`` into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    tracks, end_s = read_tracks(path)
    busy = sorted(tracks, key=lambda name: -sum(d for _, d in tracks[name]))
    shown = sorted(busy[:MAX_TRACKS])
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.28 * len(shown)))
    for row, name in enumerate(shown):
        ax.broken_barh(tracks[name], (row - 0.4, 0.8), linewidth=0)
    ax.set_yticks(range(len(shown)), shown, fontsize=7)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlim(0, end_s or 1)
    ax.set_xlabel("time (s)")
    left_out = len(tracks) - len(shown)
    ax.set_title(f"{Path(path).name}" + (f" ({left_out} less busy tracks not shown)"
                                         if left_out else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)

"""Where a run's time went: busy time and utilisation per device and stream, compute and
communication overlap, link utilisation over time. Exact interval arithmetic on the spans
(a union of intervals per group, so overlapping spans are counted once), no sampling; link
utilisation is the time-weighted mean of the trace's piecewise-constant rates per bin.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

COMPUTE = ("compute", "optimizer")  # span categories that keep the device's cores busy
COMMUNICATION = ("comm", "p2p")      # collectives and point-to-point transfers


def merged_intervals(starts: Iterable[float], ends: Iterable[float]) -> list[tuple[float, float]]:
    """The union of [start, end) intervals as disjoint, sorted intervals."""
    merged: list[list[float]] = []
    for start, end in sorted(zip(starts, ends)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def length_s(intervals: Sequence[tuple[float, float]]) -> float:
    return float(sum(e - s for s, e in intervals))


def intersection_s(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Length of the intersection of two disjoint sorted interval lists (a merge walk)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if high > low:
            total += high - low
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _select(spans: pd.DataFrame, categories: Sequence[str] | None) -> pd.DataFrame:
    return spans if categories is None else spans[spans["category"].isin(categories)]


def busy_time_s(spans: pd.DataFrame, by: Sequence[str] = ("device",),
                categories: Sequence[str] | None = None) -> pd.Series:
    """Busy time per group (a device, or a device and stream), overlapping spans counted once."""
    chosen = _select(spans, categories)
    return chosen.groupby(list(by)).apply(
        lambda g: length_s(merged_intervals(g["start_s"], g["end_s"])), include_groups=False
    ).rename("busy_s").astype(float)


def utilisation(spans: pd.DataFrame, by: Sequence[str] = ("device",),
                makespan_s: float | None = None) -> pd.DataFrame:
    """busy_s and utilisation (busy / makespan) per device, or per (device, stream)."""
    makespan = makespan_s if makespan_s is not None else float(spans["end_s"].max())
    busy = busy_time_s(spans, by).to_frame()
    busy["utilisation"] = busy["busy_s"] / makespan
    return busy


def overlap(spans: pd.DataFrame, compute: Sequence[str] = COMPUTE,
            communication: Sequence[str] = COMMUNICATION) -> pd.DataFrame:
    """Per device: compute and communication busy time, the part of communication hidden under
    compute (``overlapped_s``) and the part that is not (``exposed_comm_s``, what a faster
    network would save at most). ``compute_s + exposed_comm_s`` is the device's busy time."""
    rows = {}
    for device, group in spans.groupby("device"):
        comp = merged_intervals(*_columns(group[group["category"].isin(compute)]))
        comm = merged_intervals(*_columns(group[group["category"].isin(communication)]))
        compute_s, comm_s, both = length_s(comp), length_s(comm), intersection_s(comp, comm)
        rows[device] = {"compute_s": compute_s, "comm_s": comm_s, "overlapped_s": both,
                        "exposed_comm_s": comm_s - both,
                        "overlap_fraction": both / comm_s if comm_s > 0 else float("nan")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("device")


def _columns(frame: pd.DataFrame) -> tuple[list[float], list[float]]:
    return frame["start_s"].tolist(), frame["end_s"].tolist()


def link_utilisation_over_time(links: pd.DataFrame, bins: int = 50,
                               end_s: float | None = None) -> pd.DataFrame:
    """Mean utilisation of each link in ``bins`` equal time bins (rows: bin start time).

    The trace logs each link's utilisation when it changes; the value holds until the next
    change (zero before the first). Each bin gets the exact time-weighted mean."""
    if links.empty:
        return pd.DataFrame()
    end = end_s if end_s is not None else float(links["time_s"].max())
    edges = np.linspace(0.0, end, bins + 1)
    out = {}
    for link, group in links.groupby("link", sort=True):
        group = group.sort_values("time_s", kind="stable")
        times, values = group["time_s"].to_numpy(), group["utilisation"].to_numpy()
        cumulative = np.concatenate([[0.0], np.cumsum(values[:-1] * np.diff(times))])
        index = np.searchsorted(times, edges, side="right") - 1
        safe = np.clip(index, 0, None)
        integral = np.where(index >= 0, cumulative[safe] + values[safe] * (edges - times[safe]), 0.0)
        out[link] = np.diff(integral) / np.diff(edges)
    return pd.DataFrame(out, index=pd.Index(edges[:-1], name="time_s"))

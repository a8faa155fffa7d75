"""Traces: what happened in a run, as pandas DataFrames for Jupyter and Chrome trace JSON.

* ``spans``: one row per task or span: device, stream, name, category, start_s, end_s, and the
  op's labels (layer, stage, microbatch, phase, ...) as columns;
* ``memory``: device, tier, time_s, used_bytes after each change;
* ``links``: link, time_s, rate_bytes_per_s, utilisation after each change;
* ``transfers``: src, dst, name, start_s, end_s, size_bytes (flow arrows in Perfetto).

Dynamic workloads record spans through ``TraceRecorder.span`` and counters through
``TraceRecorder.counter``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class TraceRecorder:
    """Append-only lists filled during a run; converted to DataFrames once, at the end."""

    # (task_id, start_s, end_s) for program tasks.
    spans: list[tuple[int, float, float]] = field(default_factory=list)
    # Free-form spans of dynamic workloads: dicts with device, stream, name, start_s, end_s, ...
    extra_spans: list[dict] = field(default_factory=list)
    # Counters (KV-cache use, queue length): (device, name, time_s, value).
    counters: list[tuple[str, str, float, float]] = field(default_factory=list)

    def span(self, device: str, stream: str, name: str, start_s: float, end_s: float,
             category: str = "compute", **labels: object) -> None:
        self.extra_spans.append({"device": device, "stream": stream, "name": name,
                                 "category": category, "start_s": start_s, "end_s": end_s,
                                 **labels})

    def counter(self, device: str, name: str, time_s: float, value: float) -> None:
        self.counters.append((device, name, time_s, value))


SPAN_COLUMNS = ["device", "stream", "name", "category", "start_s", "end_s"]


def _program_span_rows(records, device_names, spans) -> list[tuple] | None:
    """(start_s, device, stream, index, end_s, name, category) per recorded span; None when a
    task's label shadows one of these columns (the table's rules then apply)."""
    core = frozenset(SPAN_COLUMNS)
    rows = []
    for index, (task_id, start, end) in enumerate(spans):
        record = records[task_id]
        labels = record[10]
        if labels and not core.isdisjoint(labels):
            return None
        rows.append((start, device_names[record[1]], record[2], index, end, record[3],
                     record[4]))
    return rows


class Trace:
    """The record of one run. DataFrames are built on first access (a sweep that only wants
    metrics never pays for them)."""

    def __init__(self, recorder: TraceRecorder, *, program, device_names, pools, fabric,
                 makespan_s: float):
        self._recorder, self._program, self._device_names = recorder, program, list(device_names)
        self._pools, self._fabric = pools, fabric
        self.makespan_s = makespan_s

    @functools.cached_property
    def _span_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, transfers = [], []
        names = self._device_names
        if self._program is not None:
            records = self._program.records
            for task_id, start, end in self._recorder.spans:
                (_, device, stream, name, category, _, _, _, _, _, labels, dst_device,
                 size_bytes, _) = records[task_id]
                row = {"device": names[device], "stream": stream, "name": name,
                       "category": category, "start_s": start, "end_s": end,
                       "task_id": task_id}
                if labels:
                    row.update(labels)
                rows.append(row)
                if dst_device >= 0:
                    transfers.append({"src": names[device], "dst": names[dst_device],
                                      "stream": stream, "name": name,
                                      "start_s": start, "end_s": end,
                                      "size_bytes": size_bytes})
        rows.extend(self._recorder.extra_spans)
        spans = pd.DataFrame(rows) if rows else pd.DataFrame(columns=SPAN_COLUMNS)
        if rows:
            spans = spans.sort_values(["start_s", "device", "stream"], kind="stable",
                                      ignore_index=True)
        return spans, pd.DataFrame(transfers, columns=["src", "dst", "stream", "name", "start_s",
                                                       "end_s", "size_bytes"])

    def span_columns(self) -> dict[str, list]:
        """The ``SPAN_COLUMNS`` of ``spans`` as lists, in its row order (by start, device,
        stream), read from the task records when the trace holds only a program's tasks: a
        plot that needs no labels never pays for the DataFrame."""
        program, recorder = self._program, self._recorder
        if "_span_tables" not in self.__dict__ and program is not None \
                and not recorder.extra_spans:
            rows = _program_span_rows(program.records, self._device_names, recorder.spans)
            if rows is not None:
                rows.sort()  # the index breaks ties, as the table's stable sort does
                if not rows:
                    return {column: [] for column in SPAN_COLUMNS}
                start, device, stream, _, end, name, category = map(list, zip(*rows))
                return {"device": device, "stream": stream, "name": name,
                        "category": category, "start_s": start, "end_s": end}
        spans = self.spans
        return {column: spans[column].tolist() for column in SPAN_COLUMNS}

    @property
    def spans(self) -> pd.DataFrame:
        return self._span_tables[0]

    @property
    def transfers(self) -> pd.DataFrame:
        return self._span_tables[1]

    @functools.cached_property
    def memory(self) -> pd.DataFrame:
        return pd.DataFrame([(pool.device, pool.tier, t, used) for pool in self._pools.values()
                             for t, used in pool.timeline],
                            columns=["device", "tier", "time_s", "used_bytes"])

    @functools.cached_property
    def link_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """The link log as arrays: link index, time_s, rate_bytes_per_s (and the link names by
        index), without a DataFrame: the Chrome trace writes them straight out."""
        if self._fabric is None:
            empty = np.empty(0)
            return empty.astype(np.int64), empty, empty, []
        # Built with numpy: a TP step logs hundreds of thousands of rate changes, a pipeline
        # step's sends as many records (sim/express_log.py).
        time_s, index, rate = self._fabric.utilisation_columns()
        return index, time_s, rate, [link.name for link in self._fabric.links]

    def link_utilisation(self) -> np.ndarray:
        """Utilisation (rate / capacity) of each row of ``link_columns``."""
        index, _, rate, _ = self.link_columns
        capacity = np.array([link.capacity_bytes_per_s for link in self._fabric.links], dtype=float) \
            if self._fabric is not None else np.empty(0)
        return rate / capacity[index]

    @functools.cached_property
    def links(self) -> pd.DataFrame:
        columns = ["link", "time_s", "rate_bytes_per_s", "utilisation"]
        index, time_s, rate, link_names = self.link_columns
        if not len(index):
            return pd.DataFrame(columns=columns)
        names = np.array(link_names, dtype=object)
        return pd.DataFrame({"link": names[index], "time_s": time_s,
                             "rate_bytes_per_s": rate, "utilisation": self.link_utilisation()},
                            columns=columns)

    @functools.cached_property
    def counters(self) -> pd.DataFrame:
        return pd.DataFrame(self._recorder.counters, columns=["device", "name", "time_s", "value"])

    def task_dependencies(self, task_id: int) -> tuple[tuple[int, ...], int | None]:
        """A program task's dependencies and, for a collective member, its first member's id
        (members start together, when the last of them is ready): for critical paths."""
        record = self._program.records[task_id]
        collective = record[13]
        return record[7], (collective.members[0] if collective is not None else None)

    @property
    def pools(self):
        """Memory pools by (device, tier): capacity, peak and timeline."""
        return self._pools

    @property
    def fabric(self):
        return self._fabric

    # -- summaries ---------------------------------------------------------------------------
    def peak_memory_bytes(self) -> pd.Series:
        """Peak bytes in use per (device, tier)."""
        return pd.Series({key: pool.peak_bytes for key, pool in self._pools.items()}, dtype=float)

    def busy_time_s(self, category: str | tuple[str, ...] | None = None) -> pd.Series:
        """Union of busy intervals per device (overlapping streams counted once)."""
        spans = self.spans
        if category is not None and not spans.empty:
            wanted = (category,) if isinstance(category, str) else category
            spans = spans[spans["category"].isin(wanted)]
        result = {}
        for device, group in spans.groupby("device"):
            total, cur_start, cur_end = 0.0, None, None
            for start, end in sorted(zip(group["start_s"], group["end_s"])):
                if cur_end is None or start > cur_end:
                    if cur_end is not None:
                        total += cur_end - cur_start
                    cur_start, cur_end = start, end
                else:
                    cur_end = max(cur_end, end)
            if cur_end is not None:
                total += cur_end - cur_start
            result[device] = total
        return pd.Series(result, dtype=float)

    # -- export ------------------------------------------------------------------------------
    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write Chrome trace JSON (opens in Perfetto and chrome://tracing)."""
        from clustersim.sim.chrome_trace import write_chrome_trace

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as file:  # the text is ASCII (json.dumps escapes)
            write_chrome_trace(self, file)
        tmp.replace(path)
        return path

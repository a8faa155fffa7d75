"""Busy time of a compiled step's tasks, straight from the engine's span records.

Analytical post-processing (no simulation): the same unions of intervals as
``Trace.busy_time_s`` and the pandas span table, computed on numpy arrays of the recorded
(task, start, end) triples and the tasks' device, stream and category, so that a large step's
metrics do not build a DataFrame of every task. Per-device unions are summed in the same
order and with the same float operations as the pandas path, so results are identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class StepSpans:
    """Recorded spans of a program's tasks, as arrays aligned with ``recorder.spans``."""

    def __init__(self, program, recorder, device_names):
        records = recorder.spans
        table = np.asarray(records, dtype=float).reshape(-1, 3)
        self.task = table[:, 0].astype(np.int64)
        self.start_s, self.end_s = table[:, 1], table[:, 2]
        tasks = program.tasks
        # Per task (in task order, one pass over the tasks), then per recorded span.
        self._strings: dict[str, dict[str, int]] = {"stream": {}, "category": {}}
        streams, categories = self._strings["stream"], self._strings["category"]
        self.device = np.array([task.device for task in tasks], dtype=np.int64)[self.task]
        self.stream = np.array([streams.setdefault(task.stream, len(streams)) for task in tasks],
                               dtype=np.int64)[self.task]
        self.category = np.array([categories.setdefault(task.category, len(categories))
                                  for task in tasks], dtype=np.int64)[self.task]
        self.device_names = list(device_names)
        self.end_of_task = np.full(len(tasks), np.nan)
        self.end_of_task[self.task] = self.end_s

    def mask(self, attribute: str, values, *, negate: bool = False) -> np.ndarray:
        codes = self._strings[attribute]
        wanted = [codes[v] for v in values if v in codes]
        found = np.isin(getattr(self, attribute), wanted)
        return ~found if negate else found

    def run_lengths_s(self, selected: np.ndarray) -> dict[str, list[float]]:
        """Per device name (in name order, as ``DataFrame.groupby("device")`` gives them): the
        lengths of the runs of overlapping selected spans, in time order."""
        device, start, end = self.device[selected], self.start_s[selected], self.end_s[selected]
        order = np.lexsort((end, start, device))
        device, start, end = device[order], start[order], end[order]
        result = {}
        bounds = np.flatnonzero(np.diff(device)) + 1
        for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(device)].tolist()):
            if hi > lo:
                result[self.device_names[device[lo]]] = _run_lengths_s(start[lo:hi], end[lo:hi])
        return dict(sorted(result.items()))

    def busy_per_device_s(self, selected: np.ndarray) -> pd.Series:
        """``Trace.busy_time_s`` of the selected spans: the union of their intervals per device."""
        return pd.Series({name: _running_sum(runs) for name, runs in
                          self.run_lengths_s(selected).items()}, dtype=float)

    def union_total_s(self, selected: np.ndarray) -> float:
        """Sum over devices of the union of the selected spans' intervals."""
        return _running_sum(length for runs in self.run_lengths_s(selected).values()
                            for length in runs)


def _running_sum(values) -> float:
    total = 0.0
    for value in values:
        total += value
    return total


def _run_lengths_s(start: np.ndarray, end: np.ndarray) -> list[float]:
    """Lengths of the runs of overlapping intervals sorted by start: a new run begins where a
    start lies beyond every end before it (the loop form's ``start > cur_end``)."""
    reach = np.maximum.accumulate(end)
    new_run = np.empty(len(start), dtype=bool)
    new_run[0] = True
    new_run[1:] = start[1:] > reach[:-1]
    firsts = np.flatnonzero(new_run)
    lasts = np.r_[firsts[1:] - 1, len(start) - 1]
    return (reach[lasts] - start[firsts]).tolist()

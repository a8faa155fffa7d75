"""The critical path of a simulated trace: the chain of tasks that set its makespan.

Walk back from the task that ends last, each time to the predecessor that finished last:
its dependencies (``deps`` in the trace's args), the dependencies of the other members of
its collective (members start together, when the last is ready), and the task before it on
its own track (a stream runs in order). Every task on the path started when that predecessor
ended (or after a wait: a latency, a flow that shared a link), so shortening a task off the
path cannot shorten the run, and ``sum(duration_s) + sum(wait_s)`` is the path's span.
Traces without dependencies (dynamic workloads) give the path along tracks only.
"""

from __future__ import annotations

import math

import pandas as pd


def critical_path(spans: pd.DataFrame) -> pd.DataFrame:
    """The spans on the critical path in time order, with ``duration_s`` and ``wait_s`` (the
    gap after the predecessor ended) columns."""
    if spans.empty:
        return spans.assign(duration_s=[], wait_s=[])
    table = spans.reset_index(drop=True)
    starts, ends = table["start_s"].tolist(), table["end_s"].tolist()
    has_ids = "task_id" in table.columns and "deps" in table.columns
    by_task: dict[int, int] = {}
    group_deps: dict[int, list[int]] = {}
    if has_ids:
        ids = table["task_id"].tolist()
        deps = table["deps"].tolist()
        groups = table["collective_id"].tolist() if "collective_id" in table else [None] * len(ids)
        for row, task in enumerate(ids):
            if _present(task):
                by_task[int(task)] = row
        for row, group in enumerate(groups):
            if _present(group) and isinstance(deps[row], list):
                group_deps.setdefault(int(group), []).extend(deps[row])
    # The span before each one on its own track.
    track_col = "track" if "track" in table.columns else "stream"
    previous: dict[int, int] = {}
    for _, group in table.groupby(["device", track_col], sort=False):
        order = sorted(group.index, key=lambda r: (starts[r], ends[r]))
        for before, after in zip(order, order[1:]):
            previous[after] = before

    def predecessors(row: int) -> list[int]:
        found = [previous[row]] if row in previous else []
        if has_ids and isinstance(deps[row], list):
            wanted = list(deps[row])
            if _present(groups[row]):
                wanted += group_deps.get(int(groups[row]), [])
            found += [by_task[d] for d in wanted if d in by_task]
        return [r for r in found if ends[r] <= starts[row] + 1e-12 * max(1.0, abs(starts[row]))]

    row = max(range(len(table)), key=lambda r: (ends[r], -r))
    path = [row]
    while True:
        candidates = predecessors(row)
        if not candidates:
            break
        row = max(candidates, key=lambda r: (ends[r], -r))
        path.append(row)
    path.reverse()
    result = table.loc[path].copy()
    result["duration_s"] = result["end_s"] - result["start_s"]
    waits = [starts[path[0]]] + [starts[b] - ends[a] for a, b in zip(path, path[1:])]
    result["wait_s"] = [max(w, 0.0) for w in waits]
    return result.reset_index(drop=True)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))

"""Two runs compared span by span: which tasks got slower or faster, and by how much.

Spans are matched by (device, stream, name) and their order of occurrence within that key,
so the k-th ``attn_fwd`` on gpu0's compute stream in run A meets the k-th in run B. Spans that
exist in one run only are kept with NaN on the other side.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from clustersim.analysis.trace_tables import TraceTables


def _keyed(spans: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = spans[keys + ["start_s", "end_s"]].sort_values(keys + ["start_s"], kind="stable")
    frame = frame.assign(occurrence=frame.groupby(keys).cumcount(),
                         duration_s=frame["end_s"] - frame["start_s"])
    return frame.set_index(keys + ["occurrence"])[["start_s", "duration_s"]]


def compare_spans(a: TraceTables, b: TraceTables,
                  keys: Sequence[str] = ("device", "stream", "name")) -> pd.DataFrame:
    """One row per matched span: start and duration in each run and ``delta_s`` (b - a)."""
    keys = list(keys)
    joined = _keyed(a.spans, keys).add_suffix("_a").join(_keyed(b.spans, keys).add_suffix("_b"),
                                                         how="outer")
    joined["delta_s"] = joined["duration_s_b"] - joined["duration_s_a"]
    return joined


def compare_totals(a: TraceTables, b: TraceTables,
                   by: Sequence[str] = ("name", "category")) -> pd.DataFrame:
    """Total span time per group in each run and the change, largest changes first."""
    def totals(spans: pd.DataFrame) -> pd.Series:
        return (spans["end_s"] - spans["start_s"]).groupby([spans[k] for k in by]).sum()

    table = pd.DataFrame({"total_a_s": totals(a.spans), "total_b_s": totals(b.spans)}).fillna(0.0)
    table["delta_s"] = table["total_b_s"] - table["total_a_s"]
    return table.reindex(table["delta_s"].abs().sort_values(ascending=False).index)

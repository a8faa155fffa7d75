"""The Pareto front of a sweep: the points no other point beats on every objective."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def pareto_front(table: pd.DataFrame, minimize: Sequence[str] = (),
                 maximize: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of ``table`` not dominated by any other row (at least as good on every objective and
    better on one), sorted by the first objective. Rows with a missing objective are left out."""
    columns = list(minimize) + list(maximize)
    if not columns:
        raise ValueError("give at least one column to minimize or maximize")
    data = table.dropna(subset=columns)
    # Turn every objective into one to minimise.
    values = np.column_stack([data[c].to_numpy(float) for c in minimize] +
                             [-data[c].to_numpy(float) for c in maximize])
    keep = np.ones(len(values), dtype=bool)
    for i, point in enumerate(values):
        dominated = np.all(values <= point, axis=1) & np.any(values < point, axis=1)
        keep[i] = not dominated.any()
    return data[keep].sort_values(columns[0], ascending=bool(minimize))

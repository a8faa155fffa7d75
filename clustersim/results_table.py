"""A results table for the terminal: readable at 80 columns whatever the number of runs.

A single run prints one metric per line. A sweep prints one row per run with the swept
parameters and the metrics that vary between runs, as many as fit the width (the others are
named below the table); long sweeps show their first and last rows. Returns rich renderables;
the CLI prints them.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

HIDDEN = {"id", "version", "config", "traceback", "files_error"}
MAX_ROWS = 30  # longer sweeps show the first 20 and the last 10 rows


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last part of each key path, longer where two would clash (workload.parallel.tp -> tp)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        depth = 1
        while depth < len(parts) and any(k != key and k.split(".")[-depth:] == parts[-depth:]
                                         for k in keys):
            depth += 1
        names[key] = ".".join(parts[-depth:])
    return names


def single_run_table(row: dict[str, Any], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE)
    table.add_column("metric")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in row.items():
        if key not in HIDDEN:
            table.add_row(Text(str(key)), Text(format_value(value)))
    return table


def sweep_table(rows: list[dict[str, Any]], params: list[str], title: str,
                width: int = 80) -> tuple[Table, list[str]]:
    """The table and notes (metrics left out, rows elided)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    names = _short_names(params)
    metrics = [k for k in keys if k not in HIDDEN and k not in params
               and k not in ("run", "status", "error") and k not in names.values()]
    # Failed runs have no metrics: what varies is judged on the runs that finished.
    ok = [r for r in rows if r.get("status") == "ok"] or rows
    varying = [k for k in metrics if len({format_value(r.get(k)) for r in ok}) > 1]
    constant = [k for k in metrics if k not in varying and k in ok[0]]
    failed = any(r.get("status") != "ok" for r in rows)
    columns = ["run", *params] + (["status"] if failed else [])
    shown = rows if len(rows) <= MAX_ROWS else rows[:20] + rows[-10:]

    def column_width(key: str) -> int:
        label = names.get(key, key)
        # two characters of padding and one of column separator
        return max([len(label)] + [len(format_value(r.get(key))) for r in shown]) + 3

    used = 1 + sum(column_width(k) for k in columns)
    left_out = []
    for key in varying:
        if used + column_width(key) <= width:
            columns.append(key)
            used += column_width(key)
        else:
            left_out.append(key)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for key in columns:
        table.add_column(Text(names.get(key, key)), justify="left" if key in params else "right",
                         no_wrap=True)
    for i, row in enumerate(shown):
        if len(rows) > MAX_ROWS and i == 20:
            table.add_row(*["..."] * len(columns))
        table.add_row(*(Text(format_value(row.get(k))) for k in columns))
    notes = []
    if len(rows) > MAX_ROWS:
        notes.append(f"{len(rows)} runs, {len(rows) - len(shown)} not shown")
    if left_out:
        notes.append(f"also varying (see results.csv): {', '.join(left_out)}")
    if constant:
        notes.append(f"{len(constant)} metric(s) equal in every finished run: "
                     + ", ".join(f"{k}={format_value(ok[0].get(k))}" for k in constant[:4])
                     + (", ..." if len(constant) > 4 else ""))
    return table, notes

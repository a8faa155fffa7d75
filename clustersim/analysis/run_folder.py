"""A run folder written by ``clustersim run``, loaded without re-simulating.

``load_run(folder)`` reads the results (from ``rows/``, or ``results.csv`` for folders written
before run ids), ``summary.json`` and ``config.resolved.yaml``; ``trace(run)`` reads that
point's ``trace-<run>.json`` (or ``trace.json`` for a single run) into ``TraceTables``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clustersim.analysis.trace_tables import TraceTables, read_chrome_trace
from clustersim.results_store import read_rows, rows_table


@dataclass
class RunFolder:
    path: Path
    _traces: dict[int | None, TraceTables] = field(default_factory=dict, repr=False)

    @cached_property
    def results(self) -> pd.DataFrame:
        """One row per point: parameters, metrics, status, id, version, config (JSON)."""
        rows = read_rows(self.path)
        if rows:
            return rows_table(rows).set_index("run", drop=False)
        return pd.read_csv(self.path / "results.csv").set_index("run", drop=False)

    @cached_property
    def plan(self) -> dict[str, Any]:
        """config.resolved.yaml: the experiment, its sweep and every point's id and params."""
        return yaml.safe_load((self.path / "config.resolved.yaml").read_text())

    @cached_property
    def summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def params(self) -> list[str]:
        """The swept key paths (columns of ``results``)."""
        return list(self.plan.get("sweep", {}).get("keys") or [])

    def config(self, run: int = 0) -> dict[str, Any]:
        """The fully resolved config of point ``run`` (units in SI, defaults filled)."""
        if "config" in self.results.columns:
            return json.loads(self.results.loc[run, "config"])
        runs = self.plan.get("runs") or [{"index": 0, "config": self.plan["base"]}]
        return next(r["config"] for r in runs if r["index"] == run)

    def trace_path(self, run: int | None = None) -> Path:
        if run is not None and (self.path / f"trace-{run}.json").exists():
            return self.path / f"trace-{run}.json"
        if (self.path / "trace.json").exists():
            return self.path / "trace.json"
        raise FileNotFoundError(f"{self.path} has no trace for run {run}; set output.trace: "
                                "true in the experiment to write traces")

    def table(self, stem: str, run: int | None = None) -> pd.DataFrame:
        """A per-item table the workload saved, e.g. ``table("requests", 3)`` (serving)."""
        path = self.path / (f"{stem}-{run}.csv" if run is not None else f"{stem}.csv")
        if run is not None and not path.exists():
            path = self.path / f"{stem}.csv"
        return pd.read_csv(path, index_col=0)

    def trace(self, run: int | None = None) -> TraceTables:
        """Point ``run``'s trace (None: the single run's trace.json), read once and kept."""
        if run not in self._traces:
            self._traces[run] = read_chrome_trace(self.trace_path(run))
        return self._traces[run]


def load_run(folder: str | Path) -> RunFolder:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder at {path}")
    return RunFolder(path)

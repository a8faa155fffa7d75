"""A sweep's results on disk, safe against ``kill -9`` at any moment.

Layout of a run folder::

    rows/<id>.json        one file per finished point, written then renamed (the source of truth)
    results.csv/.parquet  every row, rebuilt from rows/ as points finish (write then rename)
    summary.json          progress and counts, rewritten as points finish
    config.resolved.yaml  the experiment, its sweep, its base config (and small sweeps' points)
    points.csv            every point's id and parameters
    trace-<run>.json, <plot>-<run>.png   heavy files, written after the point's row

A worker writes a point's row before its heavy files, so a kill while a trace is written loses
no result. Partial files (``*.tmp``, ``*.partial.*``) are never read and are removed when the
folder is opened again. Re-running into a folder that holds rows refuses unless the user says
``resume`` (run only the missing points, keyed by the stable run id) or ``replace`` (delete the
old results first): rows are never dropped silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from clustersim.errors import ConfigError
from clustersim.point_runner import TMP_MARK, files_done_path, row_path, write_atomic, write_row

Mode = Literal["new", "resume", "replace"]
TAIL_COLUMNS = ["status", "error", "id", "version", "config"]  # after params and metrics


def _is_partial(path: Path) -> bool:
    return path.name.endswith(".tmp") or TMP_MARK + "." in path.name


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """Every complete row in ``out/rows`` (partial files are skipped), ordered by run index."""
    rows = []
    for path in sorted((Path(out) / "rows").glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):  # not written by us, or damaged: not a result
            continue
    return sorted(rows, key=lambda r: (r.get("run", 0), r.get("id", "")))


def _legacy_rows(path: Path) -> int:
    """Rows of a results.csv written without rows/ (by an older clustersim)."""
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def rows_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a table: run, parameters and metrics first, then status, error, id, version, config."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    head = [c for c in table.columns if c not in TAIL_COLUMNS]
    return table[head + [c for c in TAIL_COLUMNS if c in table.columns]]


class ResultsStore:
    """Rows of one run folder; ``add`` as points finish, ``publish`` to refresh the tables."""

    def __init__(self, out: str | Path, *, mode: Mode = "new", parquet: bool = True):
        self.out, self.mode, self.parquet = Path(out), mode, parquet
        self.rows: dict[str, dict[str, Any]] = {}
        self.other_rows = 0  # rows of points not in this plan (kept in rows/, not in the table)
        self._last_publish = 0.0
        self._publish_cost_s = 0.0

    # -- opening ------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder, remove partial files, and apply the mode to earlier results."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._open_locked()
        except BaseException:
            self.close()
            raise

    def _open_locked(self) -> None:
        self.remove_partial_files()
        earlier = read_rows(self.out)
        legacy = 0 if earlier else _legacy_rows(self.out / "results.csv")
        if earlier or legacy:
            count = len(earlier) or legacy
            if self.mode == "new":
                raise ConfigError(f"{self.out} already holds {count} result rows; pass --resume to "
                                  "run only the missing points, or --replace to delete them and "
                                  "start over", key="--out")
            if self.mode == "resume" and legacy:
                raise ConfigError(f"{self.out} was written without run ids (no rows/ folder), so "
                                  "it cannot be resumed; use --replace or another --out",
                                  key="--resume")
            if self.mode == "replace":
                self.remove_results()
                earlier = []
        self.rows = {row["id"]: row for row in earlier if "id" in row}

    def keep_only(self, ids: set[str]) -> None:
        """Leave rows of other points (an edited sweep, another version) out of the table;
        their files stay in rows/ and their number is reported."""
        other = [i for i in self.rows if i not in ids]
        self.other_rows = len(other)
        for run_id in other:
            del self.rows[run_id]

    def _lock(self) -> None:
        """One run per folder at a time: an exclusive lock on ``.lock``, held until this
        process exits (the kernel drops it when a killed run dies, so a resume never waits)."""
        handle = open(self.out / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{self.out} is being written by another clustersim run ({owner}); "
                              "wait for it, or use another --out", key="--out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock_handle = handle

    def close(self) -> None:
        """Release the folder's lock."""
        handle = getattr(self, "_lock_handle", None)
        if handle is not None:
            handle.close()
            self._lock_handle = None

    def remove_partial_files(self) -> list[Path]:
        stale = [p for p in [*self.out.glob("*"), *self.out.glob("rows/*")] if _is_partial(p)]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def remove_results(self) -> None:
        """Delete what a run writes here (rows, tables, summary, traces, plots), nothing else."""
        shutil.rmtree(self.out / "rows", ignore_errors=True)
        patterns = ["results.csv", "results.parquet", "summary.json", "config.resolved.yaml",
                    "points.csv", "trace.json", "trace-*.json", "*.png", "requests.csv",
                    "requests-*.csv"]
        for pattern in patterns:
            for path in self.out.glob(pattern):
                path.unlink(missing_ok=True)

    # -- rows ---------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return set(self.rows)

    def missing_files(self) -> set[str]:
        """Ids of rows whose trace and plots were not all written (killed in between)."""
        return {i for i in self.rows if not files_done_path(self.out, i).exists()}

    def add(self, row: dict[str, Any]) -> None:
        """Record a finished point (its worker may have written the row file already)."""
        if not row_path(self.out, row["id"]).exists():  # e.g. a Dask worker on another machine
            write_row(self.out, row)
        self.rows[row["id"]] = row

    def table(self) -> pd.DataFrame:
        return rows_table(sorted(self.rows.values(), key=lambda r: (r.get("run", 0), r["id"])))

    def publish(self, summary: dict[str, Any], *, force: bool = False) -> None:
        """Rewrite the tables and summary; throttled so that a huge sweep stays linear."""
        now = time.monotonic()
        if not force and now - self._last_publish < max(0.5, 5 * self._publish_cost_s):
            return
        table = self.table()
        if not table.empty:  # an empty table has no columns to write; rows/ tells the story
            write_atomic(self.out / "results.csv", table.to_csv(index=False))
        if self.parquet and not table.empty:
            tmp = self.out / "results.parquet.tmp"
            # Mixed-type columns (a failure message next to numbers) are stored as text.
            table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(tmp)
            tmp.replace(self.out / "results.parquet")
        write_atomic(self.out / "summary.json", json.dumps(summary, indent=1, default=str))
        self._last_publish = time.monotonic()
        self._publish_cost_s = self._last_publish - now

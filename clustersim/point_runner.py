"""One sweep point, run where the executor puts it (this process, a pool worker, a Dask worker).

The task is plain picklable data (the resolved config as JSON-able dicts); the worker
re-validates it (no unit parsing: the values are already SI numbers), simulates, writes the
point's row first (``rows/<id>.json``, write-then-rename) and the heavy files after (trace,
plots, each write-then-rename), and returns the row. A point that raises keeps a row with the
error. The generator is seeded from (experiment seed, point index), so the same point gives the
same row bit for bit whichever executor runs it.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import clustersim

TMP_MARK = ".partial"  # heavy files are written as NAME.partial.EXT then renamed


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs to run one point."""

    index: int
    run_id: str
    params: dict[str, Any]
    config: dict[str, Any]          # ExperimentConfig fields (validated values), no sweep/smoke
    config_json: str                # the resolved config as saved in the row
    base_dir: str | None
    out_dir: str | None
    suffix: str                     # "" for a single run, "-<index>" in a sweep
    debug: bool = False
    files_only: bool = False        # the row exists; a kill came before its trace/plots were out


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def row_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "rows" / f"{run_id}.json"


def write_row(out_dir: str | Path, row: dict) -> None:
    path = row_path(out_dir, row["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(row, default=str))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def simulate(task: PointTask, *, record_trace: bool | None = None):
    """Validate the task's config and simulate it; returns (config, the workload's RunResult).

    ``record_trace`` None: when the config asks for a trace and there is a folder to write to."""
    from clustersim.experiment_config import ExperimentConfig, parse_workload

    config = ExperimentConfig.model_validate(task.config)
    workload = parse_workload(config.workload, file=None)
    rng = np.random.default_rng([config.seed, task.index])
    cluster = config.cluster.build(base_dir=task.base_dir, rng=rng)
    if record_trace is None:
        record_trace = config.output.trace and task.out_dir is not None
    return config, workload.run(cluster, rng=rng, record_trace=record_trace)


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one point; return its row (``status`` ok or failed). Never raises for a run failure."""
    row: dict[str, Any] = {"run": task.index, **task.params}
    result, config = None, None
    try:
        config, result = simulate(task)
        row.update({k: _jsonable(v) for k, v in result.metrics.items()})
        row["status"] = "ok"
    except Exception as exc:  # a failed point is recorded, the sweep goes on
        row["status"] = "failed"
        row["error"] = f"{type(exc).__name__}: {exc}"
        if task.debug:
            row["traceback"] = traceback.format_exc()
    row.update({"id": task.run_id, "version": clustersim.__version__,
                "config": task.config_json})
    if task.out_dir is None:
        return row
    if not task.files_only:
        write_row(task.out_dir, row)  # the row first: a kill while tracing loses no result
    if result is not None:
        try:
            _write_heavy_files(task, config, result)
        except Exception as exc:  # noqa: BLE001 — the row stands; say what is missing
            row["files_error"] = f"{type(exc).__name__}: {exc}"
            if not task.files_only:
                write_row(task.out_dir, row)
    files_done_path(task.out_dir, task.run_id).touch()  # trace and plots are complete
    return row


def files_done_path(out_dir: str | Path, run_id: str) -> Path:
    """Marker of a point whose heavy files are all written (a resume rewrites them if absent)."""
    return Path(out_dir) / "rows" / f"{run_id}.files-done"


def _write_heavy_files(task: PointTask, config, result) -> None:
    out = Path(task.out_dir)
    if result.trace is not None and config.output.trace:
        result.trace.to_chrome_trace(out / f"trace{task.suffix}.json")
    if config.output.tables:
        for stem, table in result.tables.items():
            write_atomic(out / f"{stem}{task.suffix}.csv", table.to_csv())
    if config.output.plots:
        for stem, draw in result.plots.items():
            final = out / f"{stem}{task.suffix}.png"
            tmp = out / f"{stem}{task.suffix}{TMP_MARK}.{os.getpid()}.png"
            draw(str(tmp))
            tmp.replace(final)

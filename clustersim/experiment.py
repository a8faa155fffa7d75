"""Experiments: a YAML file -> validated points -> an executor -> a results folder.

Every point of a sweep is validated before the first one runs (``experiment_config.Plan``), so
a typo fails in a second, not after an hour. Points run through one executor interface (serial,
local processes, dask.distributed: ``executors``); each finished point's row is written at once
and atomically, before its trace and plots (``point_runner``), and the tables are rebuilt from
the rows as points finish (``results_store``); a failing point keeps a row with its error and
the others go on. Each point has a stable id (hash of its resolved config, its generator seed
and the package version), so ``resume`` runs exactly the points that have no row. Randomness
comes from one ``numpy.random.Generator`` per point, seeded from the experiment's seed and the
point's index: the same file gives the same rows, bit for bit, whichever executor runs it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

import clustersim
from clustersim.errors import ClusterSimError
from clustersim.executors import ExecutorChoice, open_executor
from clustersim.experiment_config import (  # noqa: F401  (the public names of this module)
    EXAMPLES_DIR, ExperimentConfig, OutputConfig, Plan, Run, load_plan, parse_workload)
from clustersim.point_runner import PointTask, run_point, simulate, write_atomic
from clustersim.results_store import Mode, ResultsStore

__all__ = ["EXAMPLES_DIR", "ExperimentConfig", "OutputConfig", "Plan", "Progress", "Run",
           "expand", "load_experiment", "load_plan", "parse_workload", "run_experiment", "run_one"]


def expand(raw: dict[str, Any], *, file: str | None = None) -> list[Run]:
    """All points of an experiment, each validated (not checked against its cluster)."""
    plan = Plan(raw, file=file)
    return [plan.run(i) for i in range(len(plan))]


def load_experiment(path: str | Path, *, smoke: bool = False) -> list[Run]:
    """All points of the file, validated and checked against their clusters."""
    plan = load_plan(path, smoke=smoke)
    runs = [plan.run(i) for i in range(len(plan))]
    for run in runs:
        plan.check(run)
    return runs


def task_for(plan: Plan, run: Run, out: Path | None, *, debug: bool = False) -> PointTask:
    config = run.config.model_dump(exclude={"sweep", "smoke"}) | {"workload": run.workload.model_dump()}
    return PointTask(index=run.index, run_id=run.run_id, params=run.params, config=config,
                     config_json=json.dumps(run.resolved, sort_keys=True, default=str),
                     base_dir=plan.base_dir, out_dir=str(out) if out else None,
                     suffix="" if len(plan) == 1 else f"-{run.index}", debug=debug)


def run_one(run: Run, *, record_trace: bool, base_dir: str | None = None):
    """Simulate one point in this process and return its ``RunResult`` (for notebooks)."""
    dump = run.config.model_dump(exclude={"sweep", "smoke"}) | {"workload": run.workload.model_dump()}
    point = PointTask(index=run.index, run_id=run.run_id, params=run.params, config=dump,
                      config_json="", base_dir=base_dir, out_dir=None, suffix="")
    return simulate(point, record_trace=record_trace)[1]


@dataclass
class Progress:
    """Counts handed to the ``on_progress`` callback after every change."""

    total: int            # points to run now (excluding those resumed from earlier rows)
    skipped: int = 0      # points that already had a row (resume)
    done: int = 0         # finished, ok or failed
    failed: int = 0       # finished with status failed
    running: int = 0      # submitted and not finished (at most the executor's workers)
    lost: int = 0         # the executor lost them (a worker died): no row, resume reruns them
    started_s: float = 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.done:
            return None
        elapsed = time.monotonic() - self.started_s
        return elapsed / self.done * (self.total - self.done - self.lost)


def _write_plan(plan: Plan, out: Path, source: str, ids: list[str]) -> None:
    runs = [{"index": i, "id": ids[i], "params": plan.sweep.points[i]} for i in range(len(plan))]
    if len(plan) <= 1000:  # every resolved config is also in each row's `config` column
        for entry in runs:
            entry["config"] = plan.run(entry["index"]).resolved
    data = {"experiment": source, "version": clustersim.__version__, "smoke": plan.smoke,
            "sweep": {"forms": plan.sweep.forms, "keys": plan.sweep.keys,
                      "sample_seed": plan.sweep.sample_seed}, "runs": runs}
    write_atomic(out / "config.resolved.yaml", yaml.safe_dump(data, sort_keys=False))


def run_experiment(path: str | Path | None = None, *, out: str | Path | None = None,
                   executor: ExecutorChoice | None = None, mode: Mode = "new",
                   smoke: bool = False, plan: Plan | None = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   on_run: Callable[[Run, dict], None] | None = None,
                   debug: bool = False) -> pd.DataFrame:
    """Run every point of the experiment in ``path`` (the quickstart when None).

    ``mode``: "new" refuses a folder that holds rows, "resume" runs only the points without
    one, "replace" deletes the earlier results first. Returns every row in the folder.
    """
    path = Path(path) if path else EXAMPLES_DIR / "quickstart.yaml"
    plan = plan or load_plan(path, smoke=smoke)
    ids = plan.validate_all()  # every point is checked before any runs
    out = Path(out) if out else Path("runs") / plan.config.name
    store = ResultsStore(out, mode=mode, parquet=plan.config.output.parquet)
    store.open()
    _write_plan(plan, out, str(path), ids)
    done_before = store.done_ids()
    pending = [i for i in range(len(plan)) if ids[i] not in done_before]
    lost_error: Exception | None = None
    progress = Progress(total=len(pending), skipped=len(plan) - len(pending),
                        started_s=time.monotonic())
    choice = executor or ExecutorChoice(workers=1)

    def summary(final: bool = False) -> dict[str, Any]:
        return {"experiment": plan.config.name, "version": clustersim.__version__,
                "points": len(plan), "rows": len(store.rows), "resumed": progress.skipped,
                "done": progress.done, "failed": sum(r.get("status") != "ok"
                                                     for r in store.rows.values()),
                "running": 0 if final else progress.running, "lost": progress.lost,
                "remaining": 0 if final else progress.total - progress.done,
                "finished": final, "executor": choice.describe(),
                "sweep_seed": plan.sweep.sample_seed, "smoke": plan.smoke}

    store.publish(summary(), force=True)
    if on_progress:
        on_progress(progress)
    with open_executor(choice, len(pending)) as (pool, slots):
        queue = iter(pending)
        in_flight: dict[Future, int] = {}
        try:
            while True:
                for index in queue if lost_error is None else ():
                    task = task_for(plan, plan.run(index), out, debug=debug)
                    try:
                        in_flight[pool.submit(run_point, task)] = index
                    except Exception as exc:  # noqa: BLE001 — e.g. a broken process pool
                        lost_error = exc
                        break
                    if len(in_flight) >= 2 * slots:
                        break
                if not in_flight:
                    break
                progress.running = min(len(in_flight), slots)
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = in_flight.pop(future)
                    try:
                        row = future.result()
                    except Exception as exc:  # noqa: BLE001 — infrastructure, not the model
                        progress.lost += 1
                        if debug:
                            raise
                        lost_error = exc
                        continue
                    store.add(row)
                    progress.done += 1
                    progress.failed += row.get("status") != "ok"
                    if on_run:
                        on_run(plan.run(index), row)
                progress.running = min(len(in_flight), slots)
                store.publish(summary())
                if on_progress:
                    on_progress(progress)
        finally:
            for future in in_flight:
                future.cancel()
            progress.lost = progress.total - progress.done
            store.publish(summary(final=True), force=True)
    if progress.lost:
        raise ClusterSimError(f"{progress.lost} point(s) were not run or lost by the executor "
                              f"({type(lost_error).__name__}: {lost_error}); their rows are "
                              f"missing: run again with --resume to run only them")
    return store.table()

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


def task_for(plan: Plan, run: Run, out: Path | None, *, debug: bool = False,
             files_only: bool = False) -> PointTask:
    # Only the fields that were set: the worker's model then has the same fields set.
    config = (run.config.model_dump(exclude={"sweep", "smoke"}, exclude_unset=True)
              | {"workload": run.workload.model_dump(exclude_unset=True)})
    return PointTask(index=run.index, run_id=run.run_id, params=run.params, config=config,
                     config_json=run.resolved_json,
                     base_dir=plan.base_dir, out_dir=str(out) if out else None,
                     suffix="" if len(plan) == 1 else f"-{run.index}", debug=debug,
                     files_only=files_only)


def run_one(run: Run, *, record_trace: bool, base_dir: str | None = None):
    """Simulate one point in this process and return its ``RunResult`` (for notebooks)."""
    dump = (run.config.model_dump(exclude={"sweep", "smoke"}, exclude_unset=True)
            | {"workload": run.workload.model_dump(exclude_unset=True)})
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
    files_rewritten: int = 0  # rows whose trace/plots were rewritten (a kill came between)
    lost: int = 0         # the executor lost them (a worker died): no row, resume reruns them
    started_s: float = 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.done:
            return None
        elapsed = time.monotonic() - self.started_s
        return elapsed / self.done * (self.total - self.done - self.lost)


PLAN_IN_YAML = 200  # larger sweeps list their points in points.csv (YAML is slow to write)


def _write_plan(plan: Plan, out: Path, source: str, ids: list[str]) -> None:
    """config.resolved.yaml: the experiment, its sweep and (for up to PLAN_IN_YAML points)
    every point's id, parameters and resolved config; points.csv lists every point's id and
    parameters. Each row also carries its resolved config."""
    data = {"experiment": source, "version": clustersim.__version__, "smoke": plan.smoke,
            "sweep": {"forms": plan.sweep.forms, "keys": plan.sweep.keys,
                      "sample_seed": plan.sweep.sample_seed, "points": len(plan)},
            "base": plan.run(0).resolved}
    if len(plan) <= PLAN_IN_YAML:
        data["runs"] = [{"index": i, "id": ids[i], "params": plan.sweep.points[i],
                         "config": plan.run(i).resolved} for i in range(len(plan))]
    write_atomic(out / "config.resolved.yaml", yaml.safe_dump(data, sort_keys=False))
    points = pd.DataFrame(plan.sweep.points).assign(id=ids).rename_axis("run")
    write_atomic(out / "points.csv", points.to_csv())


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
    choice = executor or ExecutorChoice(workers=1)
    # The executor first: an unreachable scheduler is refused before the folder is touched.
    with open_executor(choice, len(plan)) as (pool, slots):
        store = ResultsStore(out, mode=mode, parquet=plan.config.output.parquet)
        store.open()
        try:
            _write_plan(plan, out, str(path), ids)
            store.keep_only(set(ids))
            done_before, no_files = store.done_ids(), store.missing_files()
            sweep = _SweepRun(plan, store, choice, debug=debug, on_progress=on_progress,
                              on_run=on_run, pending=[i for i in range(len(plan))
                                                      if ids[i] not in done_before],
                              files_only=[i for i in range(len(plan)) if ids[i] in no_files])
            sweep.run(pool, slots)
        finally:
            store.close()
    if sweep.progress.lost:
        error = sweep.lost_error
        raise ClusterSimError(f"{sweep.progress.lost} point(s) were not run or lost by the "
                              f"executor ({type(error).__name__}: {error}); their rows are "
                              "missing: run again with --resume to run only them")
    return store.table()


class _SweepRun:
    """Keeps the executor's workers busy and records each point as it finishes."""

    def __init__(self, plan: Plan, store: ResultsStore, choice: ExecutorChoice, *,
                 pending: list[int], files_only: list[int], debug: bool, on_progress, on_run):
        self.plan, self.store, self.choice, self.pending = plan, store, choice, pending
        self.files_only = set(files_only)
        self.debug, self.on_progress, self.on_run = debug, on_progress, on_run
        self.progress = Progress(total=len(pending), skipped=len(plan) - len(pending),
                                 started_s=time.monotonic())
        self.lost_error: Exception | None = None

    def summary(self, final: bool = False) -> dict[str, Any]:
        progress, rows = self.progress, self.store.rows
        return {"experiment": self.plan.config.name, "version": clustersim.__version__,
                "points": len(self.plan), "rows": len(rows), "resumed": progress.skipped,
                "done": progress.done, "failed": sum(r.get("status") != "ok" for r in rows.values()),
                "running": 0 if final else progress.running, "lost": progress.lost,
                "remaining": 0 if final else progress.total - progress.done,
                "other_rows": self.store.other_rows,
                "files_rewritten": progress.files_rewritten,
                "finished": final, "executor": self.choice.describe(),
                "sweep_seed": self.plan.sweep.sample_seed, "smoke": self.plan.smoke}

    def _report(self) -> None:
        self.store.publish(self.summary())
        if self.on_progress:
            self.on_progress(self.progress)

    def run(self, pool, slots: int) -> None:
        plan, progress = self.plan, self.progress
        # Points whose row exists but whose trace/plots a kill cut short are simulated again
        # for their files only (their rows stay as they are); then the missing points.
        queue = iter(sorted(self.files_only) + self.pending)
        in_flight: dict[Future, int] = {}
        self.store.publish(self.summary(), force=True)
        if self.on_progress:
            self.on_progress(progress)
        try:
            while True:
                for index in queue if self.lost_error is None else ():
                    task = task_for(plan, plan.run(index), self.store.out, debug=self.debug,
                                    files_only=index in self.files_only)
                    try:
                        in_flight[pool.submit(run_point, task)] = index
                    except Exception as exc:  # noqa: BLE001 — e.g. a broken process pool
                        self.lost_error = exc
                        break
                    if len(in_flight) >= 2 * slots:
                        break
                if not in_flight:
                    break
                progress.running = min(len(in_flight), slots)
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._finish(future, in_flight.pop(future))
                progress.running = min(len(in_flight), slots)
                self._report()
        finally:
            for future in in_flight:
                future.cancel()
            progress.lost = progress.total - progress.done
            self.store.publish(self.summary(final=True), force=True)

    def _finish(self, future: Future, index: int) -> None:
        try:
            row = future.result()
        except Exception as exc:  # noqa: BLE001 — infrastructure (a worker died), not the model
            if self.debug:
                raise
            self.lost_error = exc
            return
        if index in self.files_only:
            self.progress.files_rewritten += 1
            return
        self.store.add(row)
        self.progress.done += 1
        self.progress.failed += row.get("status") != "ok"
        if self.on_run:
            self.on_run(self.plan.run(index), row)

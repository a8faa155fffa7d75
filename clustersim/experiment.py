"""Experiments: a YAML file -> validated runs (a sweep grid) -> a results table on disk.

Every run of a sweep is validated before the first one starts, so a typo fails in a second,
not after an hour. Runs execute one after another; each finished row is written to
``results.csv`` (and ``results.parquet``) at once and atomically, so a failing run never loses
the others: its row records the failure. The fully resolved config of every run is saved next
to the results. Randomness comes from one ``numpy.random.Generator`` per run, seeded from the
experiment's seed and the run's index, so the same file and seed give the same results.
"""

from __future__ import annotations

import copy
import itertools
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

import numpy as np
import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from clustersim.config_errors import load_yaml, validate
from clustersim.errors import ConfigError
from clustersim.input_files import check_run_name, resolve_paths
from clustersim.resource_guard import check_resources
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.workload import RunResult, Workload, workload_class

EXAMPLES_DIR = Path(__file__).parent / "examples"


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trace: bool = Field(True, description="write a Chrome trace (trace.json) for single runs, "
                                          "and trace-<run>.json per sweep run when set")
    plots: bool = Field(True, description="write the workload's plots (PNG)")
    parquet: bool = Field(True, description="write results.parquet beside results.csv")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_run_name)] = Field(
        description="experiment name, a plain folder name; the default output folder is runs/<name>")
    description: str = Field("", description="free text")
    seed: int = Field(0, ge=0, description="seed of the run's random generator (routing, arrivals)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="the hardware")
    workload: dict[str, Any] = Field(description="what runs; `kind:` picks the workload type")
    sweep: dict[str, list[Any]] | None = Field(
        None, description="grid over key paths, e.g. {workload.parallel.tp: [1, 2, 4, 8]}")
    output: OutputConfig = Field(default_factory=OutputConfig, description="what to write")


@dataclass(frozen=True)
class Run:
    """One point of a sweep, fully resolved and validated."""

    index: int
    params: dict[str, Any]
    config: ExperimentConfig
    workload: Workload
    raw: dict[str, Any]


def _set_path(data: dict, path: str, value: Any, *, file: str | None) -> None:
    parts = path.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"cannot sweep inside {'.'.join(parts[:depth + 1])!r}: it is a value, "
                              "not a section", file=file, key=f"sweep.{path}")
        node = child
    node[parts[-1]] = value


def parse_workload(data: Any, *, file: str | None, prefix: tuple = ("workload",)) -> Workload:
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError("expected a mapping with a `kind:` key", file=file, key=".".join(prefix))
    try:
        cls = workload_class(str(data["kind"]))
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), file=file, key=".".join(prefix + ("kind",))) from None
    return validate(cls, data, file=file, prefix=prefix)


def expand(raw: dict[str, Any], *, file: str | None = None) -> list[Run]:
    """All runs of an experiment (one without ``sweep:``), each validated."""
    config = validate(ExperimentConfig, raw, file=file)
    grid = config.sweep or {}
    for key, values in grid.items():
        if not values:
            raise ConfigError("a sweep needs at least one value", file=file, key=f"sweep.{key}")
    runs = []
    combos = itertools.product(*grid.values()) if grid else [()]
    for index, values in enumerate(combos):
        params = dict(zip(grid.keys(), values))
        data = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
        for key, value in params.items():
            _set_path(data, key, value, file=file)
        run_config = validate(ExperimentConfig, data, file=file)
        workload = parse_workload(run_config.workload, file=file)
        runs.append(Run(index, params, run_config, workload, data))
    return runs


def load_experiment(path: str | Path) -> list[Run]:
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level", file=str(path))
    resolve_paths(raw, Path(path).parent)  # paths in a YAML are relative to its folder
    runs = expand(raw, file=str(path))
    base_dir = str(Path(path).parent)
    for run in runs:  # a bad cluster or layout fails here, before any simulation
        check_resources(run.config.cluster, run.workload, file=str(path))  # before building it
        try:
            cluster = run.config.cluster.build(base_dir=base_dir)
        except ConfigError as exc:
            raise ConfigError(exc.detail, file=exc.file or str(path), key=exc.key) from None
        except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
            raise ConfigError(str(exc.args[0] if exc.args else exc), file=str(path),
                              key="cluster") from None
        try:
            run.workload.check(cluster)
        except ConfigError as exc:
            raise ConfigError(exc.detail, file=str(path), key=exc.key) from None
    return runs


def run_one(run: Run, *, record_trace: bool, base_dir: str | None = None) -> RunResult:
    rng = np.random.default_rng([run.config.seed, run.index])
    cluster = run.config.cluster.build(base_dir=base_dir, rng=rng)
    return run.workload.run(cluster, rng=rng, record_trace=record_trace)


def _write_table(rows: list[dict], out: Path, parquet: bool) -> None:
    table = pd.DataFrame(rows)
    tmp = out / "results.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "results.csv")
    if parquet:
        tmp = out / "results.parquet.tmp"
        # Mixed-type columns (a failure message next to numbers) are stored as text.
        table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(tmp)
        tmp.replace(out / "results.parquet")


def run_experiment(path: str | Path | None, *, out: str | Path | None = None,
                   on_run: Callable[[Run, dict], None] | None = None,
                   progress: Callable[[Iterator], Iterator] | None = None,
                   debug: bool = False) -> pd.DataFrame:
    """Run every point of the experiment in ``path`` (the quickstart when None)."""
    path = Path(path) if path else EXAMPLES_DIR / "quickstart.yaml"
    runs = load_experiment(path)
    config = runs[0].config
    out = Path(out) if out else Path("runs") / config.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(
        {"experiment": str(path), "runs": [{"index": r.index, "params": r.params,
                                            "config": r.config.model_dump(mode="json")
                                            | {"workload": r.workload.model_dump(mode="json")}}
                                           for r in runs]}, sort_keys=False))
    single = len(runs) == 1
    rows: list[dict] = []
    iterator = progress(iter(runs)) if progress else iter(runs)
    for run in iterator:
        row: dict[str, Any] = {"run": run.index, **run.params}
        try:
            want_trace = config.output.trace
            result = run_one(run, record_trace=want_trace, base_dir=str(path.parent))
            row.update(result.metrics)
            row["status"] = "ok"
            suffix = "" if single else f"-{run.index}"
            if result.trace is not None and want_trace:
                result.trace.to_chrome_trace(out / f"trace{suffix}.json")
            if config.output.plots:
                for stem, draw in result.plots.items():
                    draw(str(out / f"{stem}{suffix}.png"))
        except Exception as exc:  # a failed run is recorded, the sweep goes on
            if debug:
                traceback.print_exc()
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        _write_table(rows, out, config.output.parquet)
        if on_run:
            on_run(run, row)
    (out / "summary.json").write_text(json.dumps({"experiment": config.name, "runs": len(rows),
                                                  "failed": sum(r["status"] != "ok" for r in rows)}))
    return pd.DataFrame(rows)

"""The experiment file's schema, and its points resolved and validated fast.

A sweep of 100,000 points must be refused or accepted in seconds, so validation is linear and
cheap per point: the base config is validated once (units parsed once), each distinct value of
each swept key once, in the context of the base (so its error names the key and the nearest
valid key); a point is then the base's validated values with the point's already-converted
values set, re-validated by pydantic alone (no unit parsing), and checked against its cluster,
built once per distinct cluster config. Where that shortcut cannot be taken (a sweep over the
workload's ``kind`` or over a whole section), each point is validated from its raw YAML.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

import clustersim
from clustersim.config_errors import load_yaml, validate
from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.input_files import check_run_name, resolve_paths
from clustersim.point_checks import CheckMemo
from clustersim.resource_guard import check_resources
from clustersim.sweeps import Sweep, expand_sweep
from clustersim.workloads.workload import Workload, workload_class

EXAMPLES_DIR = Path(__file__).parent / "examples"
SMOKE_POINTS = 2  # a smoke run keeps this many points of each sweep
WORKLOAD_CACHE = 20_000  # distinct point workloads kept (each a few kB)


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trace: bool = Field(True, description="write a Chrome trace (trace.json) for single runs, "
                                          "and trace-<run>.json per sweep run when set")
    plots: bool = Field(True, description="write the workload's plots (PNG)")
    parquet: bool = Field(True, description="write results.parquet beside results.csv")
    tables: bool = Field(True, description="write the workload's per-item tables as CSV, e.g. "
                                           "requests-<run>.csv (one row per request, serving)")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_run_name)] = Field(
        description="experiment name, a plain folder name; the default output folder is runs/<name>")
    description: str = Field("", description="free text")
    seed: int = Field(0, ge=0, description="seed of the run's random generator (routing, arrivals)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="the hardware")
    workload: dict[str, Any] = Field(description="what runs; `kind:` picks the workload type")
    sweep: dict[str, Any] | None = Field(
        None, description="points to run: a grid {workload.parallel.tp: [1, 2, 4, 8]}, and/or "
                          "zip: {...}, random: {...}, latin_hypercube: {...} (see sweeps.py)")
    smoke: dict[str, Any] | None = Field(
        None, description="key path -> value overrides applied only by `run --smoke` (a quick "
                          "health check: fewer requests, smaller models); `sweep:` here replaces "
                          "the sweep, which smoke mode also cuts to its first 2 points")
    output: OutputConfig = Field(default_factory=OutputConfig, description="what to write")


@dataclass(frozen=True)
class Run:
    """One point of a sweep, fully resolved and validated."""

    index: int
    params: dict[str, Any]
    config: ExperimentConfig
    workload: Workload

    @cached_property
    def resolved_json(self) -> str:
        """The point's full config as JSON (units converted, defaults filled; pydantic's own
        serialiser in schema order, fast enough for 100,000 points)."""
        return join_resolved(config_json(self.config), self.workload)

    @property
    def resolved(self) -> dict[str, Any]:
        return json.loads(self.resolved_json)

    @property
    def rng_key(self) -> list[int]:
        """What seeds the run's Generator: the same point at the same index draws the same."""
        return [self.config.seed, self.index]

    @cached_property
    def run_id(self) -> str:
        """A stable id: hash of the resolved config, the generator's seed and the version."""
        text = f"{self.resolved_json}|{self.rng_key}|{clustersim.__version__}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_json(config: ExperimentConfig) -> str:
    """The config's part of a run's resolved JSON (all but the workload), without its brace."""
    return config.model_dump_json(exclude={"sweep", "smoke", "workload"})[:-1]


def join_resolved(config_part: str, workload: Workload) -> str:
    return f'{config_part},"workload":{workload.model_dump_json()}}}'


def set_path(data: dict, path: str, value: Any, *, file: str | None, key: str | None = None) -> None:
    parts = path.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set a key inside {'.'.join(parts[:depth + 1])!r}: it is a "
                              "value, not a section", file=file, key=key or f"sweep.{path}")
        node = child
    node[parts[-1]] = value


def _get_path(data: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def parse_workload(data: Any, *, file: str | None, prefix: tuple = ("workload",)) -> Workload:
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError("expected a mapping with a `kind:` key", file=file, key=".".join(prefix))
    try:
        cls = workload_class(str(data["kind"]))
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), file=file, key=".".join(prefix + ("kind",))) from None
    return validate(cls, data, file=file, prefix=prefix)


def _value_key(value: Any) -> Any:
    """A hashable key for a swept value (cheap for the plain values most sweeps use)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return (type(value).__name__, value)
    return json.dumps(value, sort_keys=True, default=repr)


def apply_smoke(raw: dict, *, file: str | None) -> dict:
    """``raw`` with its ``smoke:`` overrides applied (``sweep:`` there replaces the sweep)."""
    smoke = raw.get("smoke") or {}
    if not isinstance(smoke, dict):
        raise ConfigError(f"expected a mapping of key path -> value, got {smoke!r}", file=file,
                          key="smoke")
    data = copy.deepcopy(raw)
    for path, value in smoke.items():
        if path == "sweep":
            data["sweep"] = value
        else:
            set_path(data, str(path), value, file=file, key=f"smoke.{path}")
    return data


class Plan:
    """The points of one experiment file, validated before any of them runs."""

    def __init__(self, raw: dict, *, file: str | None = None, smoke: bool = False):
        if not isinstance(raw, dict):
            raise ConfigError("expected a mapping at the top level", file=file)
        self.file, self.smoke = file, smoke
        self.base_dir = str(Path(file).parent) if file else None
        if smoke:
            raw = apply_smoke(raw, file=file)
        if self.base_dir is not None:  # paths in a YAML are relative to its folder
            raw = resolve_paths(copy.deepcopy(raw), self.base_dir)
        self.config = validate(ExperimentConfig, raw, file=file)
        self.sweep: Sweep = expand_sweep(raw.get("sweep"), seed=self.config.seed, file=file)
        if smoke:
            self.sweep = Sweep(self.sweep.points[:SMOKE_POINTS], self.sweep.keys,
                               self.sweep.sample_seed, self.sweep.forms)
        self._raw = {k: v for k, v in raw.items() if k not in ("sweep", "smoke")}
        self.workload = parse_workload(self.config.workload, file=file)
        self._clusters: dict[str, Any] = {}
        self._configs: dict[tuple, ExperimentConfig] = {}
        self._workloads: dict[tuple, tuple[Workload, str]] = {}
        self._ids: list[str] | None = None
        self._cluster_keys = {id(self.config): self.config.cluster.model_dump_json()}
        self._config_json: dict[int, str] = {}  # id(config) -> its part of resolved_json
        self._check_memo = CheckMemo()
        self._converted = self._convert_sweep_values()
        if self._converted is not None:
            # A validator that derives one field from another would make the shortcut wrong:
            # compare it with the full path on the first and last points, and fall back.
            for index in {0, len(self) - 1}:
                if _signature(self.run(index)) != _signature(self._slow_run(index)):
                    self._converted = None
                    break

    def __len__(self) -> int:
        return len(self.sweep.points)

    # -- validation of each distinct swept value, once ----------------------------------------
    def _fast_path_possible(self) -> bool:
        keys = self.sweep.keys
        if any(k in ("workload", "cluster", "workload.kind") for k in keys):
            return False
        if any(a != b and b.startswith(a + ".") for a in keys for b in keys):
            return False
        # The shortcut relies on validated values validating again to the same model, with the
        # same fields set (a workload may treat a default it was given unlike one left unset).
        dump = self.workload.model_dump(exclude_unset=True)
        try:
            again = type(self.workload).model_validate(dump)
        except Exception:  # noqa: BLE001 — any failure means: take the slow path
            return False
        return again == self.workload and again.model_dump(exclude_unset=True) == dump

    def _convert_sweep_values(self) -> dict[str, dict[str, Any]] | None:
        """key -> {value key: converted value}, or None when each point needs the slow path."""
        fast = self._fast_path_possible()
        converted: dict[str, dict[str, Any]] = {}
        for key in self.sweep.keys:
            seen = converted.setdefault(key, {})
            for point in self.sweep.points:
                value = point[key]
                vkey = _value_key(value)
                if vkey in seen:
                    continue
                data = copy.deepcopy(self._raw)
                set_path(data, key, value, file=self.file)
                config = validate(ExperimentConfig, data, file=self.file)
                if key.startswith("workload."):
                    workload = parse_workload(config.workload, file=self.file)
                    dump = workload.model_dump(exclude_unset=True)
                    found, seen[vkey] = _get_path(dump, key.split(".")[1:])
                else:
                    found, seen[vkey] = _get_path(config.model_dump(exclude_unset=True), key.split("."))
                fast = fast and found
        return converted if fast else None

    # -- points ---------------------------------------------------------------------------
    def run(self, index: int) -> Run:
        """Point ``index``, validated (its cluster is checked by ``check``)."""
        try:
            return self._run(index)
        except ConfigError as exc:
            params = self.sweep.points[index]
            raise ConfigError(f"{exc.detail} (sweep point {index}: {params})", file=exc.file,
                              key=exc.key) from None

    def _run(self, index: int) -> Run:
        params = self.sweep.points[index]
        if not params:
            return Run(index, params, self.config, self.workload)
        if self._converted is None:
            return self._slow_run(index)
        vkeys = {k: _value_key(v) for k, v in params.items()}
        workload, workload_json = self._point_workload(
            tuple((k, v) for k, v in vkeys.items() if k.startswith("workload.")))
        config = self._config_for({k: self._converted[k][v] for k, v in vkeys.items()
                                   if not k.startswith("workload.")})
        run = Run(index, params, config, workload)
        # Configs and workloads are shared by many points: each is serialised once, and a run
        # id costs one string join and one hash.
        cid = id(config)
        if cid not in self._config_json:
            self._config_json[cid] = config_json(config)
        run.__dict__["resolved_json"] = f'{self._config_json[cid]},"workload":{workload_json}}}'
        return run

    def _point_workload(self, wkey: tuple) -> tuple[Workload, str]:
        """The workload for these swept workload values, and its JSON; points that differ only
        outside the workload (the cluster, the seed) share one."""
        found = self._workloads.get(wkey)
        if found is None:
            workload = self.workload
            if wkey:
                data = self.workload.model_dump(exclude_unset=True)
                for key, vkey in wkey:
                    set_path(data, key.split(".", 1)[1], self._converted[key][vkey], file=self.file)
                workload = self._revalidate(data)
            if len(self._workloads) >= WORKLOAD_CACHE:  # bounded memory for huge sweeps
                self._workloads.clear()
            found = self._workloads[wkey] = (workload, workload.model_dump_json())
        return found

    def _revalidate(self, data: dict) -> Workload:
        """The point's workload from already validated values: each swept value passed the full
        checks (units, finite numbers) once, so pydantic alone runs here; only if it refuses the
        combination is the full validation rerun, for its error message."""
        try:
            return type(self.workload).model_validate(data)
        except ValidationError:
            return validate(type(self.workload), data, file=self.file, prefix=("workload",))

    def _slow_run(self, index: int) -> Run:
        params = self.sweep.points[index]
        data = copy.deepcopy(self._raw)
        for key, value in params.items():
            set_path(data, key, value, file=self.file)
        config = validate(ExperimentConfig, data, file=self.file)
        return Run(index, params, config, parse_workload(config.workload, file=self.file))

    def _config_for(self, values: dict[str, Any]) -> ExperimentConfig:
        if not values:
            return self.config
        ckey = tuple((k, _value_key(v)) for k, v in values.items())
        if ckey not in self._configs:
            data = self.config.model_dump(exclude={"sweep", "smoke"}, exclude_unset=True)
            for key, value in values.items():
                set_path(data, key, value, file=self.file)
            config = self._configs[ckey] = validate(ExperimentConfig, data, file=self.file)
            self._cluster_keys[id(config)] = config.cluster.model_dump_json()
        return self._configs[ckey]

    def cluster(self, config: ExperimentConfig):
        """The cluster of ``config`` for checks, built once per distinct cluster config."""
        # Configs made by the plan live as long as it does, so their id() is a safe key.
        ckey = self._cluster_keys.get(id(config)) or config.cluster.model_dump_json()
        if ckey not in self._clusters:
            try:
                self._clusters[ckey] = config.cluster.build(base_dir=self.base_dir)
            except ConfigError as exc:
                raise ConfigError(exc.detail, file=exc.file or self.file, key=exc.key) from None
            except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
                raise ConfigError(str(exc.args[0] if exc.args else exc), file=self.file,
                                  key="cluster") from None
        return self._clusters[ckey]

    def check(self, run: Run) -> None:
        """A layout that cannot run on the point's cluster fails here, before any simulation.
        Points that agree on every workload field these checks read, on the same cluster, are
        checked once (see point_checks.py)."""
        def checks(workload: Workload) -> None:
            check_resources(run.config.cluster, workload, file=self.file)  # before building it
            workload.check(self.cluster(run.config))

        cluster_key = self._cluster_keys.get(id(run.config)) or run.config.cluster.model_dump_json()
        try:
            self._check_memo.run(run.workload, cluster_key, checks)
        except ConfigError as exc:
            where = f" (sweep point {run.index}: {run.params})" if run.params else ""
            raise ConfigError(exc.detail + where, file=self.file, key=exc.key) from None

    def validate_all(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Validate and check every point; return their run ids. ``progress(done, total)``."""
        if self._ids is None:
            total, ids = len(self), []
            for index in range(total):
                run = self.run(index)
                self.check(run)
                ids.append(run.run_id)
                if progress and (index % 500 == 499 or index == total - 1):
                    progress(index + 1, total)
            self._ids = ids
        return self._ids


def _signature(run: Run) -> tuple[str, Any, Any]:
    """What must agree between the fast and the full validation of a point."""
    return (run.resolved_json, run.workload.model_dump(exclude_unset=True),
            run.config.model_dump(exclude={"workload", "sweep", "smoke"}, exclude_unset=True))


def load_plan(path: str | Path, *, smoke: bool = False) -> Plan:
    return Plan(load_yaml(path), file=str(path), smoke=smoke)

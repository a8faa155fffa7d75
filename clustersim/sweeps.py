"""Sweeps: the ``sweep:`` section of an experiment -> the list of points (key path -> value).

Forms, combined as a product in this order (each optional):

* a grid: ``{workload.parallel.tp: [1, 2, 4], workload.seq_len: [2048, 4096]}`` (the keys may
  also sit under ``grid:``); every combination, the last key varying fastest;
* ``zip: {key: [..], key2: [..]}`` (or a list of such groups): lists of equal length walked
  together, one point per position;
* ``random: {samples: N, seed: S, params: {key: RANGE}}`` and ``latin_hypercube:`` (same
  fields): N points drawn from ranges. A RANGE is ``{low: a, high: b}`` with optional
  ``log: true`` (log-uniform) and ``integer: true`` (rounded down), or ``{values: [...]}``
  (a choice). Latin-hypercube sampling (McKay, Beckman & Conover, Technometrics 1979) puts
  exactly one sample in each of N equal strata of every parameter. The seed defaults to the
  experiment's and is recorded in ``summary.json``.

Every problem (an empty list, a zip of unequal lengths, a range with low > high, a value that
is not a list) is a ``ConfigError`` naming ``sweep.<key>``, raised before any point runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clustersim.errors import ConfigError

SAMPLERS = ("random", "latin_hypercube")
SECTIONS = ("grid", "zip", *SAMPLERS)


@dataclass(frozen=True)
class Sweep:
    """The expanded points of a sweep, and what produced them."""

    points: list[dict[str, Any]]
    keys: list[str]
    sample_seed: int | None = None
    forms: list[str] = field(default_factory=list)


def _values(values: Any, *, file: str | None, key: str) -> list:
    if not isinstance(values, list):
        raise ConfigError(f"expected a list of values, got {values!r}", file=file, key=key)
    if not values:
        raise ConfigError("a sweep needs at least one value, got an empty list", file=file, key=key)
    return values


def _grid_axes(grid: Any, *, file: str | None, prefix: str) -> list[list[dict]]:
    if not isinstance(grid, dict):
        raise ConfigError(f"expected a mapping of key path -> list, got {grid!r}", file=file,
                          key=prefix)
    return [[{str(key): v} for v in _values(values, file=file, key=f"{prefix}.{key}")]
            for key, values in grid.items()]


def _zip_axis(group: Any, *, file: str | None, key: str) -> list[dict]:
    if not isinstance(group, dict) or not group:
        raise ConfigError(f"expected a mapping of key path -> list, got {group!r}", file=file,
                          key=key)
    columns = {str(k): _values(v, file=file, key=f"{key}.{k}") for k, v in group.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ConfigError(f"zipped lists must have equal lengths, got {given}", file=file, key=key)
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def _unit_to_range(u: np.ndarray, spec: Any, *, file: str | None, key: str) -> list:
    """Map uniform draws in [0, 1) onto one parameter's range."""
    if not isinstance(spec, dict):
        raise ConfigError(f"expected {{low: .., high: ..}} or {{values: [..]}}, got {spec!r}",
                          file=file, key=key)
    unknown = set(spec) - {"low", "high", "log", "integer", "values"}
    if unknown:
        raise ConfigError(f"unknown range field(s) {sorted(unknown)}; valid: low, high, log, "
                          "integer, values", file=file, key=key)
    if "values" in spec:
        choices = _values(spec["values"], file=file, key=f"{key}.values")
        return [choices[min(int(x * len(choices)), len(choices) - 1)] for x in u]
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"a range needs numeric low and high, got {spec!r}", file=file,
                          key=key) from None
    if not low <= high:
        raise ConfigError(f"low must be <= high, got low={low:g}, high={high:g}", file=file, key=key)
    if spec.get("integer"):
        lo, hi = math.ceil(low), math.floor(high)
        if lo > hi:
            raise ConfigError(f"no integer lies in [{low:g}, {high:g}]", file=file, key=key)
        if not spec.get("log"):  # every integer in [lo, hi] gets the same weight
            return [int(min(lo + math.floor(x * (hi - lo + 1)), hi)) for x in u]
    if spec.get("log"):
        if low <= 0:
            raise ConfigError(f"a log range needs low > 0, got {low:g}", file=file, key=key)
        values = np.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    else:
        values = low + u * (high - low)
    if spec.get("integer"):
        return [int(min(max(math.floor(v), lo), hi)) for v in values]
    return [float(v) for v in values]


def _sample_axis(kind: str, spec: Any, *, default_seed: int, file: str | None) -> tuple[list, int]:
    key = f"sweep.{kind}"
    if not isinstance(spec, dict):
        raise ConfigError(f"expected {{samples: N, seed: S, params: {{...}}}}, got {spec!r}",
                          file=file, key=key)
    unknown = set(spec) - {"samples", "seed", "params"}
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)}; valid: samples, seed, params",
                          file=file, key=key)
    samples, seed = spec.get("samples"), spec.get("seed", default_seed)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}", file=file,
                          key=f"{key}.samples")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}", file=file, key=f"{key}.seed")
    params = spec.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError("expected a mapping of key path -> range", file=file, key=f"{key}.params")
    rng = np.random.default_rng(seed)
    columns = {}
    for name, range_spec in params.items():
        if kind == "random":
            u = rng.random(samples)
        else:  # one draw in each of `samples` strata, strata in random order
            u = (rng.permutation(samples) + rng.random(samples)) / samples
        columns[str(name)] = _unit_to_range(u, range_spec, file=file, key=f"{key}.params.{name}")
    return [dict(zip(columns, row)) for row in zip(*columns.values())], seed


def expand_sweep(sweep: Any, *, seed: int = 0, file: str | None = None) -> Sweep:
    """The points of ``sweep`` (None: one point with no parameters)."""
    if sweep is None:
        return Sweep(points=[{}], keys=[])
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"expected a mapping (a grid, zip:, random: or latin_hypercube:), got "
                          f"{sweep!r}", file=file, key="sweep")
    axes: list[list[dict]] = []
    forms, sample_seed = [], None
    loose = {k: v for k, v in sweep.items() if k not in SECTIONS}
    if loose:
        axes += _grid_axes(loose, file=file, prefix="sweep")
        forms.append("grid")
    if "grid" in sweep:
        axes += _grid_axes(sweep["grid"], file=file, prefix="sweep.grid")
        forms.append("grid")
    if "zip" in sweep:
        groups = sweep["zip"] if isinstance(sweep["zip"], list) else [sweep["zip"]]
        for i, group in enumerate(groups):
            axes.append(_zip_axis(group, file=file,
                                  key="sweep.zip" if len(groups) == 1 else f"sweep.zip.{i}"))
        forms.append("zip")
    for kind in SAMPLERS:
        if kind in sweep:
            axis, sample_seed = _sample_axis(kind, sweep[kind], default_seed=seed, file=file)
            axes.append(axis)
            forms.append(kind)
    keys: list[str] = []
    for axis in axes:
        for key in axis[0]:
            if key in keys:
                raise ConfigError("this key is swept twice", file=file, key=f"sweep.{key}")
            keys.append(key)
    points = [dict(itertools.chain.from_iterable(p.items() for p in combo))
              for combo in itertools.product(*axes)]
    return Sweep(points=points, keys=keys, sample_seed=sample_seed, forms=forms)

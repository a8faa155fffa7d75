"""Calibration profiles: the hook through which measured kernels change a device's timings.

A device predicts ``launch_overhead_s + ideal_time_s(op) / efficiency(op)``, where the ideal time
is its roofline (with wave quantisation on a GPU) and the efficiency is the achieved fraction of
that roofline. Uncalibrated, the efficiency comes from the device's own parameters; with a
profile loaded, from the profile's fitted model for the op's kind and dtype. ``validate`` writes
profiles (it times real torch kernels); this module reads them, so ``hardware`` never imports torch.

A profile is a small YAML file (``clustersim calibrate`` writes one)::

    format: clustersim-profile/1
    device:
      name: AMD EPYC            # what the machine calls itself (torch / /proc/cpuinfo)
      kind: cpu                 # cpu | cuda
      model: cpu                # the clustersim model the efficiencies are relative to:
                                #   cpu, a GPU preset name, or generic-gpu
      parameters: {...}         # that model's parameters (measured bandwidth, dispatch overhead)
    environment: {torch: 2.13.0+cpu, threads: 2, date: ..., clocks: ..., ...}
    calibration: {mode: full, seed: 0, timing: ..., records: ...}
    measurements: {...}         # figures that are not efficiencies (copy and all-reduce rates)
    fits:
    - kind: matmul
      dtype: fp32
      features:                 # name: {center, scale, min, max}; x is clamped to [min, max]
        log2_m: {center: 8.0, scale: 1.5, min: 5.0, max: 11.0}
      terms: {'1': -0.2, log2_m: 0.11, log2_m*log2_m: -0.02}
      training: {samples: 40, mape_percent: 2.1, max_ape_percent: 7.5, cv_mape_percent: 3.0}
    - kind: softmax
      dtype: fp32
      features: {log2_bytes: {center: 22.0, scale: 3.0, min: 15.0, max: 29.0}}
      knots: [[15.0, -1.1], [22.5, -1.0], [26.0, -2.2]]

Two optional sections of ``measurements`` are models rather than efficiencies (written by
``clustersim calibrate --from FILE``): ``gemm_tiles: {parameters: {...}}``, the fitted
tile/wave/split-K GEMM model (:attr:`Profile.gemm`, used by the GPU for every shaped matmul), and
``nccl: {models: {ranks: {graph: {...}, fit: {...}}}}``, NCCL's tuning model per group size
(:attr:`Profile.nccl_models`, used by clusters with ``collectives: nccl``).

An efficiency model is ``efficiency = clip(exp(L), 1e-4, 1.5)``. For a polynomial,
``L = sum_t c_t * prod_{f in t} z_f`` where ``z_f = (clamp(x_f, min, max) - center) / scale``,
``x_f`` is the named shape feature of the op (``FEATURES``) and the term ``'1'`` is the constant.
For knots (one feature), ``L`` is linear between knots in the raw feature and flat beyond them.
The efficiency may exceed 1 (turbo clocks, caches), up to 1.5.

A profile belongs to one device: attaching it to a device of another name raises
:class:`ProfileDeviceMismatch`, unless it was loaded with ``force=True``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from clustersim.errors import ConfigError
from clustersim.ops import DTYPE_BYTES, Op, OpKind

FORMAT = "clustersim-profile/1"
EFFICIENCY_MIN, EFFICIENCY_MAX = 1e-4, 1.5


@runtime_checkable
class EfficiencyModel(Protocol):
    """Fraction (0, 1.5] of a device's ideal time achieved by ``op``; None when it has no opinion
    (an op kind the profile did not measure), in which case the device uses its parameters."""

    device_name: str

    def efficiency(self, op: Op) -> float | None: ...


class ProfileDeviceMismatch(ConfigError):
    """A profile calibrated on one device was attached to another."""


def check_profile_device(profile: EfficiencyModel, device_name: str, *, force: bool = False) -> None:
    """Raise :class:`ProfileDeviceMismatch` unless ``profile`` was made on ``device_name``.

    A :class:`Profile` matches its device's name or its model's name (a GPU preset), ignoring
    case and surrounding spaces. ``force`` (or a profile loaded with ``force=True``) skips it.
    """
    if force or getattr(profile, "allow_other_device", False):
        return
    names = getattr(profile, "device_names", None) or (profile.device_name,)
    wanted = device_name.strip().casefold()
    if any(name.strip().casefold() == wanted for name in names):
        from clustersim.hardware.cpu_identity import cpu_identity_differences

        differences = cpu_identity_differences(profile)
        if not differences:
            return
        source = getattr(profile, "source", None)
        raise ProfileDeviceMismatch(
            f"{f'profile {source}' if source else 'the calibration profile'} was calibrated on "
            f"another {profile.device_name!r}: {'; '.join(differences)}; calibrate this machine "
            "(`clustersim calibrate --out profiles/<name>.yaml`) or force it (--force, or "
            "profile_force: true) to use the other machine's efficiencies anyway")
    source = getattr(profile, "source", None)
    where = f"profile {source}" if source else "the calibration profile"
    made_on = " / ".join(repr(n) for n in names)
    raise ProfileDeviceMismatch(
        f"{where} was calibrated on {made_on}, not on {device_name!r}; calibrate this device "
        "(`clustersim calibrate --out profiles/<name>.yaml`) or force it (--force, or "
        "load_profile(..., force=True)) to use another device's efficiencies anyway")


# -- shape features ----------------------------------------------------------------------------


def _log2(value: float) -> float:
    return math.log2(max(value, 1.0))


def _dims(op: Op, count: int) -> tuple[int, ...] | None:
    return op.shape if len(op.shape) == count else None


def _matmul(index: int) -> Callable[[Op], float | None]:
    return lambda op: _log2(op.shape[index]) if _dims(op, 4) else None


def _attention(index: int) -> Callable[[Op], float | None]:
    return lambda op: _log2(op.shape[index]) if _dims(op, 6) else None


# name -> op -> value (None when the op does not carry what the feature needs)
FEATURES: dict[str, Callable[[Op], float | None]] = {
    "log2_flops": lambda op: _log2(op.flops),
    "log2_bytes": lambda op: _log2(op.bytes_total),
    "log2_intensity": lambda op: (math.log2(op.flops / op.bytes_total)
                                  if op.flops > 0 and op.bytes_total > 0 else None),
    "log2_batch": _matmul(0),
    "log2_m": _matmul(1),
    "log2_n": _matmul(2),
    "log2_k": _matmul(3),
    "log2_min_dim": lambda op: _log2(min(op.shape[1:])) if _dims(op, 4) else None,
    "log2_batch_heads": lambda op: _log2(op.shape[0] * op.shape[1]) if _dims(op, 6) else None,
    "log2_q_len": _attention(3),
    "log2_kv_len": _attention(4),
    "log2_head_dim": _attention(5),
    "log2_elements": lambda op: _log2(op.shape[0]) if len(op.shape) == 1 else None,
    # Attention measured per direction (a backward kernel is not a forward one with more FLOPs),
    # and query length only where a kernel tiles queries by 128 rows (training, prefill): a fit
    # on it declines decode-length queries, which keep the device's own efficiencies.
    "backward": lambda op: 1.0 if op.backward else 0.0,
    # Causal kernels lose more at short lengths (diagonal tiles, uneven work per query tile).
    "causal": lambda op: 1.0 if op.causal else 0.0,
    "log2_prefill_q_len": lambda op: (_log2(op.shape[3]) if _dims(op, 6) and op.shape[3] >= 128
                                      else None),
}


def op_features(op: Op, names: tuple[str, ...]) -> list[float] | None:
    """The named features of ``op``, or None when any of them does not apply to it."""
    values = []
    for name in names:
        value = FEATURES[name](op)
        if value is None:
            return None
        values.append(value)
    return values


# -- one fitted model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureScale:
    """How a raw feature is clamped and standardised before it enters the polynomial."""

    center: float
    scale: float
    min: float
    max: float


@dataclass(frozen=True)
class EfficiencyFit:
    """log(efficiency) of one (kind, dtype) over shape features: a polynomial (``terms``) or,
    for one feature, a piecewise-linear curve through ``knots`` (feature value, log efficiency),
    flat beyond the first and last knot."""

    kind: OpKind
    dtype: str
    features: Mapping[str, FeatureScale]
    terms: Mapping[str, float] = field(default_factory=dict)   # "1", "f", "f*g" -> coefficient
    training: Mapping[str, Any] = field(default_factory=dict)
    knots: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        where = f"fit for {self.kind.value}/{self.dtype}"
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"{where}: unknown dtype {self.dtype!r}")
        for name, scale in self.features.items():
            if name not in FEATURES:
                raise ValueError(f"{where}: unknown feature {name!r}; known: {sorted(FEATURES)}")
            if not scale.scale > 0 or not scale.min <= scale.max:
                raise ValueError(f"{where}: feature {name!r} needs scale > 0 and min <= max, "
                                 f"got {scale}")
        object.__setattr__(self, "knots", tuple((float(x), float(y)) for x, y in self.knots))
        if bool(self.terms) == bool(self.knots):
            raise ValueError(f"{where}: give either polynomial terms or knots (exactly one)")
        if self.knots:
            if len(self.features) != 1:
                raise ValueError(f"{where}: knots need exactly one feature, got "
                                 f"{list(self.features)}")
            xs = [x for x, _ in self.knots]
            if any(b <= a for a, b in zip(xs, xs[1:])):
                raise ValueError(f"{where}: knots must have increasing feature values, got {xs}")
        for term in self.terms:
            for factor in term.split("*"):
                if factor != "1" and factor not in self.features:
                    raise ValueError(f"{where}: term {term!r} uses {factor!r}, which is not "
                                     f"among its features {list(self.features)}")

    def standardised(self, op: Op) -> dict[str, float] | None:
        raw = op_features(op, tuple(self.features))
        if raw is None:
            return None
        return {name: (min(max(x, s.min), s.max) - s.center) / s.scale
                for (name, s), x in zip(self.features.items(), raw)}

    def log_efficiency(self, op: Op) -> float | None:
        if self.knots:
            raw = op_features(op, tuple(self.features))
            return None if raw is None else _interpolate(self.knots, raw[0])
        z = self.standardised(op)
        if z is None:
            return None
        total = 0.0
        for term, coefficient in self.terms.items():
            value = coefficient
            if term != "1":
                for factor in term.split("*"):
                    value *= z[factor]
            total += value
        return total

    def efficiency(self, op: Op) -> float | None:
        log_eff = self.log_efficiency(op)
        if log_eff is None:
            return None
        return min(max(math.exp(min(log_eff, 50.0)), EFFICIENCY_MIN), EFFICIENCY_MAX)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind.value, "dtype": self.dtype,
            "features": {name: {"center": s.center, "scale": s.scale, "min": s.min, "max": s.max}
                         for name, s in self.features.items()}}
        if self.knots:
            out["knots"] = [[x, y] for x, y in self.knots]
        else:
            out["terms"] = dict(self.terms)
        out["training"] = dict(self.training)
        return out


def _interpolate(knots: tuple[tuple[float, float], ...], x: float) -> float:
    if x <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return knots[-1][1]


# -- the profile --------------------------------------------------------------------------------

DEVICE_KINDS = ("cpu", "cuda")


@dataclass(frozen=True)
class Profile:
    """A calibration of one device: the model it is relative to, and fitted efficiencies.

    Implements :class:`EfficiencyModel`. ``allow_other_device`` and ``source`` are not part of
    the file: ``load_profile(..., force=True)`` sets the first, the loaded path the second.
    """

    device_name: str
    device_kind: str
    model: str
    parameters: Mapping[str, Any]
    fits: tuple[EfficiencyFit, ...]
    environment: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    measurements: Mapping[str, Any] = field(default_factory=dict)
    allow_other_device: bool = field(default=False, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.device_kind not in DEVICE_KINDS:
            raise ValueError(f"profile device kind must be one of {DEVICE_KINDS}, "
                             f"got {self.device_kind!r}")
        object.__setattr__(self, "fits", tuple(self.fits))
        index: dict[tuple[OpKind, str], EfficiencyFit] = {}
        for fit in self.fits:
            key = (fit.kind, fit.dtype)
            if key in index:
                raise ValueError(f"profile has two fits for {fit.kind.value}/{fit.dtype}")
            index[key] = fit
        object.__setattr__(self, "_index", index)

    @property
    def device_names(self) -> tuple[str, ...]:
        """Names of devices this profile belongs to: the device's own, and its model's."""
        return (self.device_name,) if self.model in ("cpu", "generic-gpu") else (
            self.device_name, self.model)

    @functools.cached_property
    def gemm(self):
        """The fitted tile/wave/split-K GEMM model (``measurements.gemm_tiles``), if any."""
        raw = self.measurements.get("gemm_tiles")
        if not raw:
            return None
        from clustersim.hardware.gemm_tiles import GemmTiles

        return GemmTiles.from_dict(raw["parameters"] if "parameters" in raw else raw)

    @functools.cached_property
    def nccl_models(self) -> dict:
        """Fitted NCCL models per group size (``measurements.nccl``: ranks -> graph, fit)."""
        raw = self.measurements.get("nccl") or {}
        from clustersim.hardware.network.nccl import NcclFit, NcclGraph, NcclModel

        return {int(ranks): NcclModel(NcclGraph(**entry["graph"]), NcclFit.from_dict(entry["fit"]))
                for ranks, entry in raw.get("models", {}).items()}

    def fit_for(self, kind: OpKind, dtype: str) -> EfficiencyFit | None:
        return self._index.get((kind, dtype))   # type: ignore[attr-defined]

    def efficiency(self, op: Op) -> float | None:
        fit = self.fit_for(op.kind, op.dtype)
        return fit.efficiency(op) if fit is not None else None

    def forced(self) -> "Profile":
        """This profile, allowed on a device of another name."""
        return _replace(self, allow_other_device=True)

    def without_fits(self, kind: OpKind) -> "Profile":
        """This profile without its fitted efficiencies of ``kind`` (the device's own apply)."""
        return _replace(self, fits=tuple(f for f in self.fits if f.kind is not kind))

    def build_device(self):
        """The device model the fits are relative to (``parameters``), with this profile attached:
        a :class:`~clustersim.hardware.cpu.CPU` or a :class:`~clustersim.hardware.gpu.GPU`."""
        params = dict(self.parameters)
        if self.device_kind == "cpu":
            from clustersim.hardware.cpu import cpu_from_parameters

            return cpu_from_parameters(params, profile=self)
        from clustersim.hardware.gpu import GPU

        return GPU(**params, profile=self)

    # -- YAML ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT,
                "device": {"name": self.device_name, "kind": self.device_kind, "model": self.model,
                           "parameters": _plain(self.parameters)},
                "environment": _plain(self.environment),
                "calibration": _plain(self.calibration),
                "measurements": _plain(self.measurements),
                "fits": [fit.to_dict() for fit in self.fits]}

    def to_yaml(self) -> str:
        import yaml

        header = (f"# clustersim calibration profile of {self.device_name} ({self.device_kind}), "
                  f"written {_dt.date.today().isoformat()}.\n"
                  "# Efficiency model: see clustersim/hardware/calibration.py. Times in s, sizes "
                  "in B, rates in B/s and FLOP/s.\n")
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, width=100)

    def save(self, path: str | Path) -> Path:
        """Write the profile atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, raw: Any, *, file: str | None = None) -> "Profile":
        return _ProfileReader(file).profile(raw)

    @classmethod
    def from_yaml(cls, text: str, *, file: str | None = None) -> "Profile":
        import yaml

        from clustersim.input_files import check_yaml_depth

        check_yaml_depth(text, file=file)
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML ({' '.join(str(exc).split())})", file=file) from None
        return cls.from_dict(raw, file=file)


def _replace(profile: Profile, **changes: Any) -> Profile:
    import dataclasses

    return dataclasses.replace(profile, **changes)


def _plain(value: Any) -> Any:
    """Mappings, sequences and numpy scalars as plain YAML-safe Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)                    # str subclasses (torch's version) as plain str
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item"):              # numpy scalar
        return _plain(value.item())
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return str(value)


class _ProfileReader:
    """Checks a parsed profile key by key; every error names the file and the key path."""

    def __init__(self, file: str | None):
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def mapping(self, raw: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
                ) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(raw).__name__}")
        unknown = [k for k in raw if k not in required + optional]
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0]),
                            f"unknown key; expected some of {list(required + optional)}")
        missing = [k for k in required if k not in raw]
        if missing:
            raise self.fail(key, f"missing key {missing[0]!r}")
        return dict(raw)

    def number(self, raw: Any, key: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise self.fail(key, f"expected a finite number, got {raw!r}")
        return float(raw)

    def profile(self, raw: Any) -> Profile:
        top = self.mapping(raw, "", ("format", "device", "fits"),
                           ("environment", "calibration", "measurements"))
        if top["format"] != FORMAT:
            raise self.fail("format", f"expected {FORMAT!r}, got {top['format']!r}")
        device = self.mapping(top["device"], "device", ("name", "kind", "model", "parameters"))
        if device["kind"] not in DEVICE_KINDS:
            raise self.fail("device.kind", f"expected one of {list(DEVICE_KINDS)}, "
                                           f"got {device['kind']!r}")
        if not isinstance(device["parameters"], Mapping):
            raise self.fail("device.parameters", "expected a mapping of the model's parameters")
        if not isinstance(top["fits"], list):
            raise self.fail("fits", "expected a list of fits")
        fits = tuple(self.fit(item, f"fits[{i}]") for i, item in enumerate(top["fits"]))
        extra = {}
        for key in ("environment", "calibration", "measurements"):
            value = top.get(key) or {}
            if not isinstance(value, Mapping):
                raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
            extra[key] = dict(value)
        try:
            return Profile(str(device["name"]), device["kind"], str(device["model"]),
                           dict(device["parameters"]), fits, **extra, source=self.file)
        except ValueError as exc:
            raise self.fail("fits", str(exc)) from None

    def fit(self, raw: Any, key: str) -> EfficiencyFit:
        item = self.mapping(raw, key, ("kind", "dtype", "features"), ("terms", "knots", "training"))
        try:
            kind = OpKind(item["kind"])
        except ValueError:
            raise self.fail(f"{key}.kind", f"unknown op kind {item['kind']!r}; expected one of "
                                           f"{[k.value for k in OpKind]}") from None
        if not isinstance(item["features"], Mapping):
            raise self.fail(f"{key}.features", "expected a mapping feature -> {center, scale, "
                                               "min, max}")
        features = {}
        for name, spec in item["features"].items():
            where = f"{key}.features.{name}"
            values = self.mapping(spec, where, ("center", "scale", "min", "max"))
            features[str(name)] = FeatureScale(**{k: self.number(v, f"{where}.{k}")
                                                  for k, v in values.items()})
        raw_terms = item.get("terms") or {}
        if not isinstance(raw_terms, Mapping):
            raise self.fail(f"{key}.terms", "expected a mapping term -> coefficient")
        terms = {str(t): self.number(c, f"{key}.terms.{t}") for t, c in raw_terms.items()}
        raw_knots = item.get("knots") or []
        if not isinstance(raw_knots, list) or not all(
                isinstance(k, list) and len(k) == 2 for k in raw_knots):
            raise self.fail(f"{key}.knots", "expected a list of [feature value, log efficiency]")
        knots = tuple((self.number(x, f"{key}.knots[{i}]"), self.number(y, f"{key}.knots[{i}]"))
                      for i, (x, y) in enumerate(raw_knots))
        training = item.get("training") or {}
        if not isinstance(training, Mapping):
            raise self.fail(f"{key}.training", "expected a mapping")
        try:
            return EfficiencyFit(kind, str(item["dtype"]), features, terms, dict(training), knots)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


def load_profile(path: str | Path, *, base_dir: str | Path | None = None,
                 device_name: str | None = None, force: bool = False) -> Profile:
    """Read a calibration profile; a relative ``path`` is resolved against ``base_dir``.

    With ``device_name``, refuse a profile made on another device (``ProfileDeviceMismatch``)
    unless ``force``; a forced profile may then be attached to any device.
    """
    resolved = Path(path)
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    from clustersim.input_files import read_text

    try:  # missing, a folder, binary, not UTF-8: one line
        text = read_text(resolved, what="calibration profile")
    except ConfigError as exc:
        raise ConfigError(f"{exc.detail}; make one with `clustersim calibrate --out <path>`",
                          file=str(resolved), key=exc.key) from None
    profile = Profile.from_yaml(text, file=str(resolved))
    if force:
        profile = profile.forced()
    if device_name is not None:
        check_profile_device(profile, device_name, force=force)
    return profile

"""Accelerator presets: systolic arrays, PIM memories and RDUs from YAML, a source per figure.

The data lives in ``presets/accelerators.yaml`` (its header explains the layout); this module
reads it with ``importlib.resources``, checks it and builds
:class:`~clustersim.hardware.systolic.SystolicArray`, :class:`~clustersim.hardware.pim.PIM` and
:class:`~clustersim.hardware.rdu.RDU` objects::

    load_systolic("tpu-v1")                       # case-insensitive; aliases allowed
    load_pim("hbm-pim", t_rcd_s="18 ns")          # overrides in human units
    load_rdu("sn40l", compute_efficiency=0.8)

It follows ``presets.py`` (the GPU presets): an unknown key, a figure <= 0 or a figure without a
source is a :class:`~clustersim.errors.ConfigError` naming the file and the key path; an unknown
preset name is a ``ValueError`` listing the valid names and the nearest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Literal, Mapping


from clustersim.hardware.npu_pim import DISPATCH, OVERLAP, NpuPim, attach_pim, scaled_pim
from clustersim.hardware.pim import PIM
from clustersim.hardware.preset_file import (Figure, Source, SourcedReader, alias_index, nearest,
                                             normalise)
from clustersim.hardware.rdu import RDU
from clustersim.hardware.systolic import DATAFLOWS, SystolicArray
from clustersim.ops import DTYPE_BYTES
from clustersim.units import parse_quantity

Kind = Literal["systolic", "pim", "rdu", "npu_pim"]
# npu_pim last: its entries name presets of the other kinds (or GPU presets).
KINDS: tuple[Kind, ...] = ("systolic", "pim", "rdu", "npu_pim")

# field -> how its value is read. "duration" may be 0; every other quantity must be > 0.
_FIELDS: dict[str, dict[str, str]] = {
    "systolic": {
        "rows": "count", "cols": "count", "clock_hz": "frequency", "dataflow": "dataflow",
        "ifmap_sram_bytes": "bytes", "filter_sram_bytes": "bytes", "ofmap_sram_bytes": "bytes",
        "dram_bandwidth_bytes_per_s": "bandwidth", "dram_capacity_bytes": "bytes",
        "macs_per_pe_per_cycle": "rate_table", "vector_ops_per_cycle": "number",
        "launch_overhead_s": "duration", "os_drain_overlapped": "flag",
    },
    "pim": {
        "channels": "count", "banks_per_channel": "count", "banks_per_unit": "count",
        "mac_lanes": "count", "pim_clock_hz": "frequency", "burst_bytes": "count",
        "row_bytes": "count", "t_rcd_s": "duration", "t_rp_s": "duration",
        "external_bandwidth_bytes_per_s": "bandwidth", "capacity_bytes": "bytes",
        "t_ccd_s": "time", "dtypes": "dtype_list", "launch_overhead_s": "duration",
        "banks_per_command": "optional_count", "t_cmd_s": "optional_time", "t_rrd_s": "duration",
        "t_faw_s": "duration",
    },
    "rdu": {
        "flops_per_s": "flop_rates", "sram_capacity_bytes": "bytes",
        "sram_bandwidth_bytes_per_s": "bandwidth", "hbm_capacity_bytes": "bytes",
        "hbm_bandwidth_bytes_per_s": "bandwidth", "ddr_capacity_bytes": "bytes",
        "ddr_bandwidth_bytes_per_s": "bandwidth", "compute_efficiency": "fraction",
        "memory_efficiency": "fraction", "copy_latency_s": "duration",
        "launch_overhead_s": "duration", "operand_placement": "placement",
    },
    "npu_pim": {
        "npu": "device_ref", "pim": "pim_ref", "pim_stacks": "count", "dispatch": "dispatch",
        "op_b_threshold": "number", "overlap": "overlap",
    },
}


def _npu_pim(name: str, npu, pim, pim_stacks: int = 1, dispatch: str = "attention",
             op_b_threshold: float | None = None, overlap: str = "blocked") -> NpuPim:
    stacks = scaled_pim(pim, pim_stacks)
    return NpuPim(name=name, npu=attach_pim(npu, stacks), pim=stacks, dispatch=dispatch,
                  op_b_threshold=op_b_threshold, overlap=overlap)


_CLASSES: dict[str, Callable[..., Any]] = {"systolic": SystolicArray, "pim": PIM, "rdu": RDU,
                                           "npu_pim": _npu_pim}
_ENTRY_META = ("aliases", "source", "description")
_FILE = "accelerators.yaml"


@dataclass(frozen=True)
class AcceleratorPreset:
    """A parsed preset entry: the built device plus the provenance of each of its figures."""

    name: str
    kind: Kind
    aliases: tuple[str, ...]
    description: str
    source: Source | None                  # the entry's default document
    figures: Mapping[str, Figure]          # key path ("macs_per_pe_per_cycle.int8") -> figure
    spec: SystolicArray | PIM | RDU | NpuPim
    file: str


def _required(kind: str) -> tuple[str, ...]:
    if kind == "npu_pim":
        return ("npu", "pim")
    return tuple(f.name for f in dataclasses.fields(_CLASSES[kind])
                 if f.name != "name" and f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)


class _Reader(SourcedReader):
    """Reads the preset file's text; every error names the file and the key path."""

    def read(self) -> dict[str, AcceleratorPreset]:
        top = ["sources", *KINDS]
        self.check_top_level(top, f"'sources' and some of {list(KINDS)}")
        presets: dict[str, AcceleratorPreset] = {}
        self.parsed = presets
        for kind in KINDS:
            entries = self.data.get(kind) or {}
            if not isinstance(entries, dict):
                raise self.fail(kind, "expected a mapping of preset name -> entry")
            for name, raw in entries.items():
                if str(name) in presets:
                    raise self.fail(f"{kind}.{name}", f"preset {name!r} is defined twice")
                presets[str(name)] = self._entry(kind, str(name), raw)
        return presets

    def _entry(self, kind: Kind, name: str, raw: Any) -> AcceleratorPreset:
        base, fields = f"{kind}.{name}", _FIELDS[kind]
        if not isinstance(raw, dict):
            raise self.fail(base, "expected a mapping of field -> figure")
        allowed = [*fields, *_ENTRY_META]
        for key in raw:
            if key not in allowed:
                raise self.fail(f"{base}.{key}", f"unknown key{nearest(str(key), allowed)}; "
                                                 f"valid keys: {allowed}")
        default = self._source(raw["source"], f"{base}.source") if raw.get("source") else None
        aliases = raw.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise self.fail(f"{base}.aliases", f"expected a list of names, got {aliases!r}")
        missing = [f for f in _required(kind) if f not in raw]
        if missing:
            raise self.fail(base, f"missing required field(s) {missing}")
        figures: dict[str, Figure] = {}
        values: dict[str, Any] = {}
        for fname, unit in fields.items():
            if fname in raw:
                values[fname] = self._field(raw[fname], unit, default, f"{base}.{fname}",
                                            fname, figures)
        try:
            spec = _CLASSES[kind](name=name, **values)
        except (TypeError, ValueError) as exc:
            raise self.fail(base, str(exc)) from None
        return AcceleratorPreset(name, kind, tuple(aliases), str(raw.get("description") or ""),
                                 default, figures, spec, self.file)

    def _field(self, raw: Any, unit: str, default: Source | None, key: str, path: str,
               figures: dict[str, Figure]) -> Any:
        if unit in ("device_ref", "pim_ref"):        # a preset name, not a figure
            return self._reference(raw, unit, key)
        if unit in ("rate_table", "flop_rates"):
            if not isinstance(raw, dict) or not raw:
                raise self.fail(key, "expected a mapping of dtype -> figure")
            table = {}
            for dtype, fig in raw.items():
                if str(dtype) not in DTYPE_BYTES:
                    hint = nearest(str(dtype), DTYPE_BYTES)
                    raise self.fail(f"{key}.{dtype}", f"unknown dtype{hint}; expected some of "
                                                      f"{sorted(DTYPE_BYTES)}")
                item = "number" if unit == "rate_table" else "flop_rate"
                figures[f"{path}.{dtype}"] = self._figure(fig, item, default, f"{key}.{dtype}")
                table[str(dtype)] = figures[f"{path}.{dtype}"].value
            return table
        if unit == "dtype_list":
            if not isinstance(raw, list) or not raw:
                raise self.fail(key, "expected a list of dtypes")
            out = []
            for i, item in enumerate(raw):
                figure = self._figure(item, "dtype", default, f"{key}[{i}]")
                figures[f"{path}.{figure.value}"] = figure
                out.append(figure.value)
            return tuple(out)
        figures[path] = self._figure(raw, unit, default, key)
        return figures[path].value

    def _reference(self, raw: Any, unit: str, key: str):
        index = {normalise(label): p for p in self.parsed.values()
                 for label in (p.name, *p.aliases)}
        found = index.get(normalise(str(raw)))
        if unit == "pim_ref":
            if found is None or found.kind != "pim":
                valid = sorted(p.name for p in self.parsed.values() if p.kind == "pim")
                raise self.fail(key, f"unknown PIM preset {raw!r}; valid PIM presets: {valid}")
            return found.spec
        if found is not None and found.kind in ("systolic", "rdu"):
            return found.spec
        from clustersim.hardware.presets import load_gpu   # GPUs live in gpus.yaml

        try:
            return load_gpu(str(raw))
        except ValueError:
            valid = sorted(p.name for p in self.parsed.values() if p.kind in ("systolic", "rdu"))
            raise self.fail(key, f"unknown host device {raw!r}; expected a GPU preset or one of "
                                 f"{valid}") from None

    def _value(self, raw: Any, unit: str, key: str) -> Any:
        try:
            return _value(raw, unit)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


# Parameters whose value is one of a few words, by the "unit" their schema gives them.
_CHOICES = {"dataflow": DATAFLOWS, "dispatch": DISPATCH, "overlap": OVERLAP,
            "placement": ("residency", "working_set")}


def _value(raw: Any, unit: str) -> Any:
    """One YAML value in the base unit of ``unit``; ValueError says what was expected."""
    if unit.startswith("optional_"):          # null keeps the model's default meaning
        return None if raw is None else _value(raw, unit.removeprefix("optional_"))
    if unit == "flag":
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    choices = _CHOICES.get(unit)
    if choices is not None:
        if raw not in choices:
            raise ValueError(f"expected one of {list(choices)}, got {raw!r}")
        return raw
    if unit == "dtype":
        if raw not in DTYPE_BYTES:
            raise ValueError(f"expected a dtype, one of {sorted(DTYPE_BYTES)}, got {raw!r}")
        return raw
    if unit == "count":
        if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
            raise ValueError(f"expected a positive integer, got {raw!r}")
        return raw
    if unit in ("number", "fraction"):
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
            raise ValueError(f"expected a number > 0, got {raw!r}")
        if unit == "fraction" and raw > 1:
            raise ValueError(f"expected a fraction in (0, 1], got {raw!r}")
        return float(raw)
    kind = "time" if unit == "duration" else unit
    if isinstance(raw, str):
        try:                       # YAML 1.1 reads "2e-6" as text; a bare number is SI
            raw = float(raw)
        except ValueError:
            pass
    value = parse_quantity(raw, kind)
    if unit == "duration" and not value >= 0:
        raise ValueError(f"must be >= 0, got {raw!r}")
    if unit != "duration" and not value > 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def read_accelerator_presets(text: str, *, file: str = "<string>") -> dict[str, AcceleratorPreset]:
    """Parse an accelerator preset file's text into name -> :class:`AcceleratorPreset`."""
    presets = _Reader(text, file).read()
    _index(presets, file)          # rejects duplicate names and aliases
    return presets


def _index(presets, file: str) -> dict[str, str]:
    return alias_index(presets, file, lambda preset: preset.kind)


@functools.cache
def _catalog() -> tuple[dict[str, AcceleratorPreset], dict[str, str]]:
    text = resources.files("clustersim.hardware").joinpath("presets", _FILE).read_text("utf-8")
    file = f"clustersim/hardware/presets/{_FILE}"
    presets = read_accelerator_presets(text, file=file)
    return presets, _index(presets, file)


def accelerator_index() -> dict[str, str]:
    """Normalised name or alias -> preset name, over every accelerator preset."""
    return dict(_catalog()[1])


def accelerator_presets(kind: Kind | None = None) -> dict[str, AcceleratorPreset]:
    """The packaged presets (of one kind, or all)."""
    return {n: p for n, p in _catalog()[0].items() if kind is None or p.kind == kind}


def describe_accelerator(name: str, kind: Kind | None = None) -> AcceleratorPreset:
    """The parsed preset ``name`` (case-insensitive, aliases allowed), of ``kind`` if given."""
    presets, index = _catalog()
    canonical = index.get(normalise(name))
    if canonical is not None and (kind is None or presets[canonical].kind == kind):
        return presets[canonical]
    valid = sorted(p.name for p in presets.values() if kind is None or p.kind == kind)
    labels = {label: canon for label, canon in index.items()
              if kind is None or presets[canon].kind == kind}
    close = difflib.get_close_matches(normalise(name), list(labels), n=1, cutoff=0.4)
    hint = f" (did you mean {labels[close[0]]!r}?)" if close else ""
    what = f"{kind} preset" if kind else "accelerator preset"
    raise ValueError(f"unknown {what} {name!r}{hint}; valid names (case-insensitive, aliases "
                     f"allowed): {valid}")


def _load(kind: Kind, name: str, overrides: Mapping[str, Any]):
    spec = describe_accelerator(name, kind).spec
    fields = _FIELDS[kind]
    known = [f.name for f in dataclasses.fields(spec) if f.name != "name"]
    parsed: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"{spec.name}: unknown override {key!r}{nearest(key, known)}; "
                             f"valid: {known}")
        unit = fields.get(key)
        if unit in ("rate_table", "flop_rates"):      # merged into the preset's table
            item = "number" if unit == "rate_table" else "flop_rate"
            value = {**getattr(spec, key), **{d: _value(v, item) for d, v in value.items()}}
        elif isinstance(value, str) and unit not in (None, "dataflow", "dtype_list", "flag",
                                                     "dispatch", "placement", "overlap"):
            value = _value(value, unit)
        parsed[key] = value
    return dataclasses.replace(spec, **parsed) if parsed else spec


def load_systolic(name: str, **overrides: Any) -> SystolicArray:
    """The systolic preset ``name``, fields replaced by ``overrides`` (human units accepted)."""
    return _load("systolic", name, overrides)


def load_pim(name: str, **overrides: Any) -> PIM:
    """The PIM preset ``name``, fields replaced by ``overrides`` (human units accepted)."""
    return _load("pim", name, overrides)


def load_npu_pim(name: str, **overrides: Any) -> NpuPim:
    """The NPU+PIM preset ``name`` (overrides: ``dispatch``, ``op_b_threshold``)."""
    return _load("npu_pim", name, overrides)


def load_rdu(name: str, **overrides: Any) -> RDU:
    """The RDU preset ``name``, fields replaced by ``overrides`` (human units accepted;
    ``flops_per_s`` overrides merge into the preset's table)."""
    return _load("rdu", name, overrides)

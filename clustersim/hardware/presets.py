"""Datasheet presets: GPUs and nodes of any device kind, from YAML with a source per figure.

The data lives in ``presets/gpus.yaml`` and ``presets/nodes.yaml`` (their headers explain the
layout and the unit conventions); this module reads them with ``importlib.resources``, checks
them, and builds :class:`~clustersim.hardware.gpu.GPU` and :class:`NodeSpec` objects::

    load_gpu("h100")                       # case-insensitive; aliases allowed
    load_gpu("h100", memory_efficiency=0.9, host_memory_bytes="256 GiB")
    load_node("dgx-h100").device_model()   # the node's GPU with its share of host DDR
    load_node("sn40l-16").device_model()   # an RDU node: its device preset as is

A preset file with an unknown key, a figure <= 0, or a figure without a source is a
:class:`~clustersim.errors.ConfigError` naming the file and the key path. An unknown preset name
is a ``ValueError`` listing the valid names and the nearest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Mapping


from clustersim.hardware.preset_file import (Figure, Source, SourcedReader, alias_index, nearest,
                                             normalise)
from clustersim.hardware.gpu import GPU
from clustersim.units import parse_quantity

Kind = Literal["gpu", "node"]


@dataclass(frozen=True)
class NodeSpec:
    """One server: N devices of one preset (any kind) and the links that leave them.

    Every bandwidth is PER DIRECTION. ``link_*`` is the intra-node fabric (NVLink into NVSwitch
    on a GPU node, the RDUs' peer-to-peer network, a TPU board's ICI); ``nic_*`` the links out of
    the node. Host DDR and its PCIe link apply to devices that reach host memory over PCIe
    (GPUs); devices that carry their own capacity tier (an RDU's DDR) leave them out.
    """

    name: str
    device: str                              # device preset name (GPU or accelerator)
    devices_per_node: int
    link_bandwidth_bytes_per_s: float        # per device, per direction, into the node fabric
    link_latency_s: float                    # one hop device -> switch -> device
    nic_bandwidth_bytes_per_s: float         # per NIC, per direction
    nics_per_node: int
    nic_latency_s: float                     # one network step, NIC to NIC
    host_memory_bytes: float | None = None   # host DDR of the whole node
    pcie_bandwidth_bytes_per_s: float | None = None   # per device host link, per direction
    source: str = field(default="", compare=False)   # the entry's main document

    def __post_init__(self) -> None:
        for attr in ("devices_per_node", "nics_per_node"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"node {self.name!r}: {attr} must be a positive integer, "
                                 f"got {value!r}")
        for attr in ("link_bandwidth_bytes_per_s", "link_latency_s",
                     "nic_bandwidth_bytes_per_s", "nic_latency_s"):
            value = getattr(self, attr)
            if not value > 0:
                raise ValueError(f"node {self.name!r}: {attr} must be > 0, got {value!r}")
        for attr in ("host_memory_bytes", "pcie_bandwidth_bytes_per_s"):
            value = getattr(self, attr)
            if value is not None and not value > 0:
                raise ValueError(f"node {self.name!r}: {attr} must be > 0, got {value!r}")
        if (self.host_memory_bytes is None) != (self.pcie_bandwidth_bytes_per_s is None):
            raise ValueError(f"node {self.name!r}: give both host_memory_bytes and "
                             "pcie_bandwidth_bytes_per_s, or neither")

    # The GPU-era names, kept for code and notebooks written against them.
    @property
    def gpu(self) -> str:
        return self.device

    @property
    def gpus_per_node(self) -> int:
        return self.devices_per_node

    @property
    def nvlink_bandwidth_bytes_per_s(self) -> float:
        return self.link_bandwidth_bytes_per_s

    @property
    def nvlink_latency_s(self) -> float:
        return self.link_latency_s

    @property
    def host_memory_per_gpu_bytes(self) -> float | None:
        if self.host_memory_bytes is None:
            return None
        return self.host_memory_bytes / self.devices_per_node

    @property
    def nic_bandwidth_per_node_bytes_per_s(self) -> float:
        return self.nic_bandwidth_bytes_per_s * self.nics_per_node

    def device_model(self, per_node: int | None = None, **overrides: Any):
        """The node's device preset; a device with a host tier (a GPU) gets an equal share of
        the node's DDR over its PCIe link (over ``per_node`` devices, default all)."""
        from clustersim.hardware.node import load_device

        share = dict(overrides)
        if self.host_memory_bytes is not None and _has_host_tier(self.device):
            share.setdefault("host_memory_bytes",
                             self.host_memory_bytes / (per_node or self.devices_per_node))
            share.setdefault("host_link_bandwidth_bytes_per_s", self.pcie_bandwidth_bytes_per_s)
        return load_device(self.device, **share)

    def gpu_device(self, **overrides: Any) -> GPU:
        """The node's GPU preset with its share of host DDR (see ``device_model``)."""
        return self.device_model(**overrides)


def _has_host_tier(device_name: str) -> bool:
    """Whether the device preset reaches host DDR over PCIe (a GPU field)."""
    from clustersim.hardware.node import device_kind

    return device_kind(device_name) == "gpu"


@dataclass(frozen=True)
class Preset:
    """A parsed preset entry: the built object plus the provenance of each of its figures."""

    name: str
    kind: Kind
    aliases: tuple[str, ...]
    source: Source | None                  # the entry's default document
    figures: Mapping[str, Figure]          # key path ("tensor_flops_per_s.bf16") -> figure
    spec: GPU | NodeSpec
    file: str


# --- schema: field -> how its value is read -------------------------------------------------

_GPU_FIELDS: dict[str, str] = {
    "num_sms": "count", "clock_hz": "frequency",
    "tensor_flops_per_s": "flop_rates", "vector_flops_per_s": "flop_rates",
    "hbm_capacity_bytes": "bytes", "hbm_bandwidth_bytes_per_s": "bandwidth", "l2_bytes": "bytes",
    "kernel_launch_overhead_s": "time", "tile_m": "count", "tile_n": "count",
    "matmul_efficiency": "fraction", "attention_efficiency": "fraction",
    "memory_efficiency": "fraction", "vector_efficiency": "fraction", "allow_tf32": "flag",
    "host_memory_bytes": "bytes", "host_link_bandwidth_bytes_per_s": "bandwidth",
}
_GPU_REQUIRED = ("num_sms", "clock_hz", "tensor_flops_per_s", "vector_flops_per_s",
                 "hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s")
_NODE_FIELDS: dict[str, str] = {
    "device": "device_preset", "devices_per_node": "count",
    "link_bandwidth_bytes_per_s": "bandwidth", "link_latency_s": "time",
    "nic_bandwidth_bytes_per_s": "bandwidth", "nics_per_node": "count", "nic_latency_s": "time",
    "host_memory_bytes": "bytes", "pcie_bandwidth_bytes_per_s": "bandwidth",
}
_NODE_OPTIONAL = ("host_memory_bytes", "pcie_bandwidth_bytes_per_s")
_ENTRY_META = ("aliases", "source", "description")
_FILES = {"gpu": ("gpus.yaml", "gpus", _GPU_FIELDS), "node": ("nodes.yaml", "nodes", _NODE_FIELDS)}


# --- parsing ----------------------------------------------------------------------------------

class _Reader(SourcedReader):
    """Reads one preset file's text; every error names the file and the key path."""

    def __init__(self, text: str, file: str, kind: Kind, gpu_names: Mapping[str, str] | None):
        super().__init__(text, file)
        self.kind, self.gpu_names = kind, gpu_names or {}
        _, self.section, self.fields = _FILES[kind]

    def read(self) -> dict[str, Preset]:
        self.check_top_level(["sources", self.section], f"'sources' and {self.section!r}")
        entries = self.data.get(self.section)
        if not isinstance(entries, dict) or not entries:
            raise self.fail(self.section, "expected a mapping of preset name -> entry")
        return {str(name): self._entry(str(name), raw) for name, raw in entries.items()}

    def _entry(self, name: str, raw: Any) -> Preset:
        base = f"{self.section}.{name}"
        if not isinstance(raw, dict):
            raise self.fail(base, "expected a mapping of field -> figure")
        allowed = list(self.fields) + list(_ENTRY_META)
        for key in raw:
            if key not in allowed:
                raise self.fail(f"{base}.{key}", f"unknown key{nearest(str(key), allowed)}; "
                                                 f"valid keys: {allowed}")
        default = None
        if raw.get("source") is not None:
            default = self._source(raw["source"], f"{base}.source")
        aliases = raw.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise self.fail(f"{base}.aliases", f"expected a list of names, got {aliases!r}")
        required = _GPU_REQUIRED if self.kind == "gpu" else tuple(
            f for f in self.fields if f not in _NODE_OPTIONAL)
        missing = [f for f in required if f not in raw]
        if missing:
            raise self.fail(base, f"missing required field(s) {missing}")
        figures: dict[str, Figure] = {}
        values: dict[str, Any] = {}
        for fname, unit in self.fields.items():
            if fname not in raw:
                continue
            if unit == "flop_rates":
                table = raw[fname]
                if not isinstance(table, dict) or not table:
                    raise self.fail(f"{base}.{fname}", "expected a mapping of dtype -> FLOP/s")
                values[fname] = {}
                for dtype, fig in table.items():
                    path = f"{fname}.{dtype}"
                    figures[path] = self._figure(fig, "flop_rate", default, f"{base}.{path}")
                    values[fname][str(dtype)] = figures[path].value
            else:
                figures[fname] = self._figure(raw[fname], unit, default, f"{base}.{fname}")
                values[fname] = figures[fname].value
        spec = self._build(name, values, default, base)
        return Preset(name, self.kind, tuple(aliases), default, figures, spec, self.file)


    def _value(self, raw: Any, unit: str, key: str) -> Any:
        if unit == "flag":
            if not isinstance(raw, bool):
                raise self.fail(key, f"expected true or false, got {raw!r}")
            return raw
        if unit == "device_preset":
            canonical = self.gpu_names.get(normalise(str(raw)))
            if canonical is None:
                valid = sorted(set(self.gpu_names.values()))
                raise self.fail(key, f"unknown device preset {raw!r}{nearest(str(raw), valid)}; "
                                     f"valid device presets: {valid}")
            return canonical
        if unit == "count":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
                raise self.fail(key, f"expected a positive integer, got {raw!r}")
            return raw
        if unit == "fraction":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 1:
                raise self.fail(key, f"expected a fraction in (0, 1], got {raw!r}")
            return float(raw)
        if isinstance(raw, str):
            try:                   # YAML 1.1 reads "2e-6" as text; a bare number is SI
                raw = float(raw)
            except ValueError:
                pass
        try:
            value = parse_quantity(raw, unit)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if not value > 0:
            raise self.fail(key, f"must be > 0, got {raw!r}")
        return value

    def _build(self, name: str, values: dict[str, Any], default: Source | None, base: str):
        try:
            if self.kind == "gpu":
                return GPU(name=name, **values)
            src = f"{default.title} <{default.url}>" if default else ""
            return NodeSpec(name=name, source=src, **values)
        except (TypeError, ValueError) as exc:
            raise self.fail(base, str(exc)) from None


def read_presets(text: str, *, kind: Kind, file: str = "<string>",
                 gpu_names: Mapping[str, str] | None = None) -> dict[str, Preset]:
    """Parse a preset file's text (``kind`` "gpu" or "node") into name -> :class:`Preset`.

    ``gpu_names`` maps normalised device names and aliases to preset names, for a node file's
    ``device:`` keys; by default the packaged GPU and accelerator presets.
    """
    if kind == "node" and gpu_names is None:
        gpu_names = _device_names()
    presets = _Reader(text, file, kind, gpu_names).read()
    _index(presets, file)       # rejects duplicate names and aliases
    return presets


def _index(presets, file: str) -> dict[str, str]:
    return alias_index(presets, file, lambda preset: _FILES[preset.kind][1])


@functools.cache
def _catalog(kind: Kind) -> tuple[dict[str, Preset], dict[str, str]]:
    file = _FILES[kind][0]
    path = resources.files("clustersim.hardware").joinpath("presets", file)
    text = path.read_text(encoding="utf-8")
    presets = read_presets(text, kind=kind, file=f"clustersim/hardware/presets/{file}",
                           gpu_names=_device_names() if kind == "node" else None)
    return presets, _index(presets, file)


def _device_names() -> dict[str, str]:
    """Normalised name or alias -> preset name, over GPU and accelerator presets."""
    from clustersim.hardware.accelerator_presets import accelerator_index

    return {**accelerator_index(), **_catalog("gpu")[1]}


# --- public lookup ----------------------------------------------------------------------------

def describe_preset(name: str, kind: Kind | None = None) -> Preset:
    """The parsed preset ``name`` (GPU or node; case-insensitive, aliases allowed)."""
    kinds: tuple[Kind, ...] = (kind,) if kind else ("gpu", "node")
    key = normalise(name)
    for k in kinds:
        presets, index = _catalog(k)
        if key in index:
            return presets[index[key]]
    labels = {label: canon for k in kinds for label, canon in _catalog(k)[1].items()}
    close = difflib.get_close_matches(key, list(labels), n=1, cutoff=0.4)
    hint = f" (did you mean {labels[close[0]]!r}?)" if close else ""
    valid = sorted({p for k in kinds for p in _catalog(k)[0]})
    what = {"gpu": "GPU preset", "node": "node preset", None: "preset"}[kind]
    raise ValueError(f"unknown {what} {name!r}{hint}; valid names (case-insensitive, aliases "
                     f"allowed): {valid}")


def _with_overrides(spec: Any, fields: Mapping[str, str], overrides: Mapping[str, Any]) -> Any:
    known = [f.name for f in dataclasses.fields(spec) if f.name != "name"]
    parsed: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"{spec.name}: unknown override {key!r}{nearest(key, known)}; "
                             f"valid: {known}")
        unit = fields.get(key)
        if unit == "flop_rates":      # merged into the preset's table, dtype by dtype
            rates = {dtype: parse_quantity(v, "flop_rate") for dtype, v in value.items()}
            value = {**getattr(spec, key), **rates}
        elif unit == "device_preset":
            from clustersim.hardware.node import describe_device

            value = describe_device(str(value))
        elif isinstance(value, str) and unit not in (None, "count", "fraction", "flag"):
            value = parse_quantity(value, unit)
        elif unit in ("count", "fraction") and (isinstance(value, bool)
                                                or not isinstance(value, (int, float))):
            raise ValueError(f"{spec.name}: override {key!r} must be a number, got {value!r}")
        elif unit == "flag" and not isinstance(value, bool):
            raise ValueError(f"{spec.name}: override {key!r} must be true or false, got {value!r}")
        parsed[key] = value
    return dataclasses.replace(spec, **parsed) if parsed else spec


def load_gpu(name: str, **overrides: Any) -> GPU:
    """The GPU preset ``name``, with fields replaced by ``overrides`` (human units accepted;
    ``tensor_flops_per_s`` / ``vector_flops_per_s`` overrides merge into the preset's table)."""
    return _with_overrides(describe_preset(name, "gpu").spec, _GPU_FIELDS, overrides)


def load_node(name: str, **overrides: Any) -> NodeSpec:
    """The node preset ``name``, with fields replaced by ``overrides`` (human units accepted)."""
    return _with_overrides(describe_preset(name, "node").spec, _NODE_FIELDS, overrides)


def gpu_presets() -> dict[str, GPU]:
    return {name: p.spec for name, p in _catalog("gpu")[0].items()}


def node_presets() -> dict[str, NodeSpec]:
    return {name: p.spec for name, p in _catalog("node")[0].items()}


def preset_table():
    """One row per preset (GPUs then nodes): key figures in readable units and the main source.

    Columns: name, kind, aliases, sms, bf16_dense_tflops, hbm_gib, hbm_tb_per_s, device,
    devices_per_node, link_gb_per_s_per_direction, nic_gbit_per_s, nics_per_node, source, url.
    Figures that do not apply to a row are NaN / empty.
    """
    import pandas as pd

    rows = []
    for kind in ("gpu", "node"):
        for preset in _catalog(kind)[0].values():
            spec = preset.spec
            row: dict[str, Any] = {"name": preset.name, "kind": kind,
                                   "aliases": ", ".join(preset.aliases)}
            if isinstance(spec, GPU):
                bf16 = spec.tensor_flops_per_s.get("bf16", float("nan"))
                row.update(sms=spec.num_sms, bf16_dense_tflops=bf16 / 1e12,
                           hbm_gib=spec.hbm_capacity_bytes / 2**30,
                           hbm_tb_per_s=spec.hbm_bandwidth_bytes_per_s / 1e12)
            else:
                row.update(device=spec.device, devices_per_node=spec.devices_per_node,
                           link_gb_per_s_per_direction=spec.link_bandwidth_bytes_per_s / 1e9,
                           nic_gbit_per_s=spec.nic_bandwidth_bytes_per_s * 8 / 1e9,
                           nics_per_node=spec.nics_per_node)
            row.update(source=preset.source.title if preset.source else "",
                       url=preset.source.url if preset.source else "")
            rows.append(row)
    columns = ["name", "kind", "aliases", "sms", "bf16_dense_tflops", "hbm_gib", "hbm_tb_per_s",
               "device", "devices_per_node", "link_gb_per_s_per_direction", "nic_gbit_per_s",
               "nics_per_node", "source", "url"]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("sms", "devices_per_node", "nics_per_node"):
        table[col] = table[col].astype("Int64")
    table["device"] = table["device"].fillna("")
    return table

"""Device presets of every kind behind one name space, and the inline node of a ``cluster:``.

A node is N devices of one preset plus its intra-node links, whatever the device kind: a GPU
(``gpus.yaml``), a systolic array, PIM memory, an RDU or an NPU+PIM device
(``accelerators.yaml``). This module resolves a device name to its model without the caller
knowing which file or kind it lives in::

    load_device("h100")            # GPU
    load_device("SN40L")           # RDU
    device_kind("tpu-v3-mxu")      # "systolic"

and defines ``InlineNode``, the ``cluster: {node: {device: ..., count: ..., ...}}`` form for a
node that has no preset. An unknown name is a ValueError listing every valid name.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clustersim.hardware.preset_file import normalise
from clustersim.units import BytesPerSecond, Bytes, Seconds

DEVICE_KINDS = ("gpu", "systolic", "pim", "rdu", "npu_pim")


@functools.cache
def _index() -> dict[str, tuple[str, str]]:
    """Normalised name or alias -> (canonical name, kind), over the packaged presets."""
    from clustersim.hardware.accelerator_presets import accelerator_presets
    from clustersim.hardware.presets import describe_preset, gpu_presets

    index: dict[str, tuple[str, str]] = {}
    for name, preset in accelerator_presets().items():
        for label in (name, *preset.aliases):
            index[normalise(label)] = (name, preset.kind)
    for name in gpu_presets():
        for label in (name, *describe_preset(name, "gpu").aliases):
            index[normalise(label)] = (name, "gpu")
    return index


def device_preset_names() -> dict[str, str]:
    """Canonical device preset name -> kind, over every kind."""
    return {name: kind for name, kind in _index().values()}


def _lookup(name: str) -> tuple[str, str]:
    index = _index()              # cached: callers must not modify it
    found = index.get(normalise(str(name)))
    if found is not None:
        return found
    names = sorted({canon for canon, _ in index.values()})
    close = difflib.get_close_matches(normalise(str(name)), list(index), n=1, cutoff=0.4)
    hint = f" (did you mean {index[close[0]][0]!r}?)" if close else ""
    raise ValueError(f"unknown device preset {name!r}{hint}; valid device presets (kinds "
                     f"{list(DEVICE_KINDS)}): {names}")


def describe_device(name: str) -> str:
    """The canonical preset name of device ``name`` (case-insensitive, aliases allowed)."""
    return _lookup(name)[0]


def device_kind(name: str) -> str:
    """The kind ("gpu", "systolic", "pim", "rdu", "npu_pim") of device preset ``name``."""
    return _lookup(name)[1]


def load_device(name: str, **overrides: Any):
    """The device preset ``name`` of any kind, fields replaced by ``overrides``."""
    canonical, kind = _lookup(name)
    if kind == "gpu":
        from clustersim.hardware.presets import load_gpu

        return load_gpu(canonical, **overrides)
    from clustersim.hardware import accelerator_presets as acc

    return acc._load(kind, canonical, overrides)


class InlineNode(BaseModel):
    """A node without a preset: ``count`` devices of one preset and the links between them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(description="device preset of any kind (see `clustersim presets`)")
    count: int = Field(ge=1, description="devices in the node")
    link_bandwidth: BytesPerSecond = Field(
        description="per-device bandwidth into the node's fabric, per direction")
    link_latency: Seconds = Field(1e-6, description="one hop device -> fabric -> device")
    nic_bandwidth: BytesPerSecond = Field(
        50e9, description="per-NIC bandwidth out of the node, per direction (400 Gb/s default)")
    nics: int | None = Field(None, ge=1, description="NICs per node (default: one per device)")
    nic_latency: Seconds = Field(2.7e-6, description="one network step, NIC to NIC")
    host_memory: Bytes | None = Field(
        None, description="host DDR of the node, shared by devices with a PCIe host tier")
    pcie_bandwidth: BytesPerSecond | None = Field(
        None, description="per-device host link, per direction")

    def spec(self):
        from clustersim.hardware.presets import NodeSpec

        return NodeSpec(name=f"{describe_device(self.device)}x{self.count}",
                        device=describe_device(self.device), devices_per_node=self.count,
                        link_bandwidth_bytes_per_s=self.link_bandwidth,
                        link_latency_s=self.link_latency,
                        nic_bandwidth_bytes_per_s=self.nic_bandwidth,
                        nics_per_node=self.nics or self.count, nic_latency_s=self.nic_latency,
                        host_memory_bytes=self.host_memory,
                        pcie_bandwidth_bytes_per_s=self.pcie_bandwidth, source="inline")

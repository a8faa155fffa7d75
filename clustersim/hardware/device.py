"""The Device contract: ``op_time(op) -> seconds`` plus memory tiers and compute units.

A device is a pure function of an op and its own parameters (and, when loaded, a calibration
profile): no simulation state, so times can be cached and computed before a run. GPUs, systolic
arrays, PIM, RDUs and the CPU model all implement it, so any workload runs on any device.

Extension points for subclasses: ``_op_time_uncached(op)`` (required), ``memory_tiers``,
``tier_roles`` (which tier holds what by default) and ``peak_flops(dtype)`` (the dense peak of
the matrix units, which workloads divide by for MFU; a dtype the device lacks is a ValueError
naming the dtype and the ones it has).

Memory roles: workloads never name a tier. They ask ``device.tier_for(role)`` where role is one of
``MEMORY_ROLES``: ``weights`` (resident parameters, gradients, optimizer state), ``kv`` (the KV
cache), ``activations`` (what a forward pass keeps for its backward) and ``offload`` (the slower
tier that swapped KV, offloaded experts or inactive models wait in; ``None`` when the device has
none).
``op_time`` caches on ``Op.cost_key`` (ops that differ only in labels cost the same).
Communication ops are not timed by a device: the fabric times them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from clustersim.ops import Op


@dataclass(frozen=True, slots=True)
class MemoryTier:
    """One level of a device's memory (HBM, SRAM, host DDR...)."""

    name: str
    capacity_bytes: float
    bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        if self.capacity_bytes <= 0 or self.bandwidth_bytes_per_s <= 0:
            raise ValueError(f"memory tier {self.name!r}: capacity and bandwidth must be > 0, got "
                             f"{self.capacity_bytes} B and {self.bandwidth_bytes_per_s} B/s")


MEMORY_ROLES = ("weights", "kv", "activations", "offload")


class Device(abc.ABC):
    """Base class of every device model. Subclasses are (frozen) parameter dataclasses."""

    name: str

    @property
    @abc.abstractmethod
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        """Memory tiers, fastest-to-use first; the first is where tensors live by default."""

    @abc.abstractmethod
    def _op_time_uncached(self, op: Op) -> float:
        """Seconds that ``op`` takes on this device, alone, from launch to completion."""

    def op_time(self, op: Op) -> float:
        if op.kind.is_communication:
            raise ValueError(f"{self.name}: {op.kind.value} op {op.name!r} is timed by the fabric, "
                             "not by a device")
        cache = self.__dict__.get("_op_time_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_op_time_cache", cache)
        key = op.cost_key
        seconds = cache.get(key)
        if seconds is None:
            seconds = self._op_time_uncached(op)
            cache[key] = seconds
        return seconds

    @property
    def tier_roles(self) -> dict[str, str | None]:
        """Tier name per memory role. Default: everything on the first tier; ``offload`` on a tier
        named ``host`` when the device has one. Override where a device's tiers differ (an RDU
        keeps weights in HBM and offloads to DDR, not to its small SRAM)."""
        first = self.memory_tiers[0].name
        names = {t.name for t in self.memory_tiers}
        return {"weights": first, "kv": first, "activations": first,
                "offload": "host" if "host" in names else None}

    def tier_for(self, role: str) -> MemoryTier | None:
        """The tier that holds ``role`` (one of ``MEMORY_ROLES``) by default on this device."""
        if role not in MEMORY_ROLES:
            raise ValueError(f"unknown memory role {role!r}; expected one of {list(MEMORY_ROLES)}")
        name = self.tier_roles.get(role)
        return None if name is None else self.memory_tier(name)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s of the matrix units for ``dtype`` (the MFU denominator)."""
        raise ValueError(f"{self.name} declares no {dtype} peak (its model has no peak_flops); "
                         "pick a device preset with per-dtype peaks")

    def copy_time_s(self, size_bytes: float, src_tier: str, dst_tier: str) -> float:
        """A copy between two of this device's tiers on an idle path: bytes over the slower
        side's bandwidth (a GPU's host tier is as fast as its PCIe link). Devices with a DMA
        setup cost add it (the RDU's ``copy_latency_s``)."""
        if not size_bytes >= 0:
            raise ValueError(f"{self.name}: copy size must be >= 0 B, got {size_bytes!r}")
        if src_tier == dst_tier:
            raise ValueError(f"{self.name}: copy from {src_tier!r} to itself; give two tiers")
        src, dst = self.memory_tier(src_tier), self.memory_tier(dst_tier)
        return size_bytes / min(src.bandwidth_bytes_per_s, dst.bandwidth_bytes_per_s)

    def memory_tier(self, name: str) -> MemoryTier:
        for tier in self.memory_tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"{self.name} has no memory tier {name!r}; it has "
                       f"{[t.name for t in self.memory_tiers]}")

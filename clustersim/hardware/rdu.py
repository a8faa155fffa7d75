"""A SambaNova-style reconfigurable dataflow unit (RDU) with three memory tiers.

After the SambaNova SN40L (Prabhakar et al., "SambaNova SN40L: Scaling the AI Memory Wall with
Dataflow and Composition of Experts", arXiv 2405.07518, 2024; Hot Chips 2024): pattern compute
units (PCUs) fed from on-chip SRAM in pattern memory units (PMUs), backed by on-package HBM and
off-package DDR. Models live in DDR; the ones in use are copied into HBM ("model switching"), and
a compiled dataflow graph streams operands from whichever tier they live on while computing.

Fidelity: analytical (closed form per op). Because the graph streams, memory and compute
overlap, and an op takes the larger of the two::

    tier      = op.labels["tier"] if given; else, with operand_placement "residency" (the
                default), the tier that holds weights (HBM: the active model's weights stay
                resident there across ops and requests, SRAM only holds the tiles the graph
                streams through); with "working_set", the fastest tier whose capacity holds
                the op's working set (op.bytes_read + op.bytes_written)
    compute_s = op.flops / (peak_flops_per_s[dtype] * compute_efficiency)
    memory_s  = working set / (tier bandwidth * memory_efficiency)
    op_time   = launch_overhead_s + switch_s + max(compute_s, memory_s)

With a calibration profile that has an opinion on the op, ``max(compute, memory)`` at peak rates
is divided by the profile's efficiency instead. ``switch_s`` is the model-switching copy of
``op.labels["switch_bytes"]`` bytes of weights from DDR into HBM before the op can start (0 when
the label is absent)::

    copy_time_s(bytes, src, dst) = bytes / min(bandwidth[src], bandwidth[dst]) + copy_latency_s

Every compute op runs at the one peak of its dtype (the PCUs in systolic mode): no tiling or
pipeline-fill losses beyond ``compute_efficiency``, no partial use of several tiers by one op.
Vector ops (elementwise, norm, softmax, optimizer) in a dtype the PCUs compute in SIMD mode
(``simd_dtypes``: BF16, FP32, INT8 on SN40L, Hot Chips 2024 slide 5) but that has no published
peak are timed by their memory traffic alone: no SIMD rate is published, and every such op the
workloads issue (Adam, sampling) moves bytes at < 10 FLOP/B, far below the chip's balance.
A matmul in a dtype without a peak is refused with the dtypes that have one.

Labels and the cache: ``Device.op_time`` caches on ``Op.cost_key``, which leaves labels out, so
this device keys ops that carry a "tier" or "switch_bytes" label on those labels too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from clustersim.hardware.calibration import EfficiencyModel
from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.gpu import FlopRates
from clustersim.ops import DTYPE_BYTES, Op

TIERS = ("sram", "hbm", "ddr")           # fastest first


class RduTiming(NamedTuple):
    """Where an op's operands stream from and the times that bound it, before efficiency."""

    tier: str
    compute_s: float          # at peak
    memory_s: float           # at the tier's full bandwidth
    switch_s: float           # model-switching copy before the op starts


@dataclass(frozen=True)
class RDU(Device):
    """An RDU socket's parameters, in SI units (s, B, B/s, FLOP/s).

    Frozen and without slots: ``Device.op_time`` caches in the instance ``__dict__``. Presets:
    ``clustersim.hardware.accelerator_presets.load_rdu``.
    """

    name: str
    flops_per_s: Mapping[str, float]          # dense peak per dtype
    sram_capacity_bytes: float
    sram_bandwidth_bytes_per_s: float
    hbm_capacity_bytes: float
    hbm_bandwidth_bytes_per_s: float
    ddr_capacity_bytes: float
    ddr_bandwidth_bytes_per_s: float
    # Achieved fractions of peak compute and of each tier's bandwidth, uncalibrated.
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    # Setup cost of one DMA copy between tiers (descriptor setup, first-byte latency).
    copy_latency_s: float = 0.0
    launch_overhead_s: float = 0.0
    # Where unlabelled ops stream from: "residency" (the weights tier) or "working_set".
    operand_placement: str = "residency"
    # Dtypes the PCUs compute in SIMD mode (vector ops); see the module docstring.
    simd_dtypes: tuple[str, ...] = ("bf16", "fp32", "int8")
    profile: EfficiencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops_per_s", FlopRates(self.flops_per_s))
        self._validate()

    def _validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"RDU {self.name!r}: {what}")

        if not self.flops_per_s:
            fail("flops_per_s needs at least one dtype, e.g. {'bf16': 638e12}")
        for dtype, rate in self.flops_per_s.items():
            if dtype not in DTYPE_BYTES:
                fail(f"flops_per_s has unknown dtype {dtype!r}; expected some of "
                     f"{sorted(DTYPE_BYTES)}")
            if not rate > 0:
                fail(f"flops_per_s[{dtype!r}] must be > 0, got {rate!r}")
        for tier in TIERS:
            for part in ("capacity_bytes", "bandwidth_bytes_per_s"):
                attr = f"{tier}_{part}"
                if not getattr(self, attr) > 0:
                    fail(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        capacities = [getattr(self, f"{t}_capacity_bytes") for t in TIERS]
        if capacities != sorted(capacities):
            fail(f"tiers must grow in capacity sram <= hbm <= ddr, got {capacities} B")
        for attr in ("compute_efficiency", "memory_efficiency"):
            if not 0 < getattr(self, attr) <= 1:
                fail(f"{attr} must be in (0, 1], got {getattr(self, attr)!r}")
        if self.operand_placement not in ("residency", "working_set"):
            fail(f"operand_placement must be 'residency' or 'working_set', got "
                 f"{self.operand_placement!r}")
        object.__setattr__(self, "simd_dtypes", tuple(self.simd_dtypes))
        for attr in ("copy_latency_s", "launch_overhead_s"):
            if not getattr(self, attr) >= 0:
                fail(f"{attr} must be >= 0, got {getattr(self, attr)!r}")

    # -- Device contract ----------------------------------------------------------------------

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        """("sram", "hbm", "ddr"): on-chip PMUs, on-package HBM, off-package DDR."""
        return tuple(MemoryTier(t, getattr(self, f"{t}_capacity_bytes"),
                                getattr(self, f"{t}_bandwidth_bytes_per_s")) for t in TIERS)

    @property
    def tier_roles(self) -> dict[str, str | None]:
        """Weights, KV and activations live in HBM (SN40L keeps the active model's weights there;
        SRAM holds the tiles the dataflow streams through); DDR holds what is switched in."""
        return {"weights": "hbm", "kv": "hbm", "activations": "hbm", "offload": "ddr"}

    def op_time(self, op: Op) -> float:
        placement = _placement_labels(op)
        if placement is None or op.kind.is_communication:
            return super().op_time(op)
        cache = self.__dict__.get("_placed_op_time_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_placed_op_time_cache", cache)
        key = (op.cost_key, placement)
        seconds = cache.get(key)
        if seconds is None:
            seconds = cache[key] = self._op_time_uncached(op)
        return seconds

    def _op_time_uncached(self, op: Op) -> float:
        t = self.timing(op)
        fitted = self._profile_efficiency(op)
        if fitted is not None:
            busy = max(t.compute_s, t.memory_s) / fitted
        else:
            busy = max(t.compute_s / self.compute_efficiency, t.memory_s / self.memory_efficiency)
        return self.launch_overhead_s + t.switch_s + busy

    def _profile_efficiency(self, op: Op) -> float | None:
        if self.profile is None:
            return None
        fitted = self.profile.efficiency(op)
        if fitted is not None and not (fitted > 0 and math.isfinite(fitted)):
            raise ValueError(f"RDU {self.name!r}: calibration profile gave efficiency {fitted!r} "
                             f"for {op.kind.value} op {op.name!r}; expected a positive number")
        return fitted

    # -- the model ----------------------------------------------------------------------------

    def peak_flops(self, dtype: str) -> float:
        return self.peak_flops_per_s(dtype)

    @property
    def host_link_bandwidth_bytes_per_s(self) -> float:
        """HBM <-> DDR copies (swapped KV, switched-in models) run at the slower side."""
        return min(self.hbm_bandwidth_bytes_per_s, self.ddr_bandwidth_bytes_per_s)

    def peak_flops_per_s(self, dtype: str) -> float:
        try:
            return self.flops_per_s[dtype]
        except KeyError:
            raise ValueError(f"RDU {self.name!r} has no {dtype} peak; it has "
                             f"{sorted(self.flops_per_s)} (cast the op, or add a "
                             f"flops_per_s[{dtype!r}] figure)") from None

    def tier_holding(self, working_set_bytes: float, *, fastest: str = "sram") -> MemoryTier:
        """The fastest tier, from ``fastest`` down, whose capacity holds ``working_set_bytes``."""
        tiers = self.memory_tiers[TIERS.index(fastest):]
        for tier in tiers:
            if working_set_bytes <= tier.capacity_bytes:
                return tier
        largest = self.memory_tiers[-1]
        raise ValueError(f"RDU {self.name!r}: a working set of {working_set_bytes:.6g} B fits no "
                         f"tier; the largest, {largest.name!r}, holds "
                         f"{largest.capacity_bytes:.6g} B")

    def operand_tier(self, op: Op) -> MemoryTier:
        """``op.labels["tier"]`` when given (it must hold the working set), else the placement
        rule of ``operand_placement`` (module docstring)."""
        name = op.labels.get("tier")
        if name is None and self.operand_placement == "residency":
            # Where the workload keeps the op's data; capacity is the workload's check (it
            # refuses, or spills with cluster.spill and says so), not a per-op guess from
            # bytes_total, which counts an in-place update's buffers twice.
            return self.memory_tier(self.tier_roles["weights"])
        if name is None:
            return self.tier_holding(op.bytes_total, fastest="sram")
        if name not in TIERS:
            raise ValueError(f"RDU {self.name!r}: op {op.name!r} has label tier={name!r}; "
                             f"expected one of {list(TIERS)}")
        tier = self.memory_tier(name)
        if op.bytes_total > tier.capacity_bytes:
            raise ValueError(f"RDU {self.name!r}: op {op.name!r} is pinned to {name!r} "
                             f"({tier.capacity_bytes:.6g} B) but its working set is "
                             f"{op.bytes_total:.6g} B; pin it to a larger tier or drop the label")
        return tier

    def copy_time_s(self, size_bytes: float, src_tier: str, dst_tier: str) -> float:
        """Copy between two tiers: limited by the slower side, plus one DMA setup."""
        if not size_bytes >= 0:
            raise ValueError(f"RDU {self.name!r}: copy size must be >= 0 B, got {size_bytes!r}")
        for tier in (src_tier, dst_tier):
            if tier not in TIERS:
                raise ValueError(f"RDU {self.name!r}: unknown tier {tier!r}; expected one of "
                                 f"{list(TIERS)}")
        if src_tier == dst_tier:
            raise ValueError(f"RDU {self.name!r}: copy from {src_tier!r} to itself; give two "
                             "different tiers")
        bandwidth = min(self.memory_tier(src_tier).bandwidth_bytes_per_s,
                        self.memory_tier(dst_tier).bandwidth_bytes_per_s)
        return size_bytes / bandwidth + self.copy_latency_s

    def model_switch_time_s(self, weight_bytes: float) -> float:
        """Bring a model's weights from DDR into HBM before it can serve."""
        return self.copy_time_s(weight_bytes, "ddr", "hbm")

    def timing(self, op: Op) -> RduTiming:
        if op.kind.is_communication:
            raise ValueError(f"RDU {self.name!r}: {op.kind.value} op {op.name!r} is timed by the "
                             "fabric, not by a device")
        tier = self.operand_tier(op)
        if not op.flops:
            compute_s = 0.0
        elif op.kind.uses_tensor_cores or op.dtype in self.flops_per_s \
                or op.dtype not in self.simd_dtypes:
            compute_s = op.flops / self.peak_flops_per_s(op.dtype)
        else:                    # a SIMD-mode vector op without a published rate: memory-bound
            compute_s = 0.0
        placement = _placement_labels(op)
        switch = placement[1] if placement is not None else 0.0
        switch_s = self.model_switch_time_s(switch) if switch else 0.0
        return RduTiming(tier.name, compute_s, op.bytes_total / tier.bandwidth_bytes_per_s,
                         switch_s)


def _placement_labels(op: Op) -> tuple[object, float] | None:
    """The labels that change an op's time on an RDU, or None when it carries neither."""
    tier, switch = op.labels.get("tier"), op.labels.get("switch_bytes")
    if tier is None and not switch:
        return None
    try:
        switch_bytes = float(switch or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"op {op.name!r}: label switch_bytes must be a number of bytes, "
                         f"got {switch!r}") from None
    if not switch_bytes >= 0:
        raise ValueError(f"op {op.name!r}: label switch_bytes must be >= 0, got {switch!r}")
    return (tier, switch_bytes)

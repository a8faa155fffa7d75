"""State spilled from a device's default tier to its offload tier, and what that costs.

When ``cluster.spill: true`` and a workload's resident state does not fit the tier a device keeps
it on (``tier_for("weights")``), the overflow waits on the device's offload tier
(``tier_for("offload")``: an RDU's DDR, a GPU's host memory behind PCIe). Every spilled byte an
op touches then moves at the offload tier's bandwidth instead of the default tier's.

Fidelity: analytical, per op. ``SpilledDevice`` wraps a device and adds, to the ops that touch
the spilled state (``spilled_kinds``), the difference between moving their spilled traffic
(``traffic_ratio`` x the op's own bytes: the spilled state scales with the op) over the offload
tier and over the default tier::

    traffic_bytes = traffic_ratio * op.bytes_total
    extra_s       = traffic_bytes * (1 / offload_bandwidth - 1 / default_bandwidth)   (>= 0)

so a spilled run is never faster than the same run with enough memory. The copy is not
overlapped with the op (an upper bound when a runtime prefetches). Everything else (names,
tiers, peaks, other ops) is the wrapped device's.
"""

from __future__ import annotations

from dataclasses import dataclass

from clustersim.hardware.device import Device, MemoryTier
from clustersim.ops import Op, OpKind


def spill_penalty_s(device: Device, traffic_bytes: float) -> float:
    """Extra seconds to move ``traffic_bytes`` over the offload tier instead of the default one."""
    default, offload = device.tier_for("weights"), device.tier_for("offload")
    if offload is None:
        raise ValueError(f"{device.name} has no offload tier to spill to; its tiers are "
                         f"{[t.name for t in device.memory_tiers]}")
    extra = traffic_bytes * (1.0 / offload.bandwidth_bytes_per_s
                             - 1.0 / default.bandwidth_bytes_per_s)
    return max(extra, 0.0)


@dataclass(frozen=True, eq=False)
class SpilledDevice(Device):
    """``base`` whose ``spilled_kinds`` ops move ``traffic_ratio`` x their bytes over the offload
    tier."""

    base: Device
    traffic_ratio: float
    spilled_kinds: tuple[OpKind, ...] = (OpKind.OPTIMIZER,)

    def __post_init__(self) -> None:
        if not self.traffic_ratio >= 0:
            raise ValueError(f"spill traffic ratio must be >= 0, got {self.traffic_ratio!r}")
        spill_penalty_s(self.base, 0.0)          # refuses a device without an offload tier

    @property
    def name(self) -> str:                       # type: ignore[override]
        return self.base.name

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        return self.base.memory_tiers

    @property
    def tier_roles(self) -> dict[str, str | None]:
        return self.base.tier_roles

    def peak_flops(self, dtype: str) -> float:
        return self.base.peak_flops(dtype)

    def copy_time_s(self, size_bytes: float, src_tier: str, dst_tier: str) -> float:
        return self.base.copy_time_s(size_bytes, src_tier, dst_tier)

    def op_time(self, op: Op) -> float:
        seconds = self.base.op_time(op)
        if op.kind in self.spilled_kinds:
            seconds += spill_penalty_s(self.base, self.traffic_ratio * op.bytes_total)
        return seconds

    def _op_time_uncached(self, op: Op) -> float:
        return self.op_time(op)

    def __getattr__(self, attr: str):
        # Model parameters a workload reads (launch overheads, rates) are the wrapped device's.
        if attr.startswith("__") or attr == "base":
            raise AttributeError(attr)
        return getattr(self.base, attr)

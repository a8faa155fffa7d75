"""A host processor (NPU or GPU) whose memory is PIM: one device with two places to run an op.

After NeuPIMs (Heo et al., "NeuPIMs: NPU-PIM Heterogeneous Acceleration for Batched LLM
Inferencing", ASPLOS 2024: an NPU runs the batched GEMMs while PIM in its HBM runs decode
attention), a GPU with HBM-PIM (Samsung's Aquabolt-XL on a host accelerator, Lee et al. ISCA
2021) and Duplex (Yun et al., "Duplex: A Device for Large Language Models with Mixture of
Experts, Grouped Query Attention, and Continuous Batching", MICRO 2024: low Op/B ops go to the
PIM-side processor, high Op/B ops to the xPU).

Fidelity: analytical per op (each side is its own device model). ``op_time(op)`` is the time
on the side that ``place(op)`` picks, by ``dispatch``:

* ``npu``: everything on the host (the baseline: the PIM is plain memory);
* ``attention``: decode attention (one query per sequence) on PIM, the rest on the host
  (NeuPIMs and AttAcc's split);
* ``op_b``: an op with arithmetic intensity (FLOP per byte moved) below ``op_b_threshold`` on
  PIM, the rest on the host (Duplex); with no threshold, each matmul or attention op goes to
  the side that runs it faster, which is the same rule with the threshold at the crossover.

An op whose dtype the PIM units do not take always runs on the host. Memory: the host's tiers
(the PIM stacks are that memory); peaks for MFU: the host's. How the two sides overlap inside
a decode layer (NeuPIMs' blocked vs concurrent modes) is the serving iteration's concern:
``clustersim.workloads.serving.pim_split``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.pim import PIM
from clustersim.ops import Op, OpKind

DISPATCH = ("npu", "attention", "op_b")


@dataclass(frozen=True)
class NpuPim(Device):
    """A host ``npu`` (any Device) with ``pim`` as its memory; see the module docstring."""

    name: str
    npu: Device
    pim: PIM
    dispatch: str = "attention"
    op_b_threshold: float | None = None     # FLOP/B below which ``op_b`` sends an op to PIM

    def __post_init__(self) -> None:
        if self.dispatch not in DISPATCH:
            raise ValueError(f"NpuPim {self.name!r}: dispatch must be one of {list(DISPATCH)}, "
                             f"got {self.dispatch!r}")
        if self.op_b_threshold is not None and not self.op_b_threshold > 0:
            raise ValueError(f"NpuPim {self.name!r}: op_b_threshold must be > 0 FLOP/B or None, "
                             f"got {self.op_b_threshold!r}")
        if not isinstance(self.npu, Device) or isinstance(self.npu, (PIM, NpuPim)):
            raise ValueError(f"NpuPim {self.name!r}: npu must be a host device (GPU, systolic "
                             f"array...), got {type(self.npu).__name__}")

    # -- Device contract ----------------------------------------------------------------------
    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        return self.npu.memory_tiers

    @property
    def tier_roles(self) -> dict[str, str | None]:
        return self.npu.tier_roles

    def peak_flops(self, dtype: str) -> float:
        return self.npu.peak_flops(dtype)

    def __getattr__(self, name: str):
        # Host-side figures the workloads read (host link of a GPU, ...) are the NPU's.
        if name.startswith("_") or name in ("npu", "pim"):
            raise AttributeError(name)
        return getattr(self.npu, name)

    def _op_time_uncached(self, op: Op) -> float:
        return self.side(self.place(op)).op_time(op)

    # -- dispatch -----------------------------------------------------------------------------
    def side(self, where: Literal["npu", "pim"]) -> Device:
        return self.pim if where == "pim" else self.npu

    def place(self, op: Op) -> Literal["npu", "pim"]:
        """Where ``op`` runs under this device's dispatch rule."""
        if self.dispatch == "npu" or op.dtype not in self.pim.dtypes:
            return "npu"
        if self.dispatch == "attention":
            decode = op.kind is OpKind.ATTENTION and len(op.shape) == 6 and op.shape[3] == 1
            return "pim" if decode and not op.backward else "npu"
        if op.kind not in (OpKind.MATMUL, OpKind.ATTENTION) or op.backward:
            return "npu"
        if self.op_b_threshold is not None:
            return "pim" if op.arithmetic_intensity < self.op_b_threshold else "npu"
        return "pim" if self.pim.op_time(op) < self.npu.op_time(op) else "npu"

    def with_dispatch(self, dispatch: str) -> "NpuPim":
        return dataclasses.replace(self, dispatch=dispatch)


def scaled_pim(pim: PIM, stacks: int) -> PIM:
    """``stacks`` identical PIM memories side by side: channels, pins and capacity scale, the
    per-unit command timing does not."""
    if isinstance(stacks, bool) or not isinstance(stacks, int) or stacks <= 0:
        raise ValueError(f"PIM stacks must be a positive integer, got {stacks!r}")
    if stacks == 1:
        return pim
    return dataclasses.replace(pim, name=f"{pim.name}x{stacks}", channels=pim.channels * stacks,
                               external_bandwidth_bytes_per_s=pim.external_bandwidth_bytes_per_s
                               * stacks, capacity_bytes=pim.capacity_bytes * stacks)

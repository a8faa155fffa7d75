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
* ``gemv``: every matmul and attention on PIM, the rest (norms, activations, sampling) on the
  host (PIM-GPT, Wu et al. 2023: the GEMVs of decode run across the banks, a small host ASIC
  does the nonlinear ops);
* ``attention``: decode attention (one query per sequence) on PIM, the rest on the host
  (NeuPIMs and AttAcc's split);
* ``op_b``: an op with arithmetic intensity (FLOP per byte moved) below ``op_b_threshold`` on
  PIM, the rest on the host (Duplex); with no threshold, each matmul or attention op goes to
  the side that runs it faster (``pim.CoExecution.place``), which is the same rule with the
  threshold at the crossover.

An op whose dtype the PIM units do not take always runs on the host. Memory: the PIM stacks
are the host's memory, so ``attach_pim`` gives the host model the stacks' capacity and the
bandwidth their pins deliver; peaks for MFU: the host's. ``overlap`` says whether host and PIM
can work at once (NeuPIMs): ``blocked`` (a plain PIM: the banks are in either memory mode or
PIM mode, so a decode layer's GEMMs and attention run one after the other) or ``concurrent``
(dual row buffers: the serving iteration interleaves two sub-batches so that one's attention
runs on PIM while the other's GEMMs run on the host; ``workloads/serving/pim_split.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.pim import PIM, CoExecution
from clustersim.ops import Op, OpKind

DISPATCH = ("npu", "gemv", "attention", "op_b")
OVERLAP = ("blocked", "concurrent")


@dataclass(frozen=True)
class NpuPim(Device):
    """A host ``npu`` (any Device) with ``pim`` as its memory; see the module docstring."""

    name: str
    npu: Device
    pim: PIM
    dispatch: str = "attention"
    op_b_threshold: float | None = None     # FLOP/B below which ``op_b`` sends an op to PIM
    overlap: str = "blocked"                 # "blocked" or "concurrent" (dual row buffers)

    def __post_init__(self) -> None:
        if self.dispatch not in DISPATCH:
            raise ValueError(f"NpuPim {self.name!r}: dispatch must be one of {list(DISPATCH)}, "
                             f"got {self.dispatch!r}")
        if self.overlap not in OVERLAP:
            raise ValueError(f"NpuPim {self.name!r}: overlap must be one of {list(OVERLAP)}, "
                             f"got {self.overlap!r}")
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
        if self.dispatch == "gemv":
            gemm = op.kind in (OpKind.MATMUL, OpKind.ATTENTION) and not op.backward
            return "pim" if gemm else "npu"
        if self.dispatch == "attention":
            decode = op.kind is OpKind.ATTENTION and len(op.shape) == 6 and op.shape[3] == 1
            return "pim" if decode and not op.backward else "npu"
        if op.kind not in (OpKind.MATMUL, OpKind.ATTENTION) or op.backward:
            return "npu"
        if self.op_b_threshold is not None:
            return "pim" if op.arithmetic_intensity < self.op_b_threshold else "npu"
        return CoExecution(self.npu, self.pim).place(op).device

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


def attach_pim(npu: Device, pim: PIM) -> Device:
    """The host model with the PIM stacks as its memory: their capacity, and the bandwidth
    their pins deliver to a host (what the host's own ops stream at)."""
    fields = {"GPU": ("hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s"),
              "SystolicArray": ("dram_capacity_bytes", "dram_bandwidth_bytes_per_s")}
    names = fields.get(type(npu).__name__)
    if names is None:
        raise ValueError(f"an NPU+PIM host must be a GPU or a systolic array, got "
                         f"{type(npu).__name__} {npu.name!r}")
    capacity, bandwidth = names
    return dataclasses.replace(npu, **{capacity: pim.capacity_bytes,
                                       bandwidth: pim.external_bandwidth_bytes_per_s})

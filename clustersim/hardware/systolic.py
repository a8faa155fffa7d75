"""A SCALE-Sim-style systolic array: rows x cols MAC PEs, three dataflows, double-buffered SRAM.

Fidelity: cycle-level. Cycles are counted with the closed forms of SCALE-Sim's analytical model
(Samajdar et al., "SCALE-Sim: Systolic CNN Accelerator Simulator", arXiv 1811.02883, and "A
Systematic Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim",
ISPASS 2020), which SCALE-Sim v2 reproduces row by row in its demand matrices
(``scalesim/compute/systolic_compute_{os,ws,is}.py``): one demand-matrix row per cycle. No trace
is replayed, so a GEMM of any size costs O(1) to time.

A GEMM C[M,N] = A[M,K] @ B[K,N] (SCALE-Sim's ifmap A, filter B, ofmap C) maps two of its
dimensions onto the array, S_R onto the rows and S_C onto the columns, and streams the third,
T, through it in time. What stays in the PEs names the dataflow::

    dataflow  stationary in the PEs   S_R  S_C  T
    os        outputs C               M    N    K
    ws        weights B               K    N    M
    is        inputs A                K    M    N

The operands are cut into folds of at most rows x cols, run one after another::

    folds           = ceil(S_R / rows) * ceil(S_C / cols)
    cycles_per_fold = 2 * rows + cols + T - 2
    cycles          = folds * cycles_per_fold

``2 rows + cols - 2`` is the pipeline: ``rows`` cycles to load the stationary operand (or, for OS,
to drain the outputs), ``rows - 1`` and ``cols - 1`` cycles of skew while the wavefront crosses the
array; ``T`` cycles stream the temporal dimension. A fold that does not fill the array costs as
much as a full one (SCALE-Sim pads it with null requests), as a partial wave does on a GPU.
SCALE-Sim v2's OS demand matrices overlap the output drain with the skew and count
``rows + cols + T - 2`` per fold; ``os_drain_overlapped=True`` reproduces that instead.

Utilisation is SCALE-Sim's "overall utilization": useful MACs / (cycles * rows * cols), i.e.
``M N K / (cycles * rows * cols)``, never above 1 since every fold holds at most rows x cols
outputs of T MACs each.

Memory: three SRAM buffers (ifmap, filter, ofmap), double-buffered as in SCALE-Sim v2 (half of
each is being filled from DRAM while the array works from the other half), so DRAM transfers
overlap compute and an op takes ``max(compute, DRAM traffic / DRAM bandwidth)``. The traffic is
each operand once, plus re-reads when an operand that is reused across folds does not fit in the
active half of its buffer (``dram_traffic``); the device picks the fold order (column folds or row
folds outermost) that moves fewer bytes, as a compiler would.

Other op kinds: ATTENTION runs as its two GEMMs per (batch, head), Q K^T and P V, with no
masked-tile skipping (backward: twice the forward cycles, the FLOP convention of
``clustersim.ops``); ELEMENTWISE, NORM, SOFTMAX, ... run on a vector unit of
``vector_ops_per_cycle`` (default ``cols``: one element per column per cycle); an op without a
shape is timed at the peak rate. Every kind is bounded below by its DRAM traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from clustersim.hardware.calibration import EfficiencyModel
from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.gpu import FlopRates
from clustersim.ops import DTYPE_BYTES, Op, OpKind

DATAFLOWS = ("os", "ws", "is")


class GemmMapping(NamedTuple):
    """How one GEMM folds onto the array under one dataflow (see the module docstring)."""

    dataflow: str
    spatial_rows: int          # S_R, the GEMM dimension mapped onto the array rows
    spatial_cols: int          # S_C, mapped onto the array columns
    temporal: int              # T, streamed through the array in time
    row_folds: int
    col_folds: int
    cycles_per_fold: int
    cycles: int
    utilisation: float         # useful MACs / (cycles * rows * cols)
    mapping_efficiency: float  # mean fraction of PEs that hold work, over the folds

    @property
    def folds(self) -> int:
        return self.row_folds * self.col_folds


class DramTraffic(NamedTuple):
    """Bytes one GEMM moves between DRAM and each SRAM buffer."""

    ifmap_bytes: float
    filter_bytes: float
    ofmap_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.ifmap_bytes + self.filter_bytes + self.ofmap_bytes


class SystolicTiming(NamedTuple):
    """The two lower bounds on an op's time; the op takes the larger (double buffering)."""

    cycles: float          # compute cycles (scaled by the dtype's rate)
    compute_s: float
    dram_bytes: float
    memory_s: float

    @property
    def ideal_s(self) -> float:
        return max(self.compute_s, self.memory_s)


@dataclass(frozen=True)
class SystolicArray(Device):
    """A systolic array's parameters, in SI units (s, B, B/s, Hz).

    Frozen and without slots: ``Device.op_time`` caches in the instance ``__dict__``. Presets:
    ``clustersim.hardware.accelerator_presets.load_systolic``.
    """

    name: str
    rows: int
    cols: int
    clock_hz: float
    dataflow: str                                  # "os", "ws" or "is"
    ifmap_sram_bytes: float
    filter_sram_bytes: float
    ofmap_sram_bytes: float
    dram_bandwidth_bytes_per_s: float
    dram_capacity_bytes: float
    # MACs each PE completes per cycle, per operand dtype: 1.0 at the array's native width.
    # TPU v1 runs 8-bit operands at full rate and 16-bit ones at a quarter (Jouppi et al. 2017).
    macs_per_pe_per_cycle: Mapping[str, float] = field(default_factory=lambda: {"bf16": 1.0})
    # Elementwise work (activation, normalisation) on the vector unit; None = one element per
    # column per cycle, the width of one row of outputs leaving the array.
    vector_ops_per_cycle: float | None = None
    # Cost of issuing one op (instruction dispatch); 0 keeps the cycle counts exact.
    launch_overhead_s: float = 0.0
    # True: SCALE-Sim v2's OS demand matrices (drain overlapped, rows + cols + T - 2 per fold).
    os_drain_overlapped: bool = False
    profile: EfficiencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "macs_per_pe_per_cycle", FlopRates(self.macs_per_pe_per_cycle))
        self._validate()

    def _validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"SystolicArray {self.name!r}: {what}")

        for attr in ("rows", "cols"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{attr} must be a positive integer, got {value!r}")
        if self.dataflow not in DATAFLOWS:
            fail(f"dataflow must be one of {list(DATAFLOWS)}, got {self.dataflow!r}")
        for attr in ("clock_hz", "ifmap_sram_bytes", "filter_sram_bytes", "ofmap_sram_bytes",
                     "dram_bandwidth_bytes_per_s", "dram_capacity_bytes"):
            if not getattr(self, attr) > 0:
                fail(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        if not self.macs_per_pe_per_cycle:
            fail("macs_per_pe_per_cycle needs at least one dtype, e.g. {'bf16': 1.0}")
        for dtype, rate in self.macs_per_pe_per_cycle.items():
            if dtype not in DTYPE_BYTES:
                fail(f"macs_per_pe_per_cycle has unknown dtype {dtype!r}; expected some of "
                     f"{sorted(DTYPE_BYTES)}")
            if not rate > 0:
                fail(f"macs_per_pe_per_cycle[{dtype!r}] must be > 0, got {rate!r}")
        if self.vector_ops_per_cycle is not None and not self.vector_ops_per_cycle > 0:
            fail(f"vector_ops_per_cycle must be > 0 or None, got {self.vector_ops_per_cycle!r}")
        if not self.launch_overhead_s >= 0:
            fail(f"launch_overhead_s must be >= 0, got {self.launch_overhead_s!r}")

    # -- Device contract ----------------------------------------------------------------------

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        """("dram",): where tensors live. The SRAM buffers are scratchpads the op model manages,
        not a tier anything is allocated on."""
        return (MemoryTier("dram", self.dram_capacity_bytes, self.dram_bandwidth_bytes_per_s),)

    def _op_time_uncached(self, op: Op) -> float:
        return self.launch_overhead_s + self.timing(op).ideal_s / self.efficiency(op)

    def efficiency(self, op: Op) -> float:
        """1 (the cycle counts are the model), unless a calibration profile has an opinion."""
        if self.profile is not None:
            fitted = self.profile.efficiency(op)
            if fitted is not None:
                if not (fitted > 0 and math.isfinite(fitted)):
                    raise ValueError(f"SystolicArray {self.name!r}: calibration profile gave "
                                     f"efficiency {fitted!r} for {op.kind.value} op {op.name!r}; "
                                     "expected a positive number")
                return float(fitted)
        return 1.0

    # -- the cycle model ----------------------------------------------------------------------

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def peak_flops_per_s(self, dtype: str) -> float:
        """2 FLOP per MAC, every PE every cycle."""
        return 2.0 * self.pes * self.clock_hz * self.mac_rate(dtype)

    def peak_flops(self, dtype: str) -> float:
        return self.peak_flops_per_s(dtype)

    def mac_rate(self, dtype: str) -> float:
        try:
            return self.macs_per_pe_per_cycle[dtype]
        except KeyError:
            raise ValueError(f"SystolicArray {self.name!r} has no {dtype} MACs; it supports "
                             f"{sorted(self.macs_per_pe_per_cycle)} (cast the op, or add the "
                             f"dtype to macs_per_pe_per_cycle)") from None

    def _dataflow(self, dataflow: str | None) -> str:
        chosen = self.dataflow if dataflow is None else dataflow
        if chosen not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {list(DATAFLOWS)}, got {chosen!r}")
        return chosen

    def gemm_mapping(self, m: int, n: int, k: int, dataflow: str | None = None) -> GemmMapping:
        """Folds, cycles and utilisation of C[m,n] = A[m,k] @ B[k,n] (default: own dataflow)."""
        flow = self._dataflow(dataflow)
        for label, size in (("m", m), ("n", n), ("k", k)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"GEMM {label} must be a positive integer, got {size!r}")
        s_r, s_c, t = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[flow]
        row_folds, col_folds = -(-s_r // self.rows), -(-s_c // self.cols)
        fill = self.rows if flow == "os" and self.os_drain_overlapped else 2 * self.rows
        per_fold = fill + self.cols + t - 2
        cycles = row_folds * col_folds * per_fold
        return GemmMapping(flow, s_r, s_c, t, row_folds, col_folds, per_fold, cycles,
                           utilisation=(m * n * k) / (cycles * self.pes),
                           mapping_efficiency=(s_r * s_c) / (row_folds * col_folds * self.pes))

    def gemm_cycles(self, m: int, n: int, k: int, dataflow: str | None = None) -> int:
        """Compute cycles of one GEMM at the native rate (see the module docstring)."""
        return self.gemm_mapping(m, n, k, dataflow).cycles

    def utilisation(self, m: int, n: int, k: int, dataflow: str | None = None) -> float:
        """Useful MACs over PE-cycles spent, in (0, 1]."""
        return self.gemm_mapping(m, n, k, dataflow).utilisation

    def dram_traffic(self, m: int, n: int, k: int, dtype_bytes: int,
                     dataflow: str | None = None) -> DramTraffic:
        """Bytes one GEMM moves to and from DRAM, with ``dtype_bytes`` per element.

        Each operand is read once and C written once, unless an operand reused across folds does
        not fit in the active half of its buffer: then it is re-read for every fold of the other
        dimension, and partial sums that cannot stay in the ofmap buffer between the K folds of
        WS/IS are written and read back (``2 * K folds - 1`` transfers of C). Of the two fold
        orders (column folds outermost, as SCALE-Sim loops, or row folds outermost) the cheaper
        is taken. Partial sums are counted at the op's element width.
        """
        mp = self.gemm_mapping(m, n, k, dataflow)
        eb = float(dtype_bytes)
        cap_i, cap_f, cap_o = (self.ifmap_sram_bytes / 2, self.filter_sram_bytes / 2,
                               self.ofmap_sram_bytes / 2)
        a, b, c = m * k * eb, k * n * eb, m * n * eb
        rf, cf = mp.row_folds, mp.col_folds

        def once_or(size: float, resident: float, cap: float, times: int) -> float:
            return size if resident <= cap else size * times

        spill = 2 * rf - 1                     # C transfers when partial sums leave the buffer
        if mp.dataflow == "os":                # A and B both stream; C leaves each fold done
            cols_outer = DramTraffic(once_or(a, a, cap_i, cf),
                                     once_or(b, k * min(self.cols, n) * eb, cap_f, rf), c)
            rows_outer = DramTraffic(once_or(a, min(self.rows, m) * k * eb, cap_i, cf),
                                     once_or(b, b, cap_f, rf), c)
        elif mp.dataflow == "ws":              # B stationary (read once); A streams; C partial
            cols_outer = DramTraffic(once_or(a, a, cap_i, cf), b,
                                     once_or(c, m * min(self.cols, n) * eb, cap_o, spill))
            rows_outer = DramTraffic(once_or(a, m * min(self.rows, k) * eb, cap_i, cf), b,
                                     once_or(c, c, cap_o, spill))
        else:                                  # "is": A stationary; B streams; C partial
            cols_outer = DramTraffic(a, once_or(b, b, cap_f, cf),
                                     once_or(c, min(self.cols, m) * n * eb, cap_o, spill))
            rows_outer = DramTraffic(a, once_or(b, min(self.rows, k) * n * eb, cap_f, cf),
                                     once_or(c, c, cap_o, spill))
        return min(cols_outer, rows_outer, key=lambda t: t.total_bytes)

    # -- ops ----------------------------------------------------------------------------------

    def timing(self, op: Op) -> SystolicTiming:
        """Compute cycles, DRAM bytes and the two times they take, before efficiency."""
        if op.kind.is_communication:
            raise ValueError(f"SystolicArray {self.name!r}: {op.kind.value} op {op.name!r} is "
                             "timed by the fabric, not by a device")
        eb = DTYPE_BYTES[op.dtype]
        dram_bytes = op.bytes_total
        if op.kind is OpKind.MATMUL and op.shape:
            if len(op.shape) != 4:
                raise ValueError(f"SystolicArray {self.name!r}: matmul {op.name!r} needs shape "
                                 f"(batch, m, n, k), got {op.shape}")
            batch, m, n, k = op.shape
            cycles = batch * self.gemm_cycles(m, n, k) / self.mac_rate(op.dtype)
            # op.bytes_total already counts each operand once (and a shared B once); add the
            # re-reads that the buffers cannot avoid, per GEMM of the batch.
            refetch = self.dram_traffic(m, n, k, eb).total_bytes - eb * (m * k + k * n + m * n)
            dram_bytes += batch * refetch
        elif op.kind is OpKind.ATTENTION and op.shape:
            if len(op.shape) != 6:
                raise ValueError(f"SystolicArray {self.name!r}: attention {op.name!r} needs "
                                 "shape (batch, q_heads, kv_heads, q_len, kv_len, head_dim), "
                                 f"got {op.shape}")
            batch, q_heads, _kv_heads, q_len, kv_len, head_dim = op.shape
            per_head = (self.gemm_cycles(q_len, kv_len, head_dim)       # S = Q K^T
                        + self.gemm_cycles(q_len, head_dim, kv_len))     # O = P V
            passes = 2 if op.backward else 1
            cycles = passes * batch * q_heads * per_head / self.mac_rate(op.dtype)
        elif op.kind in (OpKind.MATMUL, OpKind.ATTENTION):
            cycles = op.flops / (2.0 * self.pes * self.mac_rate(op.dtype))
        else:
            lanes = self.vector_ops_per_cycle or float(self.cols)
            cycles = op.flops / lanes
        return SystolicTiming(cycles, cycles / self.clock_hz, dram_bytes,
                              dram_bytes / self.dram_bandwidth_bytes_per_s)

"""Processing-in-memory DRAM: MAC units beside the banks, and NPU + PIM co-execution.

Models DRAM with a SIMD MAC unit next to every bank (SK hynix GDDR6-AiM, Kwon et al. ISSCC
2022) or every pair of banks (Samsung HBM-PIM / Aquabolt-XL, Kwon et al. ISSCC 2021, Lee et al.
ISCA 2021). All units work at once ("all-bank" mode), each on the data in its own banks, so the
internal bandwidth is units x burst / tCCD, several times what the pins deliver to a host. That
pays off for ops that read each byte about once (GEMV, decode attention) and loses to a host
accelerator for ops with reuse (a large GEMM), which PIM streams from the banks once per input
row.

Fidelity: cycle-level in a simplified DRAM-command form. A unit streams its share of a matrix
as row steps and column bursts; every row step opens a row in each of the unit's banks (tRCD)
and closes it (tRP); every burst is one column access per tCCD, slowed only if the unit has too
few lanes for the burst's elements::

    units           = channels * banks_per_channel / banks_per_unit
    commands        = ceil(banks_per_channel / banks_per_command)   (per channel per step)
    t_col           = max(tCCD, ceil((burst_bytes / dtype_bytes) / mac_lanes) / pim_clock_hz,
                          commands * t_cmd)
    t_row           = tRCD + tRP + (commands - 1) * max(tRRD, tFAW / 4)
    stream(b)       = ceil(b / (row_bytes * banks_per_unit)) * t_row
                      + ceil(b / burst_bytes) * t_col          (b = bytes one unit streams)

The command bus: each channel has one, and it carries one command per ``t_cmd``. In all-bank
mode (HBM-PIM's AB-PIM mode, Lee et al. ISCA 2021; AiM's MACAB/ACTAB commands, Kwon et al.
ISSCC 2022) one command reaches every bank of the channel (``banks_per_command`` = None), so
``commands`` = 1 and more banks per channel cost no command slots. With commands that reach
fewer banks (per-bank or per-bank-group PIM), a column step needs ``commands`` slots and every
row step ``commands`` activations, which DRAM spaces by tRRD and at most four per tFAW (JEDEC
HBM2/GDDR6; figures from Ramulator 2's presets). Once ``commands * t_cmd`` exceeds the MAC's
own column time, adding banks to a channel stops making a GEMV faster.

A GEMV y[rows] = W[rows, k] x[k] with W resident in the banks gives each unit whole output rows
(no cross-unit reduction)::

    rows_per_unit   = ceil(rows / units)
    bank_s          = vectors * stream(rows_per_unit * k * dtype_bytes)
    io_s            = vectors * (channels * k + rows) * dtype_bytes / external_bandwidth
    gemv            = bank_s + io_s

``io_s`` is the host writing x into every channel's units (each channel has its own pins) and
reading y back; it is not overlapped with the bank work (the host issues the PIM commands).
Refresh and bank conflicts with host traffic are not modelled.

Host fallback: an op that is not a matmul or attention, in a dtype the MAC units do not take
(fp32 softmax, sampling, norms, Adam), runs on the host processor that drives the PIM memory
(a standalone PIM node still has one: PIM-GPT's ASIC, HBM-PIM's host GPU/CPU). It reads its
operands out and writes its results back over the pins, so it takes
``launch + bytes / external_bandwidth``; the host's arithmetic is taken as not the bottleneck
(these ops do about 1-10 FLOP per byte). A matmul or attention in such a dtype is refused: it is
what the PIM units exist to run.

Op kinds: MATMUL (batch, m, n, k) runs as ``batch * m`` GEMVs over the n x k matrix B (PIM has no
operand reuse, so a batch of m rows re-streams B m times). ATTENTION runs per (batch, query head,
query position) as the GEMV K q over that head's cached keys then V^T p over its values, with the
softmax on the host (scores read out, probabilities written back); twice that for backward. Other
kinds stream their bytes through the units at bank parallelism, bounded by the MAC rate.
Attention takes the cheaper of that head-spread mapping and a head-per-channel one (each
sequence's KV head in one channel, over that channel's units, the query sent to that channel
only), see ``_attention_s``.

``CoExecution`` pairs a host NPU (any ``Device``: a GPU, a systolic array) with a PIM memory and
either places an op on the faster one or splits a matmul's output columns between them so both
finish together: with T_npu and T_pim the times each takes alone, and each side's time
proportional to the columns it gets, the PIM fraction is ``T_npu / (T_npu + T_pim)`` and both
finish at ``T_npu * T_pim / (T_npu + T_pim)``, never later than either alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from clustersim.hardware.calibration import EfficiencyModel
from clustersim.hardware.device import Device, MemoryTier
from clustersim.ops import DTYPE_BYTES, Op, OpKind


class GemvCost(NamedTuple):
    """The parts of a GEMV's time on PIM (see the module docstring)."""

    rows_per_unit: int
    row_activations: int      # row steps per unit per input vector (each: tRCD + tRP)
    bursts: int               # column accesses per unit per input vector
    bank_s: float
    io_bytes: float
    io_s: float

    @property
    def time_s(self) -> float:
        return self.bank_s + self.io_s


@dataclass(frozen=True)
class PIM(Device):
    """A PIM memory's parameters, in SI units (s, B, B/s, Hz).

    Frozen and without slots: ``Device.op_time`` caches in the instance ``__dict__``. Presets:
    ``clustersim.hardware.accelerator_presets.load_pim``.
    """

    name: str
    channels: int                        # independent channels (HBM: pseudo-channels)
    banks_per_channel: int               # banks with a MAC unit nearby
    banks_per_unit: int                  # 1: a unit per bank (AiM); 2: per bank pair (HBM-PIM)
    mac_lanes: int                       # multiply-accumulate lanes per unit (16-bit)
    pim_clock_hz: float
    burst_bytes: int                     # bytes one column access delivers from one bank
    row_bytes: int                       # DRAM page (row buffer) per bank
    t_rcd_s: float                       # activate to column command
    t_rp_s: float                        # precharge
    external_bandwidth_bytes_per_s: float    # what the pins deliver to a host, all channels
    capacity_bytes: float
    # Column to column in all-bank PIM mode; None = one PIM clock (each unit takes one column
    # access per cycle of its clock, which is how both products quote their MAC rate).
    t_ccd_s: float | None = None
    dtypes: tuple[str, ...] = ("fp16", "bf16")   # operand types the MAC units take
    # Banks one PIM command reaches; None = every bank of the channel (all-bank mode).
    banks_per_command: int | None = None
    # Spacing of two commands on a channel's command bus; None = one column period.
    t_cmd_s: float | None = None
    t_rrd_s: float = 0.0                 # activate to activate, different banks
    t_faw_s: float = 0.0                 # window holding at most four activates
    launch_overhead_s: float = 0.0
    profile: EfficiencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        self._validate()

    def _validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"PIM {self.name!r}: {what}")

        for attr in ("channels", "banks_per_channel", "banks_per_unit", "mac_lanes",
                     "burst_bytes", "row_bytes"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{attr} must be a positive integer, got {value!r}")
        if self.banks_per_channel % self.banks_per_unit:
            fail(f"banks_per_channel ({self.banks_per_channel}) must be a multiple of "
                 f"banks_per_unit ({self.banks_per_unit})")
        for attr in ("pim_clock_hz", "external_bandwidth_bytes_per_s", "capacity_bytes"):
            if not getattr(self, attr) > 0:
                fail(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        bpc = self.banks_per_command
        if bpc is not None and (isinstance(bpc, bool) or not isinstance(bpc, int) or bpc <= 0
                                or bpc % self.banks_per_unit):
            fail(f"banks_per_command must be None (all banks) or a positive multiple of "
                 f"banks_per_unit ({self.banks_per_unit}), got {bpc!r}")
        if self.t_cmd_s is not None and not self.t_cmd_s > 0:
            fail(f"t_cmd_s must be > 0 or None (one column period), got {self.t_cmd_s!r}")
        for attr in ("t_rrd_s", "t_faw_s"):
            if not getattr(self, attr) >= 0:
                fail(f"{attr} must be >= 0, got {getattr(self, attr)!r}")
        if self.t_ccd_s is not None and not self.t_ccd_s > 0:
            fail(f"t_ccd_s must be > 0 or None (one PIM clock), got {self.t_ccd_s!r}")
        for attr in ("t_rcd_s", "t_rp_s", "launch_overhead_s"):
            if not getattr(self, attr) >= 0:
                fail(f"{attr} must be >= 0, got {getattr(self, attr)!r}")
        if not self.dtypes or any(d not in DTYPE_BYTES for d in self.dtypes):
            fail(f"dtypes must be a non-empty list of {sorted(DTYPE_BYTES)}, got {self.dtypes!r}")

    # -- derived figures ----------------------------------------------------------------------

    @property
    def units(self) -> int:
        return self.channels * self.banks_per_channel // self.banks_per_unit

    @property
    def column_period_s(self) -> float:
        """tCCD in PIM mode: ``t_ccd_s``, or one PIM clock when that is None."""
        return self.t_ccd_s if self.t_ccd_s is not None else 1.0 / self.pim_clock_hz

    @property
    def internal_bandwidth_bytes_per_s(self) -> float:
        """All units reading one burst per column step (tCCD, or the command bus's pace)."""
        return self.units * self.burst_bytes / self.column_time_s()

    @property
    def commands_per_step(self) -> int:
        """Commands a channel's bus carries per column (or row) step of all its units."""
        reach = self.banks_per_command or self.banks_per_channel
        return -(-self.banks_per_channel // reach)

    @property
    def command_period_s(self) -> float:
        return self.t_cmd_s if self.t_cmd_s is not None else self.column_period_s

    @property
    def row_step_s(self) -> float:
        """Open and close a row in every unit's banks: tRCD + tRP, plus the spacing of the
        extra activations when one command does not reach every bank."""
        extra = (self.commands_per_step - 1) * max(self.t_rrd_s, self.t_faw_s / 4)
        return self.t_rcd_s + self.t_rp_s + extra

    def column_time_s(self, dtype: str | None = None) -> float:
        """One column step of every unit: tCCD, longer if the lanes need more cycles for the
        burst's elements or the command bus needs more slots to reach every bank."""
        bus = self.commands_per_step * self.command_period_s
        if dtype is None:
            return max(self.column_period_s, bus)
        elements = self.burst_bytes / self._dtype_bytes(dtype)
        return max(self.column_period_s, bus,
                   math.ceil(elements / self.mac_lanes) / self.pim_clock_hz)

    def peak_flops_per_s(self, dtype: str) -> float:
        """2 FLOP per multiply-accumulate, one burst's elements per unit per ``t_col``."""
        elements = self.burst_bytes / self._dtype_bytes(dtype)
        return 2.0 * self.units * elements / self.column_time_s(dtype)

    def peak_flops(self, dtype: str) -> float:
        return self.peak_flops_per_s(dtype)

    def _dtype_bytes(self, dtype: str) -> int:
        if dtype not in self.dtypes:
            raise ValueError(f"PIM {self.name!r}: its MAC units take {list(self.dtypes)}, not "
                             f"{dtype} (cast the op, or list {dtype!r} in dtypes)")
        return DTYPE_BYTES[dtype]

    # -- Device contract ----------------------------------------------------------------------

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        """("dram",) at the internal bandwidth, which is what the PIM units read at; a host
        reads the same memory at ``external_bandwidth_bytes_per_s``."""
        return (MemoryTier("dram", self.capacity_bytes, self.internal_bandwidth_bytes_per_s),)

    def _op_time_uncached(self, op: Op) -> float:
        return self.launch_overhead_s + self.ideal_time_s(op) / self.efficiency(op)

    def efficiency(self, op: Op) -> float:
        """1 (the command timing is the model), unless a calibration profile has an opinion."""
        if self.profile is not None:
            fitted = self.profile.efficiency(op)
            if fitted is not None:
                if not (fitted > 0 and math.isfinite(fitted)):
                    raise ValueError(f"PIM {self.name!r}: calibration profile gave efficiency "
                                     f"{fitted!r} for {op.kind.value} op {op.name!r}; expected "
                                     "a positive number")
                return float(fitted)
        return 1.0

    # -- the command-timing model --------------------------------------------------------------

    def stream_time_s(self, bytes_per_unit: float, dtype: str | None = None) -> float:
        """Time for every unit to stream ``bytes_per_unit`` from its banks (in parallel)."""
        if bytes_per_unit <= 0:
            return 0.0
        row_steps = math.ceil(bytes_per_unit / (self.row_bytes * self.banks_per_unit))
        bursts = math.ceil(bytes_per_unit / self.burst_bytes)
        return row_steps * self.row_step_s + bursts * self.column_time_s(dtype)

    def gemv(self, rows: int, k: int, *, vectors: int = 1, dtype: str = "fp16") -> GemvCost:
        """y = W x for ``vectors`` input vectors, W (rows x k) resident in the banks."""
        for label, size in (("rows", rows), ("k", k), ("vectors", vectors)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"PIM {self.name!r}: GEMV {label} must be a positive integer, "
                                 f"got {size!r}")
        eb = self._dtype_bytes(dtype)
        rows_per_unit = -(-rows // self.units)
        per_unit = rows_per_unit * k * eb
        io_bytes = vectors * (self.channels * k + rows) * eb
        row_steps = math.ceil(per_unit / (self.row_bytes * self.banks_per_unit))
        return GemvCost(rows_per_unit, row_activations=row_steps,
                        bursts=math.ceil(per_unit / self.burst_bytes),
                        bank_s=vectors * self.stream_time_s(per_unit, dtype),
                        io_bytes=io_bytes, io_s=io_bytes / self.external_bandwidth_bytes_per_s)

    def ideal_time_s(self, op: Op) -> float:
        """The op's time from the command model, before efficiency and launch overhead."""
        if op.kind.is_communication:
            raise ValueError(f"PIM {self.name!r}: {op.kind.value} op {op.name!r} is timed by the "
                             "fabric, not by a device")
        if op.kind is OpKind.MEMCPY:               # a bank-to-bank copy: no lanes involved
            return self.stream_time_s(op.bytes_total / self.units)
        if op.dtype not in self.dtypes and op.kind not in (OpKind.MATMUL, OpKind.ATTENTION):
            return self.host_fallback_s(op)
        if op.kind is OpKind.MATMUL and op.shape:
            if len(op.shape) != 4:
                raise ValueError(f"PIM {self.name!r}: matmul {op.name!r} needs shape "
                                 f"(batch, m, n, k), got {op.shape}")
            batch, m, n, k = op.shape
            return self.gemv(n, k, vectors=batch * m, dtype=op.dtype).time_s
        if op.kind is OpKind.ATTENTION and op.shape:
            return self._attention_s(op)
        peak = self.peak_flops_per_s(op.dtype)
        if op.kind in (OpKind.MATMUL, OpKind.ATTENTION):      # no shape: a plain roofline
            return max(op.flops / peak, op.bytes_total / self.internal_bandwidth_bytes_per_s)
        return max(self.stream_time_s(op.bytes_total / self.units, op.dtype), op.flops / peak)

    def host_fallback_s(self, op: Op) -> float:
        """An op the MAC units cannot take, run by the host over the pins (module docstring)."""
        return op.bytes_total / self.external_bandwidth_bytes_per_s

    def _attention_s(self, op: Op) -> float:
        """The cheaper of two mappings of the cached K and V onto the banks, as a runtime would
        choose: every head spread over all units (short batches, long contexts), or each
        (sequence, KV head) kept in one channel and spread over that channel's units, so the
        query goes to one channel only (NeuPIMs' and AttAcc's head-per-channel mapping)."""
        if len(op.shape) != 6:
            raise ValueError(f"PIM {self.name!r}: attention {op.name!r} needs shape (batch, "
                             f"q_heads, kv_heads, q_len, kv_len, head_dim), got {op.shape}")
        return min(self.attention_spread_s(op), self.attention_by_channel_s(op))

    def attention_spread_s(self, op: Op) -> float:
        batch, q_heads, _kv_heads, q_len, kv_len, head_dim = op.shape
        eb = self._dtype_bytes(op.dtype)
        vectors = batch * q_heads * q_len * (2 if op.backward else 1)
        # Each head's K (kv_len x head_dim) and V^T (head_dim x kv_len) spread over all units.
        scores = self.stream_time_s(-(-kv_len // self.units) * head_dim * eb, op.dtype)
        mix = self.stream_time_s(-(-head_dim // self.units) * kv_len * eb, op.dtype)
        # q in (every channel), scores out, probabilities back in (every channel), output out.
        io_bytes = vectors * eb * (self.channels * (head_dim + kv_len) + kv_len + head_dim)
        return vectors * (scores + mix) + io_bytes / self.external_bandwidth_bytes_per_s

    def attention_by_channel_s(self, op: Op) -> float:
        batch, q_heads, kv_heads, q_len, kv_len, head_dim = op.shape
        eb = self._dtype_bytes(op.dtype)
        passes = 2 if op.backward else 1
        per_channel = -(-(batch * kv_heads) // self.channels)   # KV instances per channel
        units = self.banks_per_channel // self.banks_per_unit
        group = q_heads // kv_heads * q_len                       # query vectors per instance
        scores = self.stream_time_s(-(-kv_len // units) * head_dim * eb, op.dtype)
        mix = self.stream_time_s(-(-head_dim // units) * kv_len * eb, op.dtype)
        bank_s = passes * per_channel * group * (scores + mix)
        vectors = batch * q_heads * q_len * passes
        io_bytes = vectors * eb * 2 * (head_dim + kv_len)          # q, scores, probs, output
        return bank_s + io_bytes / self.external_bandwidth_bytes_per_s


# -- NPU + PIM co-execution ---------------------------------------------------------------------

class Placement(NamedTuple):
    """Where an op runs faster, and how long it takes on each side."""

    device: Literal["npu", "pim"]
    time_s: float
    npu_s: float
    pim_s: float


class GemvSplit(NamedTuple):
    """A matmul's output columns split so that the NPU and PIM finish together."""

    pim_fraction: float       # of the n output columns, T_npu / (T_npu + T_pim)
    pim_columns: int          # that fraction of n, rounded to whole columns
    time_s: float             # T_npu * T_pim / (T_npu + T_pim)
    npu_s: float              # the whole op on the NPU alone
    pim_s: float              # the whole op on PIM alone


@dataclass(frozen=True)
class CoExecution:
    """A host NPU (any Device) and the PIM memory it is attached to."""

    npu: Device
    pim: PIM

    def place(self, op: Op) -> Placement:
        """Run ``op`` where it is predicted faster; a tie goes to the NPU."""
        npu_s, pim_s = self.npu.op_time(op), self.pim.op_time(op)
        device: Literal["npu", "pim"] = "pim" if pim_s < npu_s else "npu"
        return Placement(device, min(npu_s, pim_s), npu_s, pim_s)

    def split(self, op: Op) -> GemvSplit:
        """Split a matmul's n output columns between NPU and PIM to balance their times.

        Closed form, assuming each side's time is proportional to the columns it gets (true of
        streaming GEMV up to row and burst rounding): PIM takes r = T_npu / (T_npu + T_pim) of
        the columns, and both finish at T_npu * T_pim / (T_npu + T_pim) <= min(T_npu, T_pim).
        """
        if op.kind is not OpKind.MATMUL or len(op.shape) != 4:
            raise ValueError(f"split needs a matmul op with shape (batch, m, n, k) to divide its "
                             f"n output columns, got {op.kind.value} op {op.name!r} with shape "
                             f"{op.shape}")
        npu_s, pim_s = self.npu.op_time(op), self.pim.op_time(op)
        fraction = npu_s / (npu_s + pim_s)
        n = op.shape[2]
        return GemvSplit(fraction, round(fraction * n), npu_s * pim_s / (npu_s + pim_s),
                         npu_s, pim_s)

"""An NVIDIA-style GPU: a roofline with wave quantisation, divided by an achieved efficiency.

Fidelity: analytical (closed form per op). An op's time is

    op_time(op) = kernel_launch_overhead_s + ideal_time_s(op) / efficiency(op)

``ideal_time_s`` is the larger of a compute time and a memory time (``roofline(op)`` returns
both). ``efficiency`` is the achieved fraction of that ideal: a calibration profile's answer
when one is loaded and has an opinion on the op, else the parameter of the resource that bounds
the op (``matmul_efficiency`` / ``attention_efficiency`` for a tensor-core-bound op,
``vector_efficiency`` for a CUDA-core-bound one, ``memory_efficiency`` for any HBM-bound op).

Compute time by kind (``P`` is the peak FLOP/s of the unit the op runs on, ``S = num_sms``):

* MATMUL, shape (batch, m, n, k), tiled into ``tile_m x tile_n`` output tiles, one tile per SM
  at a time::

      tiles   = batch * ceil(m / tile_m) * ceil(n / tile_n)
      waves   = ceil(tiles / S)
      compute = waves * tile_m * tile_n * (op.flops / (batch * m * n)) / (P / S)
              = waves * 2 * tile_m * tile_n * k / (P / S)         for a plain GEMM

  so a partly filled last wave, or a partly filled edge tile, costs as much as a full one.
  Unit: tensor cores for bf16/fp16/fp8/int8/tf32; fp32 uses the tf32 tensor cores only when
  ``allow_tf32`` is set (as ``torch.backends.cuda.matmul.allow_tf32``), else CUDA-core fp32;
  fp64 uses fp64 tensor cores where the GPU has them, else CUDA-core fp64.
* ATTENTION, shape (batch, q_heads, kv_heads, q_len, kv_len, head_dim), a fused (flash) kernel
  with one thread block per (batch, head, ``tile_m`` query rows)::

      blocks  = batch * q_heads * ceil(q_len / tile_m)
      waves   = ceil(blocks / S)
      compute = waves * (op.flops * f / blocks) / (P / S)

  (a backward op's ``op.flops`` counted 5/4 times: flash recomputes ``S = Q K^T``,
  ``FLASH_RECOMPUTE``) where ``f`` is the unmasked fraction: 1 without a causal mask; with one
  (bottom-right aligned, query i sees keys j <= i + kv_len - q_len)
  ``f = sum_i clamp(i + kv_len - q_len + 1, 0, kv_len) / (q_len * kv_len)``, which is
  ``(s + 1) / (2 s)`` for ``q_len == kv_len == s``. A causal kernel's blocks are unequal (query
  tile i sees ~i + 1 key tiles; the backward's blocks are key tiles, key tile j seen by ~n - j
  query tiles), so for a causal op ``waves`` is the effective waves of a greedy list schedule
  of those blocks on S SMs in the kernel's issue order (``attention_block_order``: grid order,
  FlashAttention-2 and cuDNN's fit; or longest first, FlashAttention-3), backward blocks
  ``ceil(kv_len / tile_m)`` per head; see ``attention_waves.py``. It equals ``ceil(blocks / S)``
  when the blocks are equal, and costs up to ~2x when they are fewer than the SMs (8 heads of
  2048 tokens: one block per SM, the kernel lasts as long as its longest block). Query rows of
  a partial tile are not padded (flash kernels shrink the tile or pack GQA heads for short
  queries), so decode stays memory-bound, as it is on real GPUs.
* ELEMENTWISE, NORM, SOFTMAX, EMBEDDING, OPTIMIZER, MEMCPY: ``compute = op.flops / P`` on the
  CUDA cores (fp64 rate for fp64 ops, fp32 rate otherwise).

Memory time for every kind is ``(op.bytes_read + op.bytes_written) / hbm_bandwidth_bytes_per_s``.
An op without a shape (``()``) gets the plain roofline ``op.flops / P`` without quantisation.

Fitted GEMM model: when the GPU has a ``gemm`` (:class:`~clustersim.hardware.gemm_tiles.GemmTiles`)
or its profile carries one (``measurements.gemm_tiles``, written by ``calibrate --from``), a
shaped MATMUL takes ``kernel_launch_overhead_s + GemmTiles.time_s(...)`` instead: a picker over
CUTLASS tile shapes and split-K with waves, operand-bandwidth-bound small tiles, memory-bound
skinny GEMMs and a fixed per-kernel time, fitted to measured GEMMs (see ``gemm_tiles.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping, NamedTuple

from clustersim.hardware.attention_waves import BLOCK_ORDERS, causal_effective_waves
from clustersim.hardware.calibration import EfficiencyModel
from clustersim.hardware.device import Device, MemoryTier
from clustersim.hardware.gemm_tiles import GemmTiles, gemm_output_bytes
from clustersim.ops import DTYPE_BYTES, Op, OpKind

TENSOR_CORE_DTYPES = ("fp8", "int8", "bf16", "fp16", "tf32", "fp64")
# Work a fused attention kernel does per FLOP of the op's count: a flash backward recomputes
# S = Q K^T on chip before dV, dP, dQ, dK (Dao 2023, FlashAttention-2, Algorithm 2), five GEMMs
# where the model-FLOP count of ``ops.attention`` (backward = 2 x forward) has four.
FLASH_RECOMPUTE = {False: 1.0, True: 5.0 / 4.0}
VECTOR_DTYPES = ("fp32", "fp64")


class Roofline(NamedTuple):
    """The two lower bounds on an op's time; the larger one is its ideal time."""

    compute_s: float
    memory_s: float

    @property
    def ideal_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> Literal["compute", "memory"]:
        return "compute" if self.compute_s >= self.memory_s else "memory"


class FlopRates(Mapping[str, float]):
    """An immutable, hashable dtype -> FLOP/s table (so that a frozen GPU stays hashable)."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Mapping[str, float]):
        self._rates = dict(sorted((str(k), float(v)) for k, v in rates.items()))

    def __getitem__(self, dtype: str) -> float:
        return self._rates[dtype]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rates)

    def __len__(self) -> int:
        return len(self._rates)

    def __hash__(self) -> int:
        return hash(tuple(self._rates.items()))

    def __repr__(self) -> str:
        return repr(self._rates)

    def __reduce__(self):
        return (FlopRates, (self._rates,))


def causal_fraction(q_len: int, kv_len: int) -> float:
    """Fraction of the q_len x kv_len score matrix a bottom-right-aligned causal mask keeps.

    Query i (0-based) sees keys j <= i + kv_len - q_len, as in FlashAttention 2 and KV-cached
    decoding. ``(s + 1) / (2 s)`` when ``q_len == kv_len == s``; 1 for a single decode query.
    """
    offset = kv_len - q_len
    empty_rows = min(max(-offset, 0), q_len)       # rows that see no key at all
    rows = q_len - empty_rows
    first, last = empty_rows + offset + 1, q_len + offset   # keys seen by the first/last row
    kept = rows * (first + last) / 2 if rows else 0.0
    return kept / (q_len * kv_len)


@dataclass(frozen=True)
class GPU(Device):
    """A GPU's parameters; all figures in SI base units (s, B, B/s, FLOP/s, Hz).

    Frozen and without slots: ``Device.op_time`` caches in the instance ``__dict__``. Build one
    from a datasheet preset with ``clustersim.hardware.presets.load_gpu``.
    """

    name: str
    num_sms: int
    clock_hz: float                                   # max boost clock (informational)
    # Dense (not 2:4 sparse) peak FLOP/s per dtype. Tensor cores: any of TENSOR_CORE_DTYPES the
    # GPU supports; CUDA cores: fp32 (required) and fp64.
    tensor_flops_per_s: Mapping[str, float]
    vector_flops_per_s: Mapping[str, float]
    hbm_capacity_bytes: float
    hbm_bandwidth_bytes_per_s: float
    l2_bytes: float | None = None
    # Launch-to-start cost of one kernel issued from the CPU without CUDA graphs: measured
    # launch overheads are a few microseconds; back-to-back kernels in a graph pay ~1 us.
    kernel_launch_overhead_s: float = 3e-6
    # Output tile of one thread block (CTA). 128 x 128 is CUTLASS's and cuBLAS's most common
    # tile for large bf16/fp16 GEMMs on A100/H100 and FlashAttention-2's forward query block.
    tile_m: int = 128
    tile_n: int = 128
    # Achieved fractions of the roofline, uncalibrated. Large cuBLAS GEMMs reach ~75-90% of the
    # dense tensor peak (A100 ~280 of 312 TFLOPS bf16, H100 SXM ~750-800 of 989): 0.8.
    matmul_efficiency: float = 0.8
    # FlashAttention-2 reaches 50-73% of A100 peak (Dao 2023); FlashAttention-3 ~75% of H100
    # (Shah et al. 2024): 0.7.
    attention_efficiency: float = 0.7
    # Issue order of a causal attention kernel's unequal blocks (attention_waves.py): "launch"
    # (grid order, FlashAttention-2) or "longest_first" (FlashAttention-3's causal scheduler).
    attention_block_order: str = "launch"
    # Streaming kernels reach ~85-90% of datasheet HBM bandwidth (e.g. ~3.0 of 3.35 TB/s on
    # H100 SXM, ~1.75 of 2.04 TB/s on A100 80GB): 0.85.
    memory_efficiency: float = 0.85
    # CUDA-core-bound elementwise math (rare in ML: most such ops are memory-bound): 0.8.
    vector_efficiency: float = 0.8
    allow_tf32: bool = False
    # Optional host tier (pinned DDR reached over PCIe), for KV-cache swapping and offload.
    # The link bandwidth is per direction.
    host_memory_bytes: float | None = None
    host_link_bandwidth_bytes_per_s: float | None = None
    # Fitted tile/wave/split-K GEMM model (gemm_tiles.py); a loaded profile's ``gemm`` section
    # takes precedence. None: matmuls use the roofline above divided by matmul_efficiency.
    gemm: GemmTiles | None = None
    profile: EfficiencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensor_flops_per_s", FlopRates(self.tensor_flops_per_s))
        object.__setattr__(self, "vector_flops_per_s", FlopRates(self.vector_flops_per_s))
        if isinstance(self.gemm, Mapping):  # from YAML (gpu_overrides: {gemm: {...}})
            object.__setattr__(self, "gemm", GemmTiles.from_dict(self.gemm))
        self._validate()
        if self.profile is not None:
            # A profile measured on another device would silently mistime this one.
            from clustersim.hardware.calibration import check_profile_device

            check_profile_device(self.profile, self.name)

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"GPU {self.name!r}: {what}")

        for attr in ("num_sms", "tile_m", "tile_n"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{attr} must be a positive integer, got {value!r}")
        positive = ["clock_hz", "hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s"]
        positive += [a for a in ("l2_bytes", "host_memory_bytes", "host_link_bandwidth_bytes_per_s")
                     if getattr(self, a) is not None]
        for attr in positive:
            if not getattr(self, attr) > 0:
                fail(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        if not self.kernel_launch_overhead_s >= 0:
            fail(f"kernel_launch_overhead_s must be >= 0, got {self.kernel_launch_overhead_s!r}")
        for attr in ("matmul_efficiency", "attention_efficiency", "memory_efficiency",
                     "vector_efficiency"):
            if not 0 < getattr(self, attr) <= 1:
                fail(f"{attr} must be in (0, 1], got {getattr(self, attr)!r}")
        for table, allowed in (("tensor_flops_per_s", TENSOR_CORE_DTYPES),
                               ("vector_flops_per_s", VECTOR_DTYPES)):
            for dtype, rate in getattr(self, table).items():
                if dtype not in allowed:
                    fail(f"{table} has unknown dtype {dtype!r}; expected some of {list(allowed)}")
                if not rate > 0:
                    fail(f"{table}[{dtype!r}] must be > 0, got {rate!r}")
        if self.attention_block_order not in BLOCK_ORDERS:
            fail(f"attention_block_order must be one of {list(BLOCK_ORDERS)}, got "
                 f"{self.attention_block_order!r}")
        if "fp32" not in self.vector_flops_per_s:
            fail("vector_flops_per_s needs an 'fp32' rate (CUDA-core FP32)")
        if self.host_memory_bytes is not None and self.host_link_bandwidth_bytes_per_s is None:
            fail("host_memory_bytes is set but host_link_bandwidth_bytes_per_s is not "
                 "(give the PCIe bandwidth per direction, e.g. 64 GB/s for Gen5 x16)")

    # -- Device contract ----------------------------------------------------------------------

    @property
    def memory_tiers(self) -> tuple[MemoryTier, ...]:
        """("hbm",) — the GPU's own DRAM (GDDR on PCIe cards) — plus ("host",) when given."""
        hbm = MemoryTier("hbm", self.hbm_capacity_bytes, self.hbm_bandwidth_bytes_per_s)
        if self.host_memory_bytes is None:
            return (hbm,)
        return (hbm, MemoryTier("host", self.host_memory_bytes,
                                self.host_link_bandwidth_bytes_per_s))

    def _op_time_uncached(self, op: Op) -> float:
        tiles = self.gemm_tiles()
        if tiles is not None and op.kind is OpKind.MATMUL and len(op.shape) == 4:
            return self.kernel_launch_overhead_s + self.gemm_kernel_time_s(op, tiles)
        return self.kernel_launch_overhead_s + self.ideal_time_s(op) / self.efficiency(op)

    def gemm_tiles(self) -> GemmTiles | None:
        """The fitted GEMM model in force: the profile's, else this GPU's own, else None."""
        fitted = getattr(self.profile, "gemm", None)
        return fitted if fitted is not None else self.gemm

    def gemm_kernel_time_s(self, op: Op, tiles: GemmTiles) -> float:
        """Kernel time (no launch overhead) of a shaped matmul under the tile model."""
        batch, m, n, k = op.shape
        eb = DTYPE_BYTES[op.dtype]
        return tiles.time_s(batch=batch, m=m, n=n, k=k, elem_bytes=eb,
                            num_sms=self.num_sms, peak_flops_per_s=self.tensor_rate(op.dtype),
                            hbm_bytes_per_s=self.hbm_bandwidth_bytes_per_s,
                            out_bytes=gemm_output_bytes(op.dtype, eb))

    # -- the model, public so that calibration can fit against it ----------------------------

    def ideal_time_s(self, op: Op) -> float:
        """Roofline time with wave quantisation, before efficiency and launch overhead."""
        return self.roofline(op).ideal_s

    def efficiency(self, op: Op) -> float:
        """Achieved fraction of ``ideal_time_s(op)``: the profile's, else the bound resource's."""
        if self.profile is not None:
            fitted = self.profile.efficiency(op)
            if fitted is not None:
                if not (fitted > 0 and math.isfinite(fitted)):
                    raise ValueError(f"GPU {self.name!r}: calibration profile for "
                                     f"{self.profile.device_name!r} gave efficiency {fitted!r} for "
                                     f"{op.kind.value} op {op.name!r}; expected a positive number")
                return float(fitted)
        if self.roofline(op).bound == "memory":
            return self.memory_efficiency
        if op.kind is OpKind.MATMUL:
            return self.matmul_efficiency
        if op.kind is OpKind.ATTENTION:
            return self.attention_efficiency
        return self.vector_efficiency

    def roofline(self, op: Op) -> Roofline:
        if op.kind.is_communication:
            raise ValueError(f"GPU {self.name!r}: {op.kind.value} op {op.name!r} is timed by the "
                             "fabric, not by a device")
        memory_s = op.bytes_total / self.hbm_bandwidth_bytes_per_s
        if op.kind is OpKind.MATMUL:
            compute_s = self._matmul_compute_s(op)
        elif op.kind is OpKind.ATTENTION:
            compute_s = self._attention_compute_s(op)
        else:
            compute_s = op.flops / self.vector_rate(op.dtype)
        return Roofline(compute_s, memory_s)

    def tensor_rate(self, dtype: str) -> float:
        """Peak FLOP/s that a matmul or attention of ``dtype`` runs at (see module docstring)."""
        tensor, vector = self.tensor_flops_per_s, self.vector_flops_per_s
        if dtype == "fp32":
            if self.allow_tf32 and "tf32" in tensor:
                return tensor["tf32"]
            return vector["fp32"]
        if dtype == "fp64":
            rate = tensor.get("fp64") or vector.get("fp64")
        else:
            rate = tensor.get(dtype)
        if rate is None:
            supported = sorted(set(tensor) | {"fp32"} | ({"fp64"} if "fp64" in vector else set()))
            raise ValueError(f"GPU {self.name!r} has no {dtype} matrix units; it supports "
                             f"{supported} (cast the op, or pick a GPU that has {dtype})")
        return rate

    def peak_flops(self, dtype: str) -> float:
        """The Device contract's MFU denominator: the matrix-unit rate of ``dtype``."""
        return self.tensor_rate(dtype)

    def vector_rate(self, dtype: str) -> float:
        """CUDA-core FLOP/s for elementwise work: fp64 rate for fp64, fp32 rate otherwise."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}")
        if dtype == "fp64":
            if "fp64" not in self.vector_flops_per_s:
                raise ValueError(f"GPU {self.name!r} has no fp64 CUDA-core rate in its parameters")
            return self.vector_flops_per_s["fp64"]
        return self.vector_flops_per_s["fp32"]

    def _matmul_compute_s(self, op: Op) -> float:
        peak = self.tensor_rate(op.dtype)
        if not op.shape:
            return op.flops / peak
        if len(op.shape) != 4:
            raise ValueError(f"GPU {self.name!r}: matmul {op.name!r} needs shape (batch, m, n, k), "
                             f"got {op.shape}")
        batch, m, n, _k = op.shape
        tiles = batch * math.ceil(m / self.tile_m) * math.ceil(n / self.tile_n)
        waves = math.ceil(tiles / self.num_sms)
        flops_per_output = op.flops / (batch * m * n)          # 2k for a plain GEMM
        return waves * self.tile_m * self.tile_n * flops_per_output / (peak / self.num_sms)

    def _attention_compute_s(self, op: Op) -> float:
        peak = self.tensor_rate(op.dtype)
        if not op.shape:
            return op.flops / peak
        if len(op.shape) != 6:
            raise ValueError(f"GPU {self.name!r}: attention {op.name!r} needs shape (batch, "
                             f"q_heads, kv_heads, q_len, kv_len, head_dim), got {op.shape}")
        batch, q_heads, _kv_heads, q_len, kv_len, _head_dim = op.shape
        if not op.causal:                    # equal blocks: whole waves
            blocks = batch * q_heads * math.ceil(q_len / self.tile_m)
            waves = math.ceil(blocks / self.num_sms)
            return waves * (op.flops * FLASH_RECOMPUTE[op.backward] / blocks) / (
                peak / self.num_sms)
        # Unequal blocks: query tiles forward, key tiles backward (attention_waves.py).
        blocks = batch * q_heads * math.ceil((kv_len if op.backward else q_len) / self.tile_m)
        waves = causal_effective_waves(q_len, kv_len, batch * q_heads, self.tile_m, self.num_sms,
                                       op.backward, self.attention_block_order)
        unmasked = causal_fraction(q_len, kv_len)
        return waves * (op.flops * unmasked * FLASH_RECOMPUTE[op.backward] / blocks) / (
            peak / self.num_sms)

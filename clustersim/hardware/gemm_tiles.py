"""GEMM time from its shape: CTA tiles, waves, split-K and memory-bound skinny GEMMs.

Fidelity: analytical, a cuBLAS-like kernel picker over a small set of tile configurations, with
four fitted parameters (no per-shape tables). For ``batch`` GEMMs ``C[m,n] = A[m,k] B[k,n]`` in a
dtype of ``eb`` bytes, on a GPU with ``S`` SMs and tensor peak ``P``:

For each candidate (``tm x tn`` output tile, split-K factor ``sk``), as CUTLASS/cuBLAS kernels do:

    ctas    = batch * ceil(m / tm) * ceil(n / tn) * sk
    waves   = ceil(ctas / S)                           one CTA per SM at a time
    k_step  = max(2 tm tn / (mma_efficiency P / S),    tensor-core time per unit of k
                  (tm + tn) eb / (operand_bandwidth / S))   operands from L2/shared memory
    compute = waves * ceil(k / sk) * k_step
    dram    = eb batch (m k + k n) + ob batch m n + (sk > 1) * 2 * 4 sk batch m n   (fp32
              partials of split-K written and read back by the reduction; ``ob`` the output
              element: ``eb``, except fp8 GEMMs, which write bf16, ``gemm_output_bytes``)
    memory  = dram / (memory_efficiency * hbm_bandwidth)
    time    = fixed_s + max(compute, memory)

and the kernel time is the smallest over candidates, as a heuristic that picks the fastest
kernel would give. What each term captures:

* wave quantisation: a partly filled last wave costs a full one (``waves``), and so does a
  partly filled edge tile (``ceil``);
* small tiles (chosen when m or n is small) reuse each operand byte over fewer FLOPs, so their
  main loop is bound by the operand bandwidth rather than the tensor cores: the ``k_step`` max;
* split-K: for small ``m x n`` and long ``k`` (decode, small-batch wgrad) fewer output tiles
  than SMs leave the GPU idle; splitting ``k`` fills it at the price of an fp32 reduction;
* skinny GEMMs (decode, ``m`` of a few tokens) are memory-bound: they stream the weight matrix at
  the achieved HBM bandwidth (``memory``);
* ``fixed_s``: prologue, epilogue and tail of one kernel, a floor under tiny GEMMs (the launch
  overhead of the issuing CPU is the device's ``kernel_launch_overhead_s``, added outside).

The parameters are fitted per GPU from measured GEMM times (``clustersim calibrate --from``);
tile shapes are those CUTLASS 2.x/3.x instantiates for Ampere and Hopper bf16/fp16 GEMMs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

# (tm, tn) output tiles of the CUTLASS / cuBLAS sm80 and sm90 bf16 kernels (cutlass/library
# generator.py: 256x128, 128x256, 128x128, 128x64, 64x128, 64x64; 64x32 for skinny shapes).
TILES: tuple[tuple[int, int], ...] = ((256, 128), (128, 256), (128, 128), (128, 64), (64, 128),
                                      (64, 64), (64, 32))
SPLIT_K: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
PARTIAL_BYTES = 4  # split-K partial sums are fp32
# Output element of a GEMM per operand dtype where it differs: fp8 GEMMs write bf16 (Transformer
# Engine's FP8 linear layers, cuBLASLt fp8 with a bf16 D, XLA's f8e4m3fn x f8e4m3fn -> bf16).
OUTPUT_BYTES = {"fp8": 2}


def gemm_output_bytes(dtype: str, elem_bytes: int) -> int:
    return OUTPUT_BYTES.get(dtype, elem_bytes)


@dataclass(frozen=True)
class GemmTiles:
    """Fitted parameters of the tile model (see the module docstring)."""

    mma_efficiency: float                 # fraction of the dense tensor peak in a big tile's loop
    operand_bandwidth_bytes_per_s: float  # L2/shared-memory operand rate summed over all SMs
    memory_efficiency: float              # fraction of datasheet HBM bandwidth streaming GEMMs get
    fixed_s: float                        # per-kernel prologue, epilogue and tail

    def __post_init__(self) -> None:
        for name in ("mma_efficiency", "memory_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1.5:
                raise ValueError(f"GemmTiles.{name} must be in (0, 1.5], got {value!r}")
        if not self.operand_bandwidth_bytes_per_s > 0:
            raise ValueError("GemmTiles.operand_bandwidth_bytes_per_s must be > 0, "
                             f"got {self.operand_bandwidth_bytes_per_s!r}")
        if not self.fixed_s >= 0:
            raise ValueError(f"GemmTiles.fixed_s must be >= 0, got {self.fixed_s!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "GemmTiles":
        names = {f.name for f in fields(cls)}
        unknown, missing = set(raw) - names, names - set(raw)
        if unknown or missing:
            raise ValueError(f"gemm parameters: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                             f"expected exactly {sorted(names)}")
        return cls(**{k: float(v) for k, v in raw.items()})

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def candidate_time_s(self, *, batch: int, m: int, n: int, k: int, tile: tuple[int, int],
                         split_k: int, elem_bytes: int, num_sms: int, peak_flops_per_s: float,
                         hbm_bytes_per_s: float, out_bytes: int | None = None) -> float:
        """Kernel time of one (tile, split-K) configuration (module docstring)."""
        tm, tn = tile
        ctas = batch * math.ceil(m / tm) * math.ceil(n / tn) * split_k
        waves = math.ceil(ctas / num_sms)
        k_step = max(2.0 * tm * tn / (self.mma_efficiency * peak_flops_per_s / num_sms),
                     (tm + tn) * elem_bytes / (self.operand_bandwidth_bytes_per_s / num_sms))
        compute = waves * math.ceil(k / split_k) * k_step
        ob = elem_bytes if out_bytes is None else out_bytes
        dram = elem_bytes * batch * (m * k + k * n) + ob * batch * m * n
        if split_k > 1:
            dram += 2 * PARTIAL_BYTES * split_k * batch * m * n
        memory = dram / (self.memory_efficiency * hbm_bytes_per_s)
        return self.fixed_s + max(compute, memory)

    def best(self, *, batch: int, m: int, n: int, k: int, elem_bytes: int, num_sms: int,
             peak_flops_per_s: float, hbm_bytes_per_s: float,
             out_bytes: int | None = None) -> tuple[float, tuple[int, int], int]:
        """(time, tile, split_k) of the fastest candidate."""
        best = (math.inf, TILES[0], 1)
        for tile in TILES:
            for split_k in SPLIT_K:
                if split_k > 1 and (split_k > max(1, k // 128)):
                    continue  # each split needs at least one 128-deep k block
                t = self.candidate_time_s(batch=batch, m=m, n=n, k=k, tile=tile, split_k=split_k,
                                          elem_bytes=elem_bytes, num_sms=num_sms,
                                          peak_flops_per_s=peak_flops_per_s,
                                          hbm_bytes_per_s=hbm_bytes_per_s, out_bytes=out_bytes)
                if t < best[0]:
                    best = (t, tile, split_k)
        return best

    def time_s(self, *, batch: int, m: int, n: int, k: int, elem_bytes: int, num_sms: int,
               peak_flops_per_s: float, hbm_bytes_per_s: float,
               out_bytes: int | None = None) -> float:
        return self.best(batch=batch, m=m, n=n, k=k, elem_bytes=elem_bytes, num_sms=num_sms,
                         peak_flops_per_s=peak_flops_per_s, hbm_bytes_per_s=hbm_bytes_per_s,
                         out_bytes=out_bytes)[0]

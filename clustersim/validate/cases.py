"""The microbenchmark suite as data: which kernels, at which shapes, split into fit and held-out.

A :class:`Case` is one kernel at one shape and dtype, and the clustersim :class:`~clustersim.ops.Op`
that models it (built with the same constructors and FLOP conventions the workloads use). Shapes
are drawn log-uniformly from per-family ranges with a seeded generator and rounded to multiples of
16 (as model dimensions are); a case is *held out* when a hash of its key says so (one in four),
so the split is by shape, never by repeat, and is the same in quick and full mode: a shape used to
fit in one mode is never a held-out shape in another. No torch here.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from clustersim import ops
from clustersim.ops import Op, OpKind

FAMILIES = ("gemm", "bmm", "sdpa_prefill", "sdpa_decode", "layer_norm", "softmax", "gelu", "memcpy")
HELD_OUT_ONE_IN = 4

# FLOPs per element, the workloads' conventions (clustersim/workloads/transformer.py): layer
# norm 8, GELU 8; softmax: max, subtract, exp, sum, divide = 5.
LAYER_NORM_FLOPS, SOFTMAX_FLOPS, GELU_FLOPS = 8.0, 5.0, 8.0


@dataclass(frozen=True)
class Case:
    """One kernel at one shape. ``dims`` by family:

    gemm (m, n, k); bmm (batch, m, n, k); sdpa_prefill (batch, heads, seq, head_dim), causal;
    sdpa_decode (batch, heads, kv_len, head_dim), one query; layer_norm and softmax (rows, cols);
    gelu (elements,); memcpy (bytes,).
    """

    family: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.family}/{self.dtype}/{'x'.join(map(str, self.dims))}"

    @property
    def held_out(self) -> bool:
        return zlib.crc32(self.key.encode()) % HELD_OUT_ONE_IN == 0

    @property
    def op(self) -> Op:
        f, d, dt = self.family, self.dims, self.dtype
        if f == "gemm":
            return ops.matmul(d[0], d[1], d[2], dtype=dt, name=self.key)
        if f == "bmm":
            return ops.matmul(d[1], d[2], d[3], batch=d[0], dtype=dt, name=self.key)
        if f == "sdpa_prefill":
            return ops.attention(d[0], d[1], d[1], d[2], d[2], d[3], dtype=dt, causal=True,
                                 name=self.key)
        if f == "sdpa_decode":
            return ops.attention(d[0], d[1], d[1], 1, d[2], d[3], dtype=dt, causal=True,
                                 name=self.key)
        if f == "layer_norm":
            return ops.elementwise(d[0] * d[1], flops_per_element=LAYER_NORM_FLOPS, dtype=dt,
                                   kind=OpKind.NORM, name=self.key)
        if f == "softmax":
            return ops.elementwise(d[0] * d[1], flops_per_element=SOFTMAX_FLOPS, dtype=dt,
                                   kind=OpKind.SOFTMAX, name=self.key)
        if f == "gelu":
            return ops.elementwise(d[0], flops_per_element=GELU_FLOPS, dtype=dt, name=self.key)
        if f == "memcpy":
            return ops.memcpy(d[0], name=self.key)
        raise ValueError(f"unknown benchmark family {f!r}; expected one of {FAMILIES}")


@dataclass(frozen=True)
class Family:
    """How to draw shapes of one family and dtype, and how many to keep in each split."""

    family: str
    dtype: str
    ranges: tuple[tuple[int, int], ...]      # per drawn dimension, inclusive, log-uniform
    train: int
    held_out: int
    max_flops: float = math.inf              # skip shapes too slow to time often
    max_bytes: float = math.inf
    fixed: tuple[int, ...] = ()              # appended dims (e.g. head_dim)
    multiple: int = 16
    avoid_output_bytes: tuple[float, float] | None = None   # skip outputs in [low, high)

    def dims(self, rng: np.random.Generator) -> tuple[int, ...]:
        drawn = []
        for low, high in self.ranges:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
            step = self.multiple if low >= self.multiple else 1
            drawn.append(int(min(high, max(low, step * round(value / step)))))
        return (*drawn, *self.fixed)


def _cases(spec: Family, seed: int) -> Iterator[Case]:
    """Distinct cases of ``spec`` in a fixed order: train quota first met, held-out likewise."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{spec.family}/{spec.dtype}".encode())])
    seen: set[str] = set()
    need = {False: spec.train, True: spec.held_out}
    for _ in range(200 * (spec.train + spec.held_out) + 200):
        if not any(need.values()):
            return
        case = Case(spec.family, spec.dtype, spec.dims(rng))
        op = case.op
        if case.key in seen or op.flops > spec.max_flops or op.bytes_total > spec.max_bytes:
            continue
        band = spec.avoid_output_bytes
        if band is not None and band[0] <= op.bytes_written < band[1]:
            continue
        seen.add(case.key)
        if need[case.held_out]:
            need[case.held_out] -= 1
            yield case


def suite(families: list[Family], seed: int = 0) -> list[Case]:
    return [case for spec in families for case in _cases(spec, seed)]


# Outputs of 32-64 MiB on a CPU: glibc serves them from free heap memory or maps them fresh
# depending on the heap's state, so the same op's samples are bimodal (0.9 ms or 4 ms of page
# faults for 40 MB). No efficiency can fit that; the suite leaves the band out of elementwise
# kernels (see clustersim/hardware/cpu.py) and says so here.
MALLOC_BAND = (32 * 2**20, 64 * 2**20)


def cpu_families(quick: bool, *, low_precision: tuple[str, ...] = ("bf16",)) -> list[Family]:
    """The suite for a CPU. fp32 everywhere; ``low_precision`` dtypes (which run ~100x slower
    than fp32 GEMMs on CPUs without native bf16 units) on small GEMMs, and in full mode on the
    other kernels too; full mode adds small fp16 GEMMs. Elementwise, norm and softmax outputs
    avoid ``MALLOC_BAND``."""
    q = quick
    fams = [
        Family("gemm", "fp32", ((32, 2048),) * 3, 48 if q else 90, 12 if q else 30,
               max_flops=0.4e9 if q else 4e9),
        Family("bmm", "fp32", ((2, 32), (32, 512), (32, 512), (32, 512)), 12 if q else 30,
               4 if q else 10, max_flops=0.2e9 if q else 2e9),
        Family("sdpa_prefill", "fp32", ((1, 4), (2, 16), (64, 1024)), 20 if q else 36,
               5 if q else 12, max_flops=0.3e9 if q else 3e9, fixed=(64,)),
        Family("sdpa_decode", "fp32", ((1, 16), (2, 32), (128, 8192)), 20 if q else 36,
               5 if q else 12, max_bytes=64e6 if q else 256e6, fixed=(64,)),
        Family("layer_norm", "fp32", ((16, 8192), (256, 8192)), 10 if q else 24, 4 if q else 8,
               max_bytes=64e6 if q else 256e6, avoid_output_bytes=MALLOC_BAND),
        Family("softmax", "fp32", ((16, 8192), (256, 8192)), 10 if q else 24, 4 if q else 8,
               max_bytes=64e6 if q else 256e6, avoid_output_bytes=MALLOC_BAND),
        Family("gelu", "fp32", ((2**16, 2**25),), 10 if q else 24, 4 if q else 8,
               max_bytes=64e6 if q else 256e6, avoid_output_bytes=MALLOC_BAND),
        Family("memcpy", "int8", ((2**20, 2**28),), 8 if q else 20, 3 if q else 8,
               max_bytes=256e6 if q else 1.1e9, multiple=4096),
    ]
    for dtype in low_precision:
        fams.append(Family("gemm", dtype, ((16, 256 if q else 512),) * 3, 10 if q else 30,
                           4 if q else 10, max_flops=12e6 if q else 60e6))
        if not q:
            fams += [
                Family("sdpa_prefill", dtype, ((1, 2), (2, 8), (64, 512)), 8, 4,
                       max_flops=0.3e9, fixed=(64,)),
                Family("sdpa_decode", dtype, ((1, 8), (2, 16), (128, 4096)), 8, 4,
                       max_bytes=64e6, fixed=(64,)),
                Family("layer_norm", dtype, ((16, 8192), (256, 8192)), 8, 4, max_bytes=128e6,
                       avoid_output_bytes=MALLOC_BAND),
                Family("softmax", dtype, ((16, 8192), (256, 8192)), 8, 4, max_bytes=128e6,
                       avoid_output_bytes=MALLOC_BAND),
                Family("gelu", dtype, ((2**16, 2**25),), 8, 4, max_bytes=128e6,
                       avoid_output_bytes=MALLOC_BAND),
            ]
    if not q:
        fams.append(Family("gemm", "fp16", ((16, 384),) * 3, 16, 6, max_flops=30e6))
    return fams


def cuda_families(quick: bool, dtypes: tuple[str, ...]) -> list[Family]:
    """The suite for a GPU: larger shapes, every supported dtype."""
    q = quick
    fams: list[Family] = []
    for dtype in dtypes:
        main = dtype == dtypes[0]
        fams += [
            Family("gemm", dtype, ((64, 16384),) * 3, (20 if q else 60) if main else (8 if q else 30),
                   (6 if q else 20) if main else (3 if q else 10), max_flops=2e12),
            Family("bmm", dtype, ((2, 64), (64, 2048), (64, 2048), (64, 2048)), 6 if q else 20,
                   3 if q else 8, max_flops=1e12),
            Family("sdpa_prefill", dtype, ((1, 8), (8, 64), (128, 16384)), 8 if q else 24,
                   3 if q else 8, max_flops=2e12, fixed=(128,)),
            Family("sdpa_decode", dtype, ((1, 64), (8, 64), (128, 65536)), 8 if q else 24,
                   3 if q else 8, max_bytes=4e9, fixed=(128,)),
            Family("layer_norm", dtype, ((128, 65536), (256, 16384)), 6 if q else 16,
                   3 if q else 6, max_bytes=4e9),
            Family("softmax", dtype, ((128, 65536), (256, 16384)), 6 if q else 16,
                   3 if q else 6, max_bytes=4e9),
            Family("gelu", dtype, ((2**18, 2**30),), 6 if q else 16, 3 if q else 6, max_bytes=4e9),
        ]
    fams.append(Family("memcpy", "int8", ((2**22, 2**30),), 5 if q else 12, 2 if q else 5,
                       multiple=4096))
    return fams

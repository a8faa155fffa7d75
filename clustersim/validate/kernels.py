"""Real torch kernels for the suite's cases, with random inputs in rotating buffers.

Inputs are slices of one pool of random values per dtype (``torch.randn``: never zeros, so no
kernel takes a shortcut on them). The pool is at least twice the last-level cache (CPU) or L2
(GPU), and successive calls of a case take their inputs from successive slices, so a repeat never
finds its inputs in the cache left by the call before. A case larger than the pool gets its own
random tensors (it overflows the cache by itself). Imported only when a calibration runs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from clustersim.validate.cases import Case

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64, "int8": torch.int8}
ALIGN_ELEMENTS = 64
MAX_SETS = 32


def input_shapes(case: Case) -> list[tuple[int, ...]]:
    f, d = case.family, case.dims
    if f == "gemm":
        m, n, k = d
        return [(m, k), (k, n)]
    if f == "bmm":
        b, m, n, k = d
        return [(b, m, k), (b, k, n)]
    if f == "sdpa_prefill":
        b, h, s, hd = d
        return [(b, h, s, hd)] * 3
    if f == "sdpa_decode":
        b, h, kv, hd = d
        return [(b, h, 1, hd), (b, h, kv, hd), (b, h, kv, hd)]
    if f in ("layer_norm", "softmax"):
        return [tuple(d)]
    if f == "gelu":
        return [tuple(d)]
    if f == "memcpy":
        return [(d[0] // 4,)] * 2            # source and destination, copied as fp32 words
    raise ValueError(f"unknown benchmark family {f!r}")


def _operation(case: Case, device: torch.device, dtype: torch.dtype
               ) -> Callable[[list[torch.Tensor]], object]:
    f = case.family
    if f == "gemm":
        return lambda t: torch.mm(t[0], t[1])
    if f == "bmm":
        return lambda t: torch.bmm(t[0], t[1])
    if f == "sdpa_prefill":
        return lambda t: F.scaled_dot_product_attention(t[0], t[1], t[2], is_causal=True)
    if f == "sdpa_decode":
        # One query sees every key (a bottom-right causal mask keeps all of them); torch's
        # is_causal aligns top-left, so no mask is the faithful call.
        return lambda t: F.scaled_dot_product_attention(t[0], t[1], t[2])
    if f == "layer_norm":
        cols = case.dims[1]
        weight = torch.randn(cols, device=device, dtype=dtype)
        bias = torch.randn(cols, device=device, dtype=dtype)
        return lambda t: F.layer_norm(t[0], (cols,), weight, bias)
    if f == "softmax":
        return lambda t: torch.softmax(t[0], dim=-1)
    if f == "gelu":
        return lambda t: F.gelu(t[0])
    if f == "memcpy":
        # the destination rotates too: a destination left in the cache would hide the writes
        return lambda t: t[1].copy_(t[0])
    raise ValueError(f"unknown benchmark family {f!r}")


class BufferPool:
    """One random pool per dtype on one device; hands out rotating sets of input views."""

    def __init__(self, device: torch.device, cache_bytes: float, generator_seed: int = 0):
        self.device = device
        self.pool_bytes = int(max(2 * cache_bytes, 64 * 2**20))
        self.seed = generator_seed
        self._pools: dict[torch.dtype, torch.Tensor] = {}

    def _random(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        # randn in fp32 then cast: bf16/fp16 randn is not available everywhere
        return torch.randn(numel, generator=generator, device=self.device,
                           dtype=torch.float32).to(dtype)

    def pool(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._pools:
            numel = self.pool_bytes // torch.empty((), dtype=dtype).element_size()
            self._pools[dtype] = self._random(numel, dtype)
        return self._pools[dtype]

    def input_sets(self, shapes: list[tuple[int, ...]], dtype: torch.dtype
                   ) -> list[list[torch.Tensor]]:
        sizes = [math.prod(s) for s in shapes]
        padded = [ALIGN_ELEMENTS * math.ceil(n / ALIGN_ELEMENTS) for n in sizes]
        footprint = sum(padded)
        pool = self.pool(dtype)
        if footprint > pool.numel():
            own = self._random(footprint, dtype)
            return [self._views(own, 0, shapes, padded)]
        count = max(1, min(MAX_SETS, pool.numel() // footprint))
        return [self._views(pool, i * footprint, shapes, padded) for i in range(count)]

    @staticmethod
    def _views(base: torch.Tensor, offset: int, shapes: list[tuple[int, ...]],
               padded: list[int]) -> list[torch.Tensor]:
        views = []
        for shape, size in zip(shapes, padded):
            views.append(base[offset:offset + math.prod(shape)].view(shape))
            offset += size
        return views


def kernel(case: Case, pool: BufferPool) -> Callable[[int], object]:
    """``run(i)``: the case's torch op on input set ``i`` modulo the number of sets."""
    dtype = torch.float32 if case.family == "memcpy" else TORCH_DTYPES[case.dtype]
    sets = pool.input_sets(input_shapes(case), dtype)
    operation = _operation(case, pool.device, dtype)
    count = len(sets)
    return lambda i: operation(sets[i % count])

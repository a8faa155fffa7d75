"""Ops: what a piece of work is, independent of where it runs.

An :class:`Op` names its kind, its FLOPs, the bytes it reads and writes, its dtype and shape,
and labels (layer, stage, microbatch, expert, request) that travel into the trace. Ops are
frozen and cheap; two ops that differ only in their labels cost the same on any device, so
``Op.cost_key`` (everything but the labels and name) is what devices cache on.

This module sits below both ``hardware`` (which times ops) and ``workloads`` (which makes them)
so that neither has to import the other.

FLOP conventions (the ones papers use for MFU, so that our counts match theirs exactly):

* a GEMM of (m x k) @ (k x n) costs ``2 m n k`` FLOPs;
* attention scores and the weighted sum of values cost ``4 b h s_q s_kv d`` in the forward pass,
  counted over the full (unmasked) square as Megatron-LM (Narayanan et al., 2021, eq. 3) and
  PaLM (Chowdhery et al., 2022, appendix B) do; a causal mask does not change the count, only
  the time (devices skip masked tiles, see ``Op.causal``);
* a backward pass costs twice its forward pass.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping


class OpKind(enum.Enum):
    """What an op does; devices choose their timing model by kind."""

    MATMUL = "matmul"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"
    NORM = "norm"
    SOFTMAX = "softmax"
    EMBEDDING = "embedding"
    MEMCPY = "memcpy"
    OPTIMIZER = "optimizer"
    COLLECTIVE = "collective"
    P2P = "p2p"

    @property
    def is_compute(self) -> bool:
        return self not in (OpKind.COLLECTIVE, OpKind.P2P)

    @property
    def is_communication(self) -> bool:
        return self in (OpKind.COLLECTIVE, OpKind.P2P)

    @property
    def uses_tensor_cores(self) -> bool:
        return self in (OpKind.MATMUL, OpKind.ATTENTION)


# Bytes per element. tf32 is stored as fp32 and only computed at lower precision.
DTYPE_BYTES: dict[str, int] = {
    "fp64": 8,
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class Op:
    """One unit of work. Sizes are totals for the op (FLOP, bytes), never per element."""

    kind: OpKind
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    dtype: str = "bf16"
    # Kind-specific shape: MATMUL (batch, m, n, k); ATTENTION (batch, q_heads, kv_heads, q_len,
    # kv_len, head_dim); others (elements,) or ().
    shape: tuple[int, ...] = ()
    causal: bool = False
    backward: bool = False
    name: str = field(default="", compare=False)
    labels: Mapping[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # A NaN or infinite size would become a NaN time, and a NaN time an event queue that
        # never drains: refuse it where the op is made, naming the op.
        for attr in ("flops", "bytes_read", "bytes_written"):
            value = getattr(self, attr)
            # Plain floats and ints first: the abstract-class checks are slow, and serving
            # builds many ops (same verdict either way; bool is neither type).
            if (type(value) is float or type(value) is int) and 0 <= value < math.inf:
                continue
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f"Op {self.name or self.kind.value}: {attr} must be a finite "
                                 f"number >= 0, got {value!r}")
        for dim in self.shape:
            if type(dim) is int and dim >= 0:
                continue
            if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 0:
                raise ValueError(f"Op {self.name or self.kind.value}: shape {self.shape!r} must "
                                 "hold integers >= 0")
        dtype_bytes(self.dtype)

    @property
    def bytes_total(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """FLOP per byte of memory traffic (inf for an op that moves nothing)."""
        return self.flops / self.bytes_total if self.bytes_total else float("inf")

    @property
    def cost_key(self) -> tuple:
        """Everything that can change the op's time on a device (labels and name cannot)."""
        return (self.kind, self.flops, self.bytes_read, self.bytes_written, self.dtype,
                self.shape, self.causal, self.backward)

    def with_labels(self, **labels: object) -> "Op":
        merged = {**self.labels, **labels}
        return Op(self.kind, self.flops, self.bytes_read, self.bytes_written, self.dtype,
                  self.shape, self.causal, self.backward, self.name, merged)


def _positive(name: str, **sizes: float) -> None:
    for key, value in sizes.items():
        if (type(value) is int or type(value) is float) and 0 < value < math.inf:
            continue            # the common case, without the slow abstract-class checks
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value) or not value > 0):
            raise ValueError(f"{name}: {key} must be a finite number > 0, got {value!r}")


def matmul(m: int, n: int, k: int, *, batch: int = 1, dtype: str = "bf16",
           name: str = "matmul", shared_b: bool = False, **labels: object) -> Op:
    """A (batched) GEMM C[m,n] = A[m,k] @ B[k,n].

    ``shared_b`` means B is one matrix for the whole batch (a weight), so it is read once.
    """
    _positive(name, m=m, n=n, k=k, batch=batch)
    eb = dtype_bytes(dtype)
    b_reads = k * n if shared_b else batch * k * n
    return Op(OpKind.MATMUL, flops=2.0 * batch * m * n * k,
              bytes_read=float(eb * (batch * m * k + b_reads)),
              bytes_written=float(eb * batch * m * n), dtype=dtype,
              shape=(batch, m, n, k), name=name, labels=labels)


def attention(batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int, head_dim: int,
              *, dtype: str = "bf16", causal: bool = True, backward: bool = False,
              name: str = "attention", **labels: object) -> Op:
    """Fused (flash) attention core: softmax(Q K^T / sqrt(d)) V, without the projections.

    FLOPs follow the full-square convention in the module docstring; memory traffic is what a
    fused kernel moves (Q, K, V in, O out; plus dO in and dQ, dK, dV out for backward), never
    the s_q x s_kv score matrix.
    """
    _positive(name, batch=batch, q_heads=q_heads, kv_heads=kv_heads, q_len=q_len,
              kv_len=kv_len, head_dim=head_dim)
    if q_heads % kv_heads:
        raise ValueError(f"{name}: q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    eb = dtype_bytes(dtype)
    flops = 4.0 * batch * q_heads * q_len * kv_len * head_dim
    q_bytes = eb * batch * q_len * q_heads * head_dim
    kv_bytes = 2 * eb * batch * kv_len * kv_heads * head_dim
    if backward:
        read, written, flops = 3 * q_bytes + kv_bytes, q_bytes + kv_bytes, 2.0 * flops
    else:
        read, written = q_bytes + kv_bytes, q_bytes
    return Op(OpKind.ATTENTION, flops=flops, bytes_read=float(read), bytes_written=float(written),
              dtype=dtype, shape=(batch, q_heads, kv_heads, q_len, kv_len, head_dim),
              causal=causal, backward=backward, name=name, labels=labels)


def elementwise(elements: int, *, inputs: int = 1, outputs: int = 1, flops_per_element: float = 1.0,
                dtype: str = "bf16", kind: OpKind = OpKind.ELEMENTWISE, name: str = "elementwise",
                **labels: object) -> Op:
    """A memory-bound op over ``elements`` values: reads ``inputs`` tensors, writes ``outputs``."""
    _positive(name, elements=elements)
    eb = dtype_bytes(dtype)
    return Op(kind, flops=float(flops_per_element * elements),
              bytes_read=float(eb * inputs * elements), bytes_written=float(eb * outputs * elements),
              dtype=dtype, shape=(elements,), name=name, labels=labels)


def memcpy(size_bytes: float, *, name: str = "memcpy", **labels: object) -> Op:
    _positive(name, size_bytes=size_bytes)
    return Op(OpKind.MEMCPY, bytes_read=float(size_bytes), bytes_written=float(size_bytes),
              dtype="int8", shape=(int(size_bytes),), name=name, labels=labels)


def communication(kind: OpKind, size_bytes: float, *, name: str, **labels: object) -> Op:
    """A collective or point-to-point transfer: timed by the fabric, not by a device."""
    if not kind.is_communication:
        raise ValueError(f"{name}: {kind} is not a communication kind")
    _positive(name, size_bytes=size_bytes)
    return Op(kind, bytes_read=float(size_bytes), bytes_written=float(size_bytes), dtype="int8",
              shape=(int(size_bytes),), name=name, labels=labels)

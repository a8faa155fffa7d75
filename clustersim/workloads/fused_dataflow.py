"""A decoder layer as one fused dataflow graph, against kernel-by-kernel execution through HBM.

After SN40L (Prabhakar et al. 2024, arXiv 2405.07518, section on operator fusion): the compiler
maps a whole decoder layer onto the chip as one graph; intermediates (normalised activations,
Q/K/V, scores, MLP hidden states) pass between units in on-chip SRAM, so HBM only sees the
layer's weights, the KV cache it reads and writes, and the layer's input and output. Executed
kernel by kernel (as on a GPU without fusion), every op reads its operands from and writes its
result to HBM, and pays its launch overhead.

Fidelity: analytical per layer, from the same ops (``transformer.layer_forward`` with the
attention core over the KV cache) on the same device model::

    kernels:  time = sum(op_time(op))                 HBM bytes = sum(op.bytes_total)
    fused:    time = launch + max(compute, bytes_fused / weights-tier bandwidth)
              compute = sum(op.flops / peak(op.dtype)) over tensor ops, divided by the
                        device's compute efficiency when it has one
              bytes_fused = matmul weights (k x n per GEMM) + the attention op's K and V
                          + the layer's input and output activations

Weights that fit in SRAM beside the intermediates (``sram_resident_bytes``: the model's whole
per-device share) stay there across tokens and drop out of ``bytes_fused``. By construction
``bytes_fused <= bytes_kernels``: every term of the fused sum is also an operand some kernel
moves (tests check it on random shapes). TP collectives are timed by the caller, the same way
for both.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from clustersim import ops
from clustersim.hardware.device import Device
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig


class LayerCost(NamedTuple):
    time_s: float
    hbm_bytes: float


def decoder_layer_ops(model: ModelConfig, *, tokens: int, context: int, tp: int,
                      dtype: str = "bf16") -> list[Op]:
    """One layer's ops on one TP rank for ``tokens`` new tokens of one sequence whose KV cache
    holds ``context`` tokens after them (decode: tokens=1), without its collectives."""
    layer = tfm.layer_forward(model, micro_batch=1, seq_len=tokens, tp=tp, dtype=dtype)
    out = []
    for op in layer:
        if op.kind.is_communication:
            continue
        if op.name == "attn_core":
            op = ops.attention(1, max(1, model.num_heads // tp), max(1, model.num_kv_heads // tp),
                               tokens, context, model.head_dim, dtype=dtype, causal=True,
                               name="attn_core")
        out.append(op)
    return out


def weight_bytes(op: Op) -> float:
    """Bytes of the weight operand of a GEMM (B, k x n), 0 for other ops."""
    if op.kind is not OpKind.MATMUL or len(op.shape) != 4:
        return 0.0
    _batch, _m, n, k = op.shape
    return float(k * n * dtype_bytes(op.dtype))


def kv_bytes(op: Op) -> float:
    """Bytes of K and V an attention op reads (its cache), 0 for other ops."""
    if op.kind is not OpKind.ATTENTION or len(op.shape) != 6:
        return 0.0
    batch, _q, kv_heads, _ql, kv_len, head_dim = op.shape
    return float(2 * batch * kv_len * kv_heads * head_dim * dtype_bytes(op.dtype))


def kernel_by_kernel(device: Device, layer: Sequence[Op]) -> LayerCost:
    return LayerCost(sum(device.op_time(op) for op in layer),
                     sum(op.bytes_total for op in layer))


def fused(device: Device, layer: Sequence[Op], *, hidden_bytes: float,
          weights_in_sram: bool = False) -> LayerCost:
    """The layer as one graph; ``hidden_bytes`` is one activation row set (tokens x hidden)."""
    weights = 0.0 if weights_in_sram else sum(weight_bytes(op) for op in layer)
    moved = weights + sum(kv_bytes(op) for op in layer) + 2 * hidden_bytes
    compute = sum(op.flops / device.peak_flops(op.dtype) for op in layer
                  if op.kind.uses_tensor_cores)
    compute /= getattr(device, "compute_efficiency", 1.0)
    tier = device.tier_for("weights")
    memory = moved / (tier.bandwidth_bytes_per_s * getattr(device, "memory_efficiency", 1.0))
    launch = getattr(device, "launch_overhead_s", 0.0) or 0.0
    return LayerCost(launch + max(compute, memory), moved)


def sram_resident(device: Device, model: ModelConfig, tp: int, dtype: str) -> bool:
    """Whether the model's per-device weights fit in the device's SRAM tier (if it has one)."""
    names = {t.name for t in device.memory_tiers}
    if "sram" not in names:
        return False
    per_device = model.params_total * dtype_bytes(dtype) / tp
    return per_device <= device.memory_tier("sram").capacity_bytes


def layer_cost(device: Device, model: ModelConfig, *, tokens: int, context: int, tp: int,
               dtype: str, execution: str) -> LayerCost:
    layer = decoder_layer_ops(model, tokens=tokens, context=context, tp=tp, dtype=dtype)
    if execution == "kernels":
        return kernel_by_kernel(device, layer)
    if execution != "fused":
        raise ValueError(f"execution must be 'fused' or 'kernels', got {execution!r}")
    hidden = tokens * model.hidden_size * dtype_bytes(dtype)
    return fused(device, layer, hidden_bytes=hidden,
                 weights_in_sram=sram_resident(device, model, tp, dtype))

"""Ops of the experts one device runs: a grouped GEMM, timed expert by expert.

Fidelity: analytical per op (the device model). Each local expert with c > 0 tokens is an MLP
on a [c x hidden] block, with exactly the ops and FLOPs of a dense MLP of c tokens
(``transformer._expert_forward`` / ``_expert_backward``): so tokens per expert vary the GEMM
shapes and the device's wave quantisation sees each one, as grouped-GEMM kernels (CUTLASS grouped
GEMM, Megablocks) tile each expert's block separately. A one-expert MoE on one device is
therefore exactly the dense MLP.
"""

from __future__ import annotations

from typing import Iterable

from clustersim import ops
from clustersim.ops import Op
from clustersim.workloads.models import ModelConfig


def expert_forward_ops(model: ModelConfig, tokens: int, *, ffn: int, dtype: str,
                       **labels: object) -> list[Op]:
    """up (or up+gate), activation, down on ``tokens`` tokens with ``ffn`` columns."""
    h = model.hidden_size
    width = 2 * ffn if model.gated_mlp else ffn
    act = "swiglu" if model.gated_mlp else "gelu"
    return [
        ops.matmul(tokens, width, h, dtype=dtype, name="up_gate" if model.gated_mlp else "up",
                   shared_b=True, **labels),
        ops.elementwise(tokens * ffn, inputs=2 if model.gated_mlp else 1, flops_per_element=8.0,
                        dtype=dtype, name=act, **labels),
        ops.matmul(tokens, h, ffn, dtype=dtype, name="down", shared_b=True, **labels),
    ]


def expert_backward_ops(model: ModelConfig, tokens: int, *, ffn: int, dtype: str,
                        dgrad: bool = True, wgrad: bool = True, **labels: object) -> list[Op]:
    """dgrad and/or wgrad of down, the activation backward, dgrad and/or wgrad of up."""
    h = model.hidden_size
    width = 2 * ffn if model.gated_mlp else ffn
    out: list[Op] = []
    if dgrad:
        out.append(ops.matmul(tokens, ffn, h, dtype=dtype, name="down.dgrad", shared_b=True,
                              **labels))
    if wgrad:
        out.append(ops.matmul(ffn, h, tokens, dtype=dtype, name="down.wgrad", **labels))
    if dgrad:
        out.append(ops.elementwise(tokens * ffn, inputs=3 if model.gated_mlp else 2,
                                   outputs=2 if model.gated_mlp else 1, flops_per_element=16.0,
                                   dtype=dtype, name="act.bwd", **labels))
        out.append(ops.matmul(tokens, h, width, dtype=dtype, name="up.dgrad", shared_b=True,
                              **labels))
    if wgrad:
        out.append(ops.matmul(h, width, tokens, dtype=dtype, name="up.wgrad", **labels))
    return out


def grouped_ops(model: ModelConfig, tokens_per_expert: Iterable[int], *, ffn: int, dtype: str,
                phase: str, dgrad: bool = True, wgrad: bool = True) -> list[Op]:
    """Ops of all local experts (those with tokens), forward or backward."""
    out: list[Op] = []
    for expert, count in tokens_per_expert:
        if count <= 0:
            continue
        if phase == "bwd":
            out += expert_backward_ops(model, int(count), ffn=ffn, dtype=dtype, dgrad=dgrad,
                                       wgrad=wgrad, expert=expert)
        else:
            out += expert_forward_ops(model, int(count), ffn=ffn, dtype=dtype, expert=expert)
    return out


def time_s(device, op_list: Iterable[Op]) -> float:
    return float(sum(device.op_time(op) for op in op_list))

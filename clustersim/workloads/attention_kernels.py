"""Attention kernels other than the modern fused one: Megatron-LM 2021's unfused core
attention, kernel by kernel (``baddbmm`` scores, the scale-mask-softmax, fused within its kernel's
constraint, else an fp32 torch fallback, dropout, the context ``bmm``, and the layout copies
around them; forward and backward), and the 2022 Triton FlashAttention that MosaicML's
llm-foundry ran as ``attn_impl: triton`` (:func:`triton_flash_attention`). Sources and byte
conventions are in ``kernels.py``'s docstring.

Fidelity: analytical (each op's FLOPs and bytes from its formula; the device times it).
"""

from __future__ import annotations

from clustersim import ops
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads.elementwise_kernels import (MASK_BYTES, dropout, dropout_backward,
                                                      memory_pass)


def fused_softmax_applies(batch_heads: int, q_len: int, kv_len: int, *, fused: bool,
                          max_kv: int) -> bool:
    """Megatron's ``FusedScaleMaskSoftmax`` custom-kernel constraint (fused_softmax.py:132)."""
    return fused and 16 < kv_len <= max_kv and q_len % 4 == 0 and batch_heads % 4 == 0


def _unmasked(batch_heads: int, q_len: int, kv_len: int, causal: bool) -> int:
    """Score elements a causal softmax kernel loads: the lower triangle with its diagonal."""
    if causal and q_len == kv_len:
        return batch_heads * q_len * (q_len + 1) // 2
    return batch_heads * q_len * kv_len


def _softmax_forward(bh: int, q_len: int, kv_len: int, dtype: str, *, fused: bool,
                     causal: bool, labels: dict) -> list[Op]:
    eb, scores = dtype_bytes(dtype), bh * q_len * kv_len
    if fused:
        loaded = _unmasked(bh, q_len, kv_len, causal)
        return [memory_pass("attn.scale_mask_softmax", scores, read_bytes=eb * loaded,
                            written_bytes=eb * scores, flops=5.0 * loaded, dtype=dtype,
                            kind=OpKind.SOFTMAX, labels=labels)]
    # torch fallback in fp32: input.float(), * scale, masked_fill_, Softmax, .half()
    kw = dict(dtype=dtype, labels=labels)
    return [memory_pass("attn.cast_fp32", scores, read_bytes=eb * scores, written_bytes=4 * scores,
                        flops=0.0, **kw),
            memory_pass("attn.scale", scores, read_bytes=4 * scores, written_bytes=4 * scores,
                        flops=float(scores), **kw),
            memory_pass("attn.mask", scores, read_bytes=(4 + MASK_BYTES) * scores,
                        written_bytes=4 * scores, flops=float(scores), **kw),
            memory_pass("attn.softmax", scores, read_bytes=4 * scores, written_bytes=4 * scores,
                        flops=4.0 * scores, kind=OpKind.SOFTMAX, **kw),
            memory_pass("attn.cast_back", scores, read_bytes=4 * scores, written_bytes=eb * scores,
                        flops=0.0, **kw)]


def _softmax_backward(bh: int, q_len: int, kv_len: int, dtype: str, *, fused: bool,
                      causal: bool, labels: dict) -> list[Op]:
    eb, scores = dtype_bytes(dtype), bh * q_len * kv_len
    kw = dict(dtype=dtype, backward=True, labels=labels)
    if fused:
        loaded = _unmasked(bh, q_len, kv_len, causal)
        return [memory_pass("attn.softmax.bwd", scores, read_bytes=2 * eb * loaded,
                            written_bytes=eb * scores, flops=4.0 * loaded, kind=OpKind.SOFTMAX, **kw)]
    return [memory_pass("attn.cast_back.bwd", scores, read_bytes=eb * scores, written_bytes=4 * scores,
                        flops=0.0, **kw),
            memory_pass("attn.softmax.bwd", scores, read_bytes=8 * scores, written_bytes=4 * scores,
                        flops=4.0 * scores, kind=OpKind.SOFTMAX, **kw),
            memory_pass("attn.mask.bwd", scores, read_bytes=(4 + MASK_BYTES) * scores,
                        written_bytes=4 * scores, flops=float(scores), **kw),
            memory_pass("attn.scale.bwd", scores, read_bytes=4 * scores, written_bytes=4 * scores,
                        flops=float(scores), **kw),
            memory_pass("attn.cast_fp32.bwd", scores, read_bytes=4 * scores, written_bytes=eb * scores,
                        flops=0.0, **kw)]


def _copy(name: str, elements: int, dtype: str, *, backward: bool, labels: dict) -> Op:
    eb = dtype_bytes(dtype)
    return memory_pass(name, elements, read_bytes=eb * elements, written_bytes=eb * elements,
                       flops=0.0, dtype=dtype, kind=OpKind.MEMCPY, backward=backward, labels=labels)


def unfused_attention_forward(batch: int, q_heads: int, q_len: int, kv_len: int, head_dim: int,
                              dtype: str, *, dropout_p: float, fused_softmax: bool,
                              causal: bool = False, fused_softmax_max_kv: int = 2048,
                              **labels) -> list[Op]:
    """Megatron-2021 core attention: baddbmm scores, (fused) scale-mask-softmax, dropout, bmm,
    and the context's permute copy (module docstring)."""
    bh = batch * q_heads
    scores = bh * q_len * kv_len
    fused = fused_softmax_applies(bh, q_len, kv_len, fused=fused_softmax,
                                  max_kv=fused_softmax_max_kv)
    out = [ops.matmul(q_len, kv_len, head_dim, batch=bh, dtype=dtype, name="attn.scores",
                      **labels)]
    out += _softmax_forward(bh, q_len, kv_len, dtype, fused=fused, causal=causal, labels=labels)
    if dropout_p > 0:
        out.append(dropout("attn.dropout", scores, dtype, **labels))
    out.append(ops.matmul(q_len, head_dim, kv_len, batch=bh, dtype=dtype, name="attn.context",
                          **labels))
    out.append(_copy("attn.context.permute", bh * q_len * head_dim, dtype, backward=False,
                     labels=labels))
    return out


def unfused_attention_backward(batch: int, q_heads: int, q_len: int, kv_len: int, head_dim: int,
                               dtype: str, *, dropout_p: float, fused_softmax: bool,
                               causal: bool = False, fused_softmax_max_kv: int = 2048,
                               **labels) -> list[Op]:
    """Gradients of :func:`unfused_attention_forward`, in autograd's order."""
    bh = batch * q_heads
    scores = bh * q_len * kv_len
    fused = fused_softmax_applies(bh, q_len, kv_len, fused=fused_softmax,
                                  max_kv=fused_softmax_max_kv)
    mm = dict(batch=bh, dtype=dtype, **labels)
    out = [_copy("attn.context.permute.bwd", bh * q_len * head_dim, dtype, backward=True,
                 labels=labels),
           ops.matmul(kv_len, head_dim, q_len, name="attn.context.dgrad_v", **mm),
           ops.matmul(q_len, kv_len, head_dim, name="attn.context.dgrad_p", **mm)]
    if dropout_p > 0:
        out.append(dropout_backward("attn.dropout.bwd", scores, dtype, **labels))
    out += _softmax_backward(bh, q_len, kv_len, dtype, fused=fused, causal=causal, labels=labels)
    out += [ops.matmul(q_len, head_dim, kv_len, name="attn.scores.dgrad_q", **mm),
            ops.matmul(kv_len, head_dim, q_len, name="attn.scores.dgrad_k", **mm),
            _copy("attn.qkv_split.bwd", bh * (q_len + 2 * kv_len) * head_dim, dtype,
                  backward=True, labels=labels)]
    return out


# The 2022 Triton FlashAttention (flash_attn_triton.py of HazyResearch/flash-attention at
# eff9fe6b, copied into llm-foundry as llmfoundry/models/layers/flash_attn_triton.py and run on
# the pre-MLIR triton 2.0.0.dev20221202) against FlashAttention-2 on an A100 80GB SXM4, measured
# kernel by kernel in Dao 2023 (FlashAttention-2, arXiv 2307.08691, section 4.1: "around
# 1.3-1.5x faster than FlashAttention in Triton in the forward pass and around 2x faster in the
# backward pass"; sequence 512-16k, head dim 64 and 128, with and without a causal mask). The
# forward factor is the middle of the quoted range. Same kernel structure as the fused op
# (one thread block per head and query tile, masked tiles skipped), so only the time changes.
TRITON_FORWARD_SLOWDOWN = 1.4
TRITON_BACKWARD_SLOWDOWN = 2.0


def triton_flash_attention(op: Op) -> list[Op]:
    """The 2022 Triton FlashAttention kernel in place of the fused (FlashAttention-2) ``op``.

    Returned as ``op`` followed by ``<name>.triton``: an ATTENTION op of the same shape, mask and
    direction whose work is (slowdown - 1) x ``op``'s, the time the older kernel loses to
    FlashAttention-2 (the device times attention in proportion to its work, so the pair takes
    ``slowdown`` x the fused kernel's compute time). It moves no bytes of its own.
    """
    if op.kind is not OpKind.ATTENTION:
        raise ValueError(f"triton_flash_attention: {op.name!r} is a {op.kind.value} op, "
                         "not attention")
    slowdown = TRITON_BACKWARD_SLOWDOWN if op.backward else TRITON_FORWARD_SLOWDOWN
    extra = Op(OpKind.ATTENTION, flops=(slowdown - 1.0) * op.flops, dtype=op.dtype,
               shape=op.shape, causal=op.causal, backward=op.backward, name=f"{op.name}.triton",
               labels=dict(op.labels))
    return [op, extra]

"""Memory-bound kernels a framework launches around a decoder layer: dropout, bias adds and
gradients, bias-dropout-add fused or not, bias-GeLU, and Megatron-LM 2021's two-kernel LayerNorm
backward. Byte conventions are in ``kernels.py``'s docstring.

Fidelity: analytical (each op's FLOPs and bytes from its formula; the device times it).
"""

from __future__ import annotations

from clustersim.ops import Op, OpKind, dtype_bytes

MASK_BYTES = 1  # bool keep mask per element (torch.native_dropout)


def memory_pass(name: str, elements: float, *, read_bytes: float, written_bytes: float,
                flops: float, dtype: str, kind: OpKind = OpKind.ELEMENTWISE,
                backward: bool = False, labels: dict | None = None) -> Op:
    """A memory-bound pass with explicit byte counts (mixed dtypes, masks, bias vectors)."""
    return Op(kind, flops=float(flops), bytes_read=float(read_bytes),
              bytes_written=float(written_bytes), dtype=dtype, shape=(int(elements),),
              backward=backward, name=name, labels=dict(labels or {}))


# --- dropout, bias, bias-dropout-add ----------------------------------------------------------

def dropout(name: str, elements: int, dtype: str, **labels) -> Op:
    """Forward dropout: read x, write y and the keep mask; ~2 FLOPs/element (RNG compare, scale)."""
    eb = dtype_bytes(dtype)
    return memory_pass(name, elements, read_bytes=eb * elements,
                       written_bytes=(eb + MASK_BYTES) * elements, flops=2.0 * elements,
                       dtype=dtype, labels=labels)


def dropout_backward(name: str, elements: int, dtype: str, **labels) -> Op:
    eb = dtype_bytes(dtype)
    return memory_pass(name, elements, read_bytes=(eb + MASK_BYTES) * elements,
                       written_bytes=eb * elements, flops=float(elements), dtype=dtype,
                       backward=True, labels=labels)


def bias_add(name: str, tokens: int, width: int, dtype: str, **labels) -> Op:
    eb, n = dtype_bytes(dtype), tokens * width
    return memory_pass(name, n, read_bytes=eb * (n + width), written_bytes=eb * n, flops=float(n),
                       dtype=dtype, labels=labels)


def bias_grad(name: str, tokens: int, width: int, dtype: str, **labels) -> Op:
    """The bias gradient: a column sum of the output gradient (read n, write the vector)."""
    eb, n = dtype_bytes(dtype), tokens * width
    return memory_pass(name, n, read_bytes=eb * n, written_bytes=eb * width, flops=float(n),
                       dtype=dtype, backward=True, labels=labels)


def bias_dropout_add(name: str, tokens: int, width: int, dtype: str, *, bias: bool,
                     dropout_p: float, fused: bool, **labels) -> list[Op]:
    """``residual + dropout(x + bias)``: one fused pass, or bias add, dropout and add."""
    eb, n = dtype_bytes(dtype), tokens * width
    has_dropout = dropout_p > 0
    if fused:
        read = eb * (2 * n + (width if bias else 0))
        written = eb * n + (MASK_BYTES * n if has_dropout else 0)
        flops = n * (1 + (1 if bias else 0) + (2 if has_dropout else 0))
        return [memory_pass(name, n, read_bytes=read, written_bytes=written, flops=flops, dtype=dtype,
                            labels=labels)]
    out = []
    if bias:
        out.append(bias_add(f"{name}.bias", tokens, width, dtype, **labels))
    if has_dropout:
        out.append(dropout(f"{name}.dropout", n, dtype, **labels))
    out.append(memory_pass(f"{name}.add", n, read_bytes=2 * eb * n, written_bytes=eb * n,
                           flops=float(n), dtype=dtype, labels=labels))
    return out


def bias_dropout_add_backward(name: str, tokens: int, width: int, dtype: str, *, bias: bool,
                              dropout_p: float, **labels) -> list[Op]:
    """The residual branch's gradient through dropout (mask) and into the bias (column sum)."""
    out = []
    if dropout_p > 0:
        out.append(dropout_backward(f"{name}.dropout", tokens * width, dtype, **labels))
    if bias:
        out.append(bias_grad(f"{name}.bias_grad", tokens, width, dtype, **labels))
    return out


def bias_gelu(name: str, tokens: int, width: int, dtype: str, *, bias: bool, fused: bool,
              **labels) -> list[Op]:
    """GeLU of the up projection with its bias: Megatron's fused ``bias_gelu`` or two kernels."""
    eb, n = dtype_bytes(dtype), tokens * width
    if not bias or fused:
        read = eb * (n + (width if bias else 0))
        return [memory_pass(name, n, read_bytes=read, written_bytes=eb * n, flops=8.0 * n,
                            dtype=dtype, labels=labels)]
    return [bias_add(f"{name}.bias", tokens, width, dtype, **labels),
            memory_pass(name, n, read_bytes=eb * n, written_bytes=eb * n, flops=8.0 * n, dtype=dtype,
                        labels=labels)]


def norm_backward_two_kernels(op: Op) -> list[Op]:
    """Megatron-LM 2021's mixed-precision LayerNorm backward (de7dc40f88
    ``megatron/fused_kernels/layer_norm_cuda_kernel.cu``): ``cuComputePartGradGammaBeta``
    (line 415) reads dy and x for the gamma/beta partial sums, then ``cuComputeGradInput``
    (line 534) reads dy and x again and writes dx; ``op`` (read x, dy; write dx) is the second
    kernel, the first is added before it."""
    elements = op.shape[0] if op.shape else 0
    partials = memory_pass(f"{op.name}.gamma_beta", elements, read_bytes=op.bytes_read,
                           written_bytes=0.0, flops=2.0 * elements, dtype=op.dtype, kind=OpKind.NORM,
                           backward=True, labels=dict(op.labels))
    return [partials, op]

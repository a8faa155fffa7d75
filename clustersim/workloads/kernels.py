"""The kernels a framework actually launches around a decoder layer, chosen per run.

Fidelity: analytical (each op's FLOPs and bytes from its formula; the device times it).

``transformer.py`` emits the layer in its modern, fully fused form (flash attention, residual
adds, no dropout). Frameworks of other eras ran different kernels, and the difference is most of
the step time of small models: Megatron-LM 2021 (Narayanan et al. 2021) wrote the full
``s x s`` score matrix with ``baddbmm``, ran a fused scale-mask-softmax and attention dropout over
it, and added biases and dropout with JIT-fused bias-dropout-add kernels. :class:`KernelChoices`
says which kernels a run assumes; :func:`expand_layer_ops` rewrites a layer's op list
accordingly; the builders below are usable on their own.

Byte conventions (``eb`` = bytes per element of the activation dtype, ``n`` elements):

* dropout reads ``eb n``, writes ``eb n`` plus a 1-byte keep mask (PyTorch's ``native_dropout``
  returns a bool mask); its backward reads the gradient and the mask and writes the gradient;
* a bias add reads the ``n`` activations and the bias vector once, writes ``n``;
* fused bias-dropout-add (Megatron ``bias_dropout_add_fused_train``) is one pass: reads the
  input, bias and residual, writes the output and the mask; unfused it is three kernels;
* unfused attention (per (batch, head), ``bmm`` batch ``b a``): ``S = Q K^T`` (``2 s_q s_kv d``
  FLOPs, writes ``S``), softmax over ``S`` (fused scale-mask-softmax: one read, one write;
  unfused: scale, mask fill and softmax, three read-write passes), dropout over the
  probabilities, ``O = P V``. No masked tile is skipped: the full square is computed. The four
  backward GEMMs (``dV = P^T dO``, ``dP = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q``) cost twice
  the forward, matching the FLOP convention of ``clustersim.ops``;
* cross-entropy unfused is Megatron 2021's ``vocab_parallel_cross_entropy`` on fp32 logits
  (cast, max, subtract, exp, sum, divide; backward: one update of the saved softmax and a cast
  back), fused is two passes over the logits in their dtype;
* Adam (Kingma & Ba 2015, decoupled weight decay) on fp32 master weights: fused (apex
  ``FusedAdam``, Megatron's default) reads grad, master, m, v and writes master, m, v and the
  ``eb`` working weight, 30 bytes/parameter with fp32 gradients; unfused
  (``torch.optim.AdamW(foreach=False)``) runs 8 kernels, 86 bytes/parameter (see
  :func:`adam_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from clustersim import ops
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads.tp_overlap import TPOverlap, TPOverlapSpec

ATTENTION_KINDS = ("flash", "unfused")
MASK_BYTES = 1  # bool keep mask per element (torch.native_dropout)


@dataclass(frozen=True)
class KernelChoices:
    """Which kernels a training run assumes. Defaults: a modern stack (flash attention, fused
    elementwise kernels, no dropout), the form ``transformer.py`` emits."""

    attention: Literal["flash", "unfused"] = "flash"
    attention_dropout: float = 0.0          # probability on the attention probabilities
    hidden_dropout: float = 0.0             # after the attention and MLP blocks
    fused_softmax: bool = True              # Megatron's scale-mask-softmax kernel
    fused_bias_dropout_add: bool = True
    fused_bias_gelu: bool = True
    fused_cross_entropy: bool = True
    fused_optimizer: bool = True
    # "fp8": linear-layer GEMMs in FP8 with per-tensor current scaling (Transformer Engine
    # FP8-CS): operands quantized from bf16 by a cast kernel, output in bf16; attention, norms
    # and elementwise ops stay in bf16. None: every op in the run's dtype.
    gemm_dtype: str | None = None
    # Megatron-Core --tp-comm-overlap (tp_overlap.py); None: TP collectives block the GEMMs
    tp_overlap: TPOverlap | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def flash(self) -> bool:
        return self.attention == "flash"

    @property
    def dropout(self) -> bool:
        return self.attention_dropout > 0 or self.hidden_dropout > 0


def _pass(name: str, elements: float, *, read_bytes: float, written_bytes: float, flops: float,
          dtype: str, kind: OpKind = OpKind.ELEMENTWISE, backward: bool = False,
          labels: dict | None = None) -> Op:
    """A memory-bound pass with explicit byte counts (mixed dtypes, masks, bias vectors)."""
    return Op(kind, flops=float(flops), bytes_read=float(read_bytes),
              bytes_written=float(written_bytes), dtype=dtype, shape=(int(elements),),
              backward=backward, name=name, labels=dict(labels or {}))


# --- dropout, bias, bias-dropout-add ----------------------------------------------------------

def dropout(name: str, elements: int, dtype: str, **labels) -> Op:
    """Forward dropout: read x, write y and the keep mask; ~2 FLOPs/element (RNG compare, scale)."""
    eb = dtype_bytes(dtype)
    return _pass(name, elements, read_bytes=eb * elements,
                 written_bytes=(eb + MASK_BYTES) * elements, flops=2.0 * elements, dtype=dtype,
                 labels=labels)


def dropout_backward(name: str, elements: int, dtype: str, **labels) -> Op:
    eb = dtype_bytes(dtype)
    return _pass(name, elements, read_bytes=(eb + MASK_BYTES) * elements,
                 written_bytes=eb * elements, flops=float(elements), dtype=dtype, backward=True,
                 labels=labels)


def bias_add(name: str, tokens: int, width: int, dtype: str, **labels) -> Op:
    eb, n = dtype_bytes(dtype), tokens * width
    return _pass(name, n, read_bytes=eb * (n + width), written_bytes=eb * n, flops=float(n),
                 dtype=dtype, labels=labels)


def bias_grad(name: str, tokens: int, width: int, dtype: str, **labels) -> Op:
    """The bias gradient: a column sum of the output gradient (read n, write the vector)."""
    eb, n = dtype_bytes(dtype), tokens * width
    return _pass(name, n, read_bytes=eb * n, written_bytes=eb * width, flops=float(n),
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
        return [_pass(name, n, read_bytes=read, written_bytes=written, flops=flops, dtype=dtype,
                      labels=labels)]
    out = []
    if bias:
        out.append(bias_add(f"{name}.bias", tokens, width, dtype, **labels))
    if has_dropout:
        out.append(dropout(f"{name}.dropout", n, dtype, **labels))
    out.append(_pass(f"{name}.add", n, read_bytes=2 * eb * n, written_bytes=eb * n,
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
        return [_pass(name, n, read_bytes=read, written_bytes=eb * n, flops=8.0 * n,
                      dtype=dtype, labels=labels)]
    return [bias_add(f"{name}.bias", tokens, width, dtype, **labels),
            _pass(name, n, read_bytes=eb * n, written_bytes=eb * n, flops=8.0 * n, dtype=dtype,
                  labels=labels)]


# --- attention ----------------------------------------------------------------------------------

def unfused_attention_forward(batch: int, q_heads: int, q_len: int, kv_len: int, head_dim: int,
                              dtype: str, *, dropout_p: float, fused_softmax: bool,
                              **labels) -> list[Op]:
    """Megatron-2021 core attention: baddbmm scores, (fused) scale-mask-softmax, dropout, bmm."""
    bh, eb = batch * q_heads, dtype_bytes(dtype)
    scores = bh * q_len * kv_len
    out = [ops.matmul(q_len, kv_len, head_dim, batch=bh, dtype=dtype, name="attn.scores",
                      **labels)]
    if fused_softmax:
        out.append(_pass("attn.scale_mask_softmax", scores, read_bytes=eb * scores,
                         written_bytes=eb * scores, flops=5.0 * scores, dtype=dtype,
                         kind=OpKind.SOFTMAX, labels=labels))
    else:
        out.append(_pass("attn.scale", scores, read_bytes=eb * scores, written_bytes=eb * scores,
                         flops=float(scores), dtype=dtype, labels=labels))
        out.append(_pass("attn.mask", scores, read_bytes=(eb + MASK_BYTES) * scores,
                         written_bytes=eb * scores, flops=float(scores), dtype=dtype,
                         labels=labels))
        out.append(_pass("attn.softmax", scores, read_bytes=eb * scores,
                         written_bytes=eb * scores, flops=4.0 * scores, dtype=dtype,
                         kind=OpKind.SOFTMAX, labels=labels))
    if dropout_p > 0:
        out.append(dropout("attn.dropout", scores, dtype, **labels))
    out.append(ops.matmul(q_len, head_dim, kv_len, batch=bh, dtype=dtype, name="attn.context",
                          **labels))
    return out


def unfused_attention_backward(batch: int, q_heads: int, q_len: int, kv_len: int, head_dim: int,
                               dtype: str, *, dropout_p: float, fused_softmax: bool,
                               **labels) -> list[Op]:
    """Gradients of :func:`unfused_attention_forward`, in autograd's order."""
    bh, eb = batch * q_heads, dtype_bytes(dtype)
    scores = bh * q_len * kv_len
    mm = dict(batch=bh, dtype=dtype, **labels)
    out = [ops.matmul(kv_len, head_dim, q_len, name="attn.context.dgrad_v", **mm),
           ops.matmul(q_len, kv_len, head_dim, name="attn.context.dgrad_p", **mm)]
    if dropout_p > 0:
        out.append(dropout_backward("attn.dropout.bwd", scores, dtype, **labels))
    softmax_bwd = _pass("attn.softmax.bwd", scores, read_bytes=2 * eb * scores,
                        written_bytes=eb * scores, flops=4.0 * scores, dtype=dtype,
                        kind=OpKind.SOFTMAX, backward=True, labels=labels)
    out.append(softmax_bwd)
    if not fused_softmax:
        for step in ("mask", "scale"):
            out.append(_pass(f"attn.{step}.bwd", scores, read_bytes=eb * scores,
                             written_bytes=eb * scores, flops=float(scores), dtype=dtype,
                             backward=True, labels=labels))
    out += [ops.matmul(q_len, head_dim, kv_len, name="attn.scores.dgrad_q", **mm),
            ops.matmul(kv_len, head_dim, q_len, name="attn.scores.dgrad_k", **mm)]
    return out


# --- cross-entropy and optimizer ----------------------------------------------------------------

def cross_entropy_forward(tokens: int, vocab_rows: int, dtype: str, *, fused: bool,
                          **labels) -> list[Op]:
    """Loss over a [tokens x vocab_rows] logit shard. Unfused: fp32 upcast and five passes."""
    eb, n = dtype_bytes(dtype), tokens * vocab_rows
    kw = dict(dtype=dtype, kind=OpKind.SOFTMAX, labels=labels)
    if fused:
        return [_pass("cross_entropy.max", n, read_bytes=eb * n, written_bytes=4 * tokens,
                      flops=float(n), **kw),
                _pass("cross_entropy.exp_sum", n, read_bytes=eb * n, written_bytes=4 * tokens,
                      flops=3.0 * n, **kw)]
    return [_pass("cross_entropy.cast_fp32", n, read_bytes=eb * n, written_bytes=4 * n,
                  flops=0.0, **kw),
            _pass("cross_entropy.max", n, read_bytes=4 * n, written_bytes=4 * tokens,
                  flops=float(n), **kw),
            _pass("cross_entropy.subtract", n, read_bytes=4 * n, written_bytes=4 * n,
                  flops=float(n), **kw),
            _pass("cross_entropy.exp", n, read_bytes=4 * n, written_bytes=4 * n,
                  flops=2.0 * n, **kw),
            _pass("cross_entropy.sum", n, read_bytes=4 * n, written_bytes=4 * tokens,
                  flops=float(n), **kw),
            _pass("cross_entropy.divide", n, read_bytes=4 * n, written_bytes=4 * n,
                  flops=float(n), **kw)]


def cross_entropy_backward(tokens: int, vocab_rows: int, dtype: str, *, fused: bool,
                           **labels) -> list[Op]:
    eb, n = dtype_bytes(dtype), tokens * vocab_rows
    kw = dict(dtype=dtype, kind=OpKind.SOFTMAX, backward=True, labels=labels)
    if fused:
        return [_pass("cross_entropy.bwd", n, read_bytes=eb * n, written_bytes=eb * n,
                      flops=3.0 * n, **kw)]
    return [_pass("cross_entropy.bwd", n, read_bytes=4 * n, written_bytes=4 * n,
                  flops=2.0 * n, **kw),
            _pass("cross_entropy.cast_back", n, read_bytes=4 * n, written_bytes=eb * n,
                  flops=0.0, **kw)]


# Unfused AdamW, per parameter (fp32 bytes read, written) of each kernel torch launches:
# decay p (4, 4); m.lerp_(g) (8, 4); v.mul_ (4, 4); v.addcmul_(g, g) (8, 4); sqrt(v) (4, 4);
# / bias correction (4, 4); + eps (4, 4); p.addcdiv_(m, denom) (12, 4); and the copy of the master
# weight into the working weight (4, eb).
_UNFUSED_ADAM_PASSES = ((4, 4), (8, 4), (4, 4), (8, 4), (4, 4), (4, 4), (4, 4), (12, 4))


def adam_ops(params: float, *, weight_dtype: str = "bf16", grad_dtype: str = "fp32",
             fused: bool = True, **labels) -> list[Op]:
    """AdamW on ``params`` parameters with fp32 master weights and states."""
    n, wb, gb = max(int(params), 1), dtype_bytes(weight_dtype), dtype_bytes(grad_dtype)
    kw = dict(dtype="fp32", kind=OpKind.OPTIMIZER, labels=labels)
    if fused:
        return [_pass("adam", n, read_bytes=(gb + 12) * n, written_bytes=(12 + wb) * n,
                      flops=10.0 * n, **kw)]
    out = [_pass(f"adam.pass{i}", n, read_bytes=r * n, written_bytes=w * n, flops=float(n), **kw)
           for i, (r, w) in enumerate(_UNFUSED_ADAM_PASSES)]
    # the passes that touch the gradient read it in its own dtype
    out[1] = _pass("adam.pass1", n, read_bytes=(4 + gb) * n, written_bytes=4 * n, flops=float(n), **kw)
    out[3] = _pass("adam.pass3", n, read_bytes=(4 + gb) * n, written_bytes=4 * n, flops=float(n), **kw)
    out.append(_pass("adam.copy_weights", n, read_bytes=4 * n, written_bytes=wb * n, flops=0.0, **kw))
    return out


# --- rewriting a layer's ops ----------------------------------------------------------------------

def expand_layer_ops(layer_ops: Sequence[Op], choices: KernelChoices, *, bias: bool,
                     hidden_size: int, tokens: int) -> list[Op]:
    """Rewrite the ops ``transformer.py`` emits for one layer (or the LM head) into ``choices``.

    ``tokens`` is micro-batch x sequence on this rank (before sequence-parallel splitting);
    widths of residual-path ops come from their element counts, so SP sharding carries over.
    """
    out: list[Op] = []
    for op in layer_ops:
        out += _expand(op, choices, bias, hidden_size, tokens)
    return out


def fp8_gemm(op: Op) -> list[Op]:
    """A bf16 linear-layer GEMM run as Transformer Engine's FP8-CS does: a cast kernel quantizes
    the activation-side operand A (read bf16, write fp8, plus its amax), the GEMM reads fp8 A and
    the fp8 weight (cast once per step, outside the layer) and writes bf16 C."""
    batch, m, n, k = op.shape
    labels = dict(op.labels)
    a = batch * m * k
    b_elems = (op.bytes_read / dtype_bytes(op.dtype)) - a      # shared or per-batch B
    cast = _pass(f"{op.name}.fp8_cast", a, read_bytes=2 * a, written_bytes=a, flops=2.0 * a,
                 dtype="bf16", labels=labels)
    gemm = Op(OpKind.MATMUL, flops=op.flops, bytes_read=float(a + b_elems),
              bytes_written=float(2 * batch * m * n), dtype="fp8", shape=op.shape,
              backward=op.backward, name=op.name, labels=labels)
    return [cast, gemm]


def _expand(op: Op, c: KernelChoices, bias: bool, hidden: int, tokens: int) -> list[Op]:
    out = _expand_one(op, c, bias, hidden, tokens)
    if c.gemm_dtype == "fp8":
        out = [x for o in out for x in (fp8_gemm(o) if _is_linear(o) else [o])]
    return out


def _is_linear(op: Op) -> bool:
    """A transformer linear layer (not attention's bmm, not the LM head, kept in bf16 by
    Megatron-Core's FP8 recipes)."""
    return (op.kind is OpKind.MATMUL and op.dtype != "fp8" and not op.name.startswith("attn.")
            and not op.name.startswith("lm_head") and not op.name.startswith("output_shard"))


def _expand_one(op: Op, c: KernelChoices, bias: bool, hidden: int, tokens: int) -> list[Op]:
    name, labels = op.name, dict(op.labels)
    if op.kind is OpKind.ATTENTION and not c.flash:
        b, heads, _kv, q_len, kv_len, d = op.shape
        build = unfused_attention_backward if op.backward else unfused_attention_forward
        return build(b, heads, q_len, kv_len, d, op.dtype, dropout_p=c.attention_dropout,
                     fused_softmax=c.fused_softmax, **labels)
    if op.kind is OpKind.ATTENTION and c.attention_dropout > 0:
        return [op]  # flash applies dropout inside the kernel (FlashAttention-2 dropout_p)
    elements = op.shape[0] if op.shape else 0
    if name in ("attn_residual", "mlp_residual"):
        rows = elements // hidden
        return bias_dropout_add(name, rows, hidden, op.dtype, bias=bias, dropout_p=c.hidden_dropout,
                                fused=c.fused_bias_dropout_add, **labels)
    if name in ("attn_residual.bwd", "mlp_residual.bwd"):
        rows = elements // hidden
        return [op] + bias_dropout_add_backward(name, rows, hidden, op.dtype, bias=bias,
                                                dropout_p=c.hidden_dropout, **labels)
    if name == "mlp_gelu":
        return bias_gelu(name, tokens, elements // tokens, op.dtype, bias=bias,
                         fused=c.fused_bias_gelu, **labels)
    if name == "mlp_gelu.bwd" and bias:
        return [op, bias_grad("mlp_up.bias_grad", tokens, elements // tokens, op.dtype, **labels)]
    if name == "qkv_proj" and bias:
        # F.linear on a 3-D input runs matmul then a separate bias add (Megatron 2021)
        return [op, bias_add("qkv_proj.bias", tokens, op.shape[2], op.dtype, **labels)]
    if name == "qkv_proj.wgrad" and bias:
        return [op, bias_grad("qkv_proj.bias_grad", tokens, op.shape[2], op.dtype, **labels)]
    if not c.fused_cross_entropy and name.startswith("cross_entropy."):
        return _unfused_cross_entropy(op, tokens)
    return [op]


def _unfused_cross_entropy(op: Op, tokens: int) -> list[Op]:
    """Replace the fused cross-entropy passes ``transformer.lm_head_*`` emits, keeping its
    collectives where they are: max -> cast + max; exp_sum -> subtract, exp,
    sum, divide; the per-token loss stays."""
    labels, rows = dict(op.labels), (op.shape[0] // tokens if op.shape else 0)
    if op.kind.is_communication or not rows:
        return [op]
    if op.backward or op.name == "cross_entropy.bwd":
        return cross_entropy_backward(tokens, rows, op.dtype, fused=False, **labels)
    passes = {p.name: p for p in cross_entropy_forward(tokens, rows, op.dtype, fused=False, **labels)}
    groups = {"cross_entropy.max": ("cross_entropy.cast_fp32", "cross_entropy.max"),
              "cross_entropy.exp_sum": ("cross_entropy.subtract", "cross_entropy.exp",
                                        "cross_entropy.sum", "cross_entropy.divide")}
    if op.name not in groups:
        return [op]
    return [passes[n] for n in groups[op.name]]


# --- the YAML face: ``workload.kernels`` of a training run ----------------------------------------

class KernelsSpec(BaseModel):
    """``kernels:`` of a training workload, e.g. Megatron-LM 2021:
    ``{attention: unfused, attention_dropout: 0.1, hidden_dropout: 0.1}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attention: Literal["flash", "unfused"] = Field(
        "flash", description="flash: one fused kernel (FlashAttention-2 on Ampere, -3 on Hopper); "
                             "unfused: scores written and read, softmax and dropout as kernels")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention probabilities")
    hidden_dropout: float = Field(0.0, ge=0, lt=1, description="dropout after attention and MLP")
    fused_softmax: bool = Field(True, description="Megatron's fused scale-mask-softmax kernel")
    fused_bias_dropout_add: bool = Field(True, description="one kernel for bias + dropout + residual")
    fused_bias_gelu: bool = Field(True, description="one kernel for the MLP bias and GeLU")
    fused_cross_entropy: bool = Field(True, description="two passes over the logits in their dtype "
                                      "(false: Megatron 2021's fp32 vocab-parallel cross-entropy)")
    fused_optimizer: bool = Field(True, description="fused AdamW (apex/multi-tensor) or per-op torch")
    tp_comm_overlap: TPOverlapSpec | None = Field(
        None, description="Megatron-Core TP communication overlap ({} for Megatron-Bridge's H100 "
                          "defaults); needs sequence_parallel and granularity: layer")

    def choices(self) -> KernelChoices:
        fields = self.model_dump(exclude={"tp_comm_overlap"})
        overlap = self.tp_comm_overlap.choice() if self.tp_comm_overlap is not None else None
        return KernelChoices(**fields, tp_overlap=overlap)

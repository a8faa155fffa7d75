"""The kernels a framework actually launches around a decoder layer, chosen per run.

Fidelity: analytical (each op's FLOPs and bytes from its formula; the device times it).

``transformer.py`` emits the layer in its modern, fully fused form (flash attention, residual
adds, no dropout). Frameworks of other eras ran different kernels, and the difference is most of
the step time of small models: Megatron-LM 2021 (Narayanan et al. 2021) wrote the full
``s x s`` score matrix with ``baddbmm``, ran a fused scale-mask-softmax and attention dropout over
it, and added biases and dropout with JIT-fused bias-dropout-add kernels. :class:`KernelChoices`
says which kernels a run assumes; :func:`expand_layer_ops` rewrites a layer's op list
accordingly. The builders are usable on their own: elementwise ones in ``elementwise_kernels.py``,
unfused attention in ``attention_kernels.py``, the optimizer step in ``optimizer_kernels.py``,
cross-entropy and FP8 casts here (all re-exported from this module).

Byte conventions (``eb`` = bytes per element of the activation dtype, ``n`` elements):

* dropout reads ``eb n``, writes ``eb n`` plus a 1-byte keep mask (PyTorch's ``native_dropout``
  returns a bool mask); its backward reads the gradient and the mask and writes the gradient;
* a bias add reads the ``n`` activations and the bias vector once, writes ``n``;
* fused bias-dropout-add (Megatron ``bias_dropout_add_fused_train``) is one pass: reads the
  input, bias and residual, writes the output and the mask; unfused it is three kernels;
* unfused attention (per (batch, head), ``bmm`` batch ``b a``): ``S = Q K^T`` (``2 s_q s_kv d``
  FLOPs, writes ``S``), softmax over ``S``, dropout over the probabilities, ``O = P V``, and the
  copy that makes the context ``[s, b, h]`` again (``permute(2, 0, 1, 3).contiguous()``,
  Megatron-LM de7dc40f88 ``megatron/model/transformer.py:338``). No masked tile is skipped by
  the GEMMs: the full square is computed. The four backward GEMMs (``dV = P^T dO``,
  ``dP = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q``) cost twice the forward, matching the FLOP
  convention of ``clustersim.ops``; the backward also copies the context gradient back and
  concatenates dQ, dK, dV into the QKV projection's gradient (autograd of
  ``split_tensor_along_last_dim``, transformer.py:209, is a ``cat``);
* the softmax: Megatron's fused scale-mask-softmax runs only where its kernel's constraint
  holds (``megatron/model/fused_softmax.py:132``: ``16 < s_kv <= 2048``, ``s_q % 4 == 0``,
  ``b a % 4 == 0``; later releases raised the 2048 limit, ``KernelChoices.fused_softmax_max_kv``).
  Its causal (upper-triangular) kernel reads only the unmasked lower triangle and writes the
  full row (zeros above the diagonal), in forward and backward
  (``megatron/fused_kernels/scaled_upper_triang_masked_softmax.h``: ``local_seq = blockIdx.x + 1``
  elements loaded per row, lines 131-151 and 251-275; ``copy_zero_vector`` / full-row store,
  lines 223-224 and 319). Otherwise (or with ``fused_softmax: false``) ``FusedScaleMaskSoftmax``
  falls back to torch ops in fp32 (fused_softmax.py:151-165; fp32 because query-key layer
  scaling, on by default, forces ``softmax_in_fp32``): cast up, scale, mask fill, softmax, cast
  down, each a pass over the scores;
* cross-entropy unfused is Megatron 2021's ``vocab_parallel_cross_entropy`` on fp32 logits
  (cast, max, subtract, exp, sum, divide; backward: one update of the saved softmax and a cast
  back), fused is two passes over the logits in their dtype;
* the optimizer step's passes are in ``optimizer_kernels.py`` (``adam_ops`` re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clustersim import ops
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads.attention_kernels import (  # noqa: F401  (re-exported)
    fused_softmax_applies, triton_flash_attention, unfused_attention_backward,
    unfused_attention_forward)
from clustersim.workloads.elementwise_kernels import (  # noqa: F401  (re-exported)
    MASK_BYTES, bias_add, bias_dropout_add, bias_dropout_add_backward, bias_gelu, bias_grad,
    dropout, dropout_backward, memory_pass as _pass, norm_backward_two_kernels)
from clustersim.workloads.optimizer_kernels import adam_ops  # noqa: F401  (re-exported)
from clustersim.workloads.tp_overlap import AsyncBackwardOverlap, TPOverlap, TPOverlapSpec

ATTENTION_KINDS = ("flash", "unfused", "flash_triton")


@dataclass(frozen=True)
class KernelChoices:
    """Which kernels a training run assumes. Defaults: a modern stack (flash attention, fused
    elementwise kernels, no dropout), the form ``transformer.py`` emits."""

    attention: Literal["flash", "unfused", "flash_triton"] = "flash"
    attention_dropout: float = 0.0          # probability on the attention probabilities
    hidden_dropout: float = 0.0             # after the attention and MLP blocks
    fused_softmax: bool = True              # Megatron's scale-mask-softmax kernel
    fused_bias_dropout_add: bool = True
    fused_bias_gelu: bool = True
    fused_cross_entropy: bool = True
    fused_optimizer: bool = True
    # the fused softmax kernel's largest key length (Megatron-LM 2021: 2048, fused_softmax.py:132)
    fused_softmax_max_kv: int = 2048
    # Megatron-LM 2021's fp16 optimizer passes around apex FusedAdam (optimizer_kernels.py)
    fp16_optimizer_passes: bool = False
    # False: Megatron-LM 2021's LayerNorm backward, two kernels each reading x and dy
    fused_norm_backward: bool = True
    # torch DDP before gradient_as_bucket_view: gradients copied into buckets and back
    ddp_bucket_copies: bool = False
    # "fp8": linear-layer GEMMs in FP8 with per-tensor current scaling (Transformer Engine
    # FP8-CS): operands quantized from bf16 by a cast kernel, output in bf16; attention, norms
    # and elementwise ops stay in bf16. None: every op in the run's dtype.
    gemm_dtype: str | None = None
    # fp8 casts also write a transposed copy for the wgrad GEMM (Hopper; ``fp8_gemm``). Set by
    # the training step from the GPU's architecture, not from YAML.
    fp8_transposed_copies: bool = True
    # Megatron-Core --tp-comm-overlap, or Megatron-LM 2022's async backward TP communication
    # (tp_overlap.py); None: TP collectives block the GEMMs
    tp_overlap: TPOverlap | AsyncBackwardOverlap | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def flash(self) -> bool:
        """A fused attention kernel (no score matrix in memory): flash or flash_triton."""
        return self.attention in ("flash", "flash_triton")

    @property
    def dropout(self) -> bool:
        return self.attention_dropout > 0 or self.hidden_dropout > 0


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


def fp8_gemm(op: Op, *, amax_pass: bool = False, transposed_copy: bool = False) -> list[Op]:
    """A bf16 linear-layer GEMM run as Transformer Engine's FP8-CS does: a cast kernel quantizes
    the activation-side operand A (read bf16, write fp8), the GEMM reads fp8 A and the fp8
    weight (cast once per step, outside the layer) and writes bf16 C.

    Current scaling needs A's amax before the cast. A norm or activation kernel that produced A
    computes it on the way (TransformerEngine d0067d0da ``pytorch/csrc/extensions/
    normalization.cpp:114-118`` and ``activation.cpp:40-41``, FUSED_*_AMAX_FP8, then
    ``quantize_with_amax``); any other input, e.g. the attention output or a gradient, goes
    through ``Float8CurrentScalingQuantizer::quantize`` (``quantizer.cpp:1008-1026``): an amax
    kernel reads A once more before the cast (``amax_pass``; counted in the cast op's bytes).

    A weight-gradient GEMM casts nothing: its operands are the layer input and the output
    gradient, quantized once, in the forward and dgrad casts. On Hopper, whose fp8 tensor cores
    take only K-major operands, those casts also write a transposed fp8 copy for the wgrad GEMM
    (``transposed_copy``: TE's cast-transpose); Blackwell reads the one copy in either layout."""
    batch, m, n, k = op.shape
    labels = dict(op.labels)
    a = batch * m * k
    b_elems = (op.bytes_read / dtype_bytes(op.dtype)) - a      # shared or per-batch B
    gemm = Op(OpKind.MATMUL, flops=op.flops, bytes_read=float(a + b_elems),
              bytes_written=float(2 * batch * m * n), dtype="fp8", shape=op.shape,
              backward=op.backward, name=op.name, labels=labels)
    if op.name.endswith(".wgrad"):
        return [gemm]
    reads, writes = (2 if amax_pass else 1), (2 if transposed_copy else 1)
    cast = _pass(f"{op.name}.fp8_cast", a, read_bytes=2 * a * reads, written_bytes=a * writes,
                 flops=2.0 * a * reads, dtype="bf16", labels=labels)
    return [cast, gemm]


def _needs_amax_pass(op: Op) -> bool:
    """Operand A not produced by a norm or activation kernel (``fp8_gemm``): the attention
    output projection's input and every gradient (the dgrad GEMMs' A). The wgrad GEMMs' A is
    the layer input, quantized in the forward pass."""
    return op.name == "attn_out_proj" or op.name.endswith(".dgrad")


def _expand(op: Op, c: KernelChoices, bias: bool, hidden: int, tokens: int) -> list[Op]:
    out = _expand_one(op, c, bias, hidden, tokens)
    if c.gemm_dtype == "fp8":
        out = [x for o in out
               for x in (fp8_gemm(o, amax_pass=_needs_amax_pass(o),
                                  transposed_copy=c.fp8_transposed_copies)
                         if _is_linear(o) else [o])]
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
                     fused_softmax=c.fused_softmax, causal=op.causal,
                     fused_softmax_max_kv=c.fused_softmax_max_kv, **labels)
    if op.kind is OpKind.ATTENTION and c.attention == "flash_triton":
        return triton_flash_attention(op)
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
    if op.kind is OpKind.NORM and name.endswith(".bwd") and not c.fused_norm_backward:
        return norm_backward_two_kernels(op)
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

    attention: Literal["flash", "unfused", "flash_triton"] = Field(
        "flash", description="flash: one fused kernel (FlashAttention-2 on Ampere, -3 on Hopper); "
                             "unfused: scores written and read, softmax and dropout as kernels; "
                             "flash_triton: the 2022 Triton FlashAttention (llm-foundry "
                             "attn_impl: triton), slower than FlashAttention-2 "
                             "(attention_kernels.py)")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention probabilities")
    hidden_dropout: float = Field(0.0, ge=0, lt=1, description="dropout after attention and MLP")
    fused_softmax: bool = Field(True, description="Megatron's fused scale-mask-softmax kernel")
    fused_bias_dropout_add: bool = Field(True, description="one kernel for bias + dropout + residual")
    fused_bias_gelu: bool = Field(True, description="one kernel for the MLP bias and GeLU")
    fused_cross_entropy: bool = Field(True, description="two passes over the logits in their dtype "
                                      "(false: Megatron 2021's fp32 vocab-parallel cross-entropy)")
    fused_optimizer: bool = Field(True, description="fused AdamW (apex/multi-tensor) or per-op torch")
    fused_softmax_max_kv: int = Field(
        2048, gt=16, description="longest key length the fused softmax kernel takes (Megatron-LM "
                                 "2021: 2048); longer runs the fp32 torch fallback")
    fp16_optimizer_passes: bool = Field(
        False, description="Megatron-LM 2021's fp16 optimizer: fp16 grads cast to fp32, unscaled "
                           "and normed, fp32 weights copied back, as passes around FusedAdam")
    fused_norm_backward: bool = Field(
        True, description="one LayerNorm backward kernel; false: Megatron-LM 2021's two kernels "
                          "(gamma/beta partials, then the input gradient), each reading x and dy")
    ddp_bucket_copies: bool = Field(
        False, description="torch DistributedDataParallel before gradient_as_bucket_view (PyTorch "
                           "<= 1.8 default): each gradient copied into its bucket and back")
    tp_comm_overlap: TPOverlapSpec | None = Field(
        None, description="Megatron-Core TP communication overlap ({} for Megatron-Bridge's H100 "
                          "defaults); needs sequence_parallel and granularity: layer")
    tp_async_backward: bool = Field(
        False, description="Megatron-LM 2022 (from 2022-03): the backward of column-parallel "
                           "layers overlaps its TP all-reduce / reduce-scatter with the weight-"
                           "gradient GEMM and (SP) its input all-gather with the data-gradient "
                           "GEMM (tp_overlap.AsyncBackwardOverlap); needs granularity: layer")

    @model_validator(mode="after")
    def _triton_has_no_dropout(self) -> "KernelsSpec":
        if self.attention == "flash_triton" and self.attention_dropout > 0:
            raise ValueError("attention: flash_triton (the 2022 Triton FlashAttention) has no "
                             "dropout (flash_attn_triton.py); set attention_dropout: 0, or pick "
                             "attention: flash or unfused")
        return self

    @model_validator(mode="after")
    def _one_tp_overlap(self) -> "KernelsSpec":
        if self.tp_async_backward and self.tp_comm_overlap is not None:
            raise ValueError("tp_async_backward (Megatron-LM 2022) and tp_comm_overlap "
                             "(Megatron-Core userbuffers) are two frameworks' overlaps; set one")
        return self

    def choices(self) -> KernelChoices:
        fields = self.model_dump(exclude={"tp_comm_overlap", "tp_async_backward"})
        overlap = self.tp_comm_overlap.choice() if self.tp_comm_overlap is not None else None
        if self.tp_async_backward:
            overlap = AsyncBackwardOverlap()
        return KernelChoices(**fields, tp_overlap=overlap)

"""A decoder layer as ops on one tensor-parallel rank, and what a layer keeps in memory.

Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019): Q/K/V and the MLP's first matrix
are column parallel (heads and ffn split over ``tp`` ranks), the attention output projection and
the MLP's second matrix row parallel, with one all-reduce after each block in the forward pass
and one (of the input gradient of each column-parallel matmul) in the backward pass. Sequence
parallelism (Korthikanti et al. 2022) splits norms, residuals and dropout over the sequence and
turns each all-reduce into a reduce-scatter plus an all-gather; as in Megatron, the backward pass
all-gathers the sequence-sharded input of each column-parallel matmul once more for its wgrad.

Every function returns ops in execution order on ONE rank. Communication ops carry
``collective=`` and ``group="tp"`` labels; their ``size_bytes`` is the FULL (unsharded) tensor on
one rank: the all-reduce input, the reduce-scatter input, the all-gather output. The fabric turns
that into algorithm traffic. Every op carries ``layer=`` (an int, or "embedding" / "lm_head")
and ``phase=`` ("fwd", "bwd" or "recompute") labels, and ``block=`` ("attention", "mlp", ...).

FLOPs follow ``clustersim.ops``: summed over the ranks, the matmul and attention ops of all layers
(forward and backward) and of the LM head give exactly :func:`model_flops_per_token` per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from clustersim import ops
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads.models import ModelConfig

RECOMPUTE = ("none", "selective", "full")
# Nominal FLOPs per element of the memory-bound ops (they are timed by their bytes anyway).
_NORM_FLOPS = {"layernorm": 8.0, "rmsnorm": 5.0}


def model_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L s (heads x head_dim)``, N = ``params_matmul``.

    Forward plus backward (2x forward); attention counted over the full square
    (Narayanan et al. 2021, eq. 3), as in ``clustersim.ops``.
    """
    return 6.0 * model.params_matmul + 12.0 * model.num_layers * seq_len * model.q_dim


# --- layout and validation --------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Per-rank sizes of one micro-batch of one layer."""

    model: ModelConfig
    micro_batch: int
    seq_len: int
    tp: int
    sp: bool
    dtype: str

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def local_tokens(self) -> int:
        """Tokens each rank holds outside the tensor-parallel regions (split by SP)."""
        return self.tokens // self.tp if self.sp else self.tokens

    @property
    def hidden_bytes(self) -> float:
        """Bytes of the full [tokens x hidden] activation: the size of every TP collective."""
        return float(self.tokens * self.model.hidden_size * dtype_bytes(self.dtype))


def _layout(model: ModelConfig, micro_batch: int, seq_len: int, tp: int,
            sequence_parallel: bool, dtype: str) -> _Layout:
    dtype_bytes(dtype)
    for key, value in (("micro_batch", micro_batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{model.name}: {key} must be a positive integer, got {value!r}")
    _check_tp(model, tp)
    if sequence_parallel and seq_len % tp:
        raise ValueError(f"{model.name}: sequence parallelism needs seq_len divisible by tp={tp}, "
                         f"got seq_len={seq_len}")
    return _Layout(model, micro_batch, seq_len, tp, bool(sequence_parallel and tp > 1), dtype)


def _check_tp(model: ModelConfig, tp: int) -> None:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp <= 0:
        raise ValueError(f"{model.name}: tp must be a positive integer, got {tp!r}")
    for key, size in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads),
                      ("ffn_hidden_size", model.ffn_hidden_size)):
        if size % tp:
            extra = (" (each rank must hold whole key/value heads; replicating kv heads when "
                     "tp > num_kv_heads is not modelled)" if key == "num_kv_heads" else "")
            valid = [d for d in range(1, model.num_kv_heads + 1)
                     if not (model.num_heads % d or model.num_kv_heads % d
                             or model.ffn_hidden_size % d)]
            raise ValueError(f"{model.name}: tensor parallel size tp={tp} must divide {key}="
                             f"{size}{extra}; valid tp values are {valid}")


def _check_recompute(recompute: str) -> None:
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")


class _Emitter:
    """Appends ops with the shared labels of one (layer, phase)."""

    def __init__(self, lay: _Layout, layer: object, phase: str):
        self.lay, self.ops = lay, []
        self.labels = {"layer": layer, "phase": phase}

    def matmul(self, name: str, m: int, n: int, k: int, block: str, **extra: object) -> None:
        self.ops.append(ops.matmul(m, n, k, dtype=self.lay.dtype, name=name, shared_b=True,
                                   block=block, **self.labels, **extra))

    def linear_backward(self, name: str, m: int, n: int, k: int, block: str, **extra: object) -> None:
        """dgrad then wgrad of the forward matmul [m x k] @ [k x n]."""
        self.matmul(f"{name}.dgrad", m, k, n, block, **extra)
        self.ops.append(ops.matmul(k, n, m, dtype=self.lay.dtype, name=f"{name}.wgrad",
                                   block=block, **self.labels, **extra))

    def elementwise(self, name: str, elements: int, block: str, *, inputs: int = 1, outputs: int = 1,
                    flops_per_element: float = 1.0, kind: OpKind = OpKind.ELEMENTWISE,
                    **extra: object) -> None:
        self.ops.append(ops.elementwise(elements, inputs=inputs, outputs=outputs,
                                        flops_per_element=flops_per_element, dtype=self.lay.dtype,
                                        kind=kind, name=name, block=block, **self.labels, **extra))

    def norm(self, name: str, block: str, backward: bool = False) -> None:
        lay = self.lay
        flops = _NORM_FLOPS[lay.model.norm] * (2 if backward else 1)
        self.elementwise(name, lay.local_tokens * lay.model.hidden_size, block, kind=OpKind.NORM,
                         inputs=2 if backward else 1, flops_per_element=flops)

    def collective(self, collective: str, name: str, size_bytes: float, block: str) -> None:
        self.ops.append(ops.communication(OpKind.COLLECTIVE, size_bytes, name=name,
                                          collective=collective, group="tp", block=block,
                                          **self.labels))

    def tp_after_row_parallel(self, name: str, block: str) -> None:
        """Forward g (Megatron): all-reduce, or reduce-scatter with sequence parallelism."""
        if self.lay.tp > 1:
            kind = "reduce_scatter" if self.lay.sp else "all_reduce"
            self.collective(kind, f"{name}.{kind}", self.lay.hidden_bytes, block)

    def tp_before_column_parallel(self, name: str, block: str) -> None:
        """Forward f: nothing, or all-gather of the sequence-sharded input with SP."""
        if self.lay.sp:
            self.collective("all_gather", f"{name}.all_gather", self.lay.hidden_bytes, block)


# --- one decoder layer: forward ------------------------------------------------------------------

def layer_forward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                  sequence_parallel: bool = False, dtype: str = "bf16", layer: int = 0,
                  expert_token_counts: Sequence[int] | None = None) -> list[Op]:
    """Forward ops of one decoder layer on one tensor-parallel rank, in execution order.

    ``expert_token_counts`` (MoE only): tokens each expert receives in this micro-batch, summing
    to ``tokens x experts_per_token``; default balanced routing. It is the hook for routing models.
    """
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    em = _Emitter(lay, layer, "fwd")
    _attention_forward(em)
    if model.is_moe:
        _moe_forward(em, _expert_counts(lay, expert_token_counts))
    else:
        _mlp_forward(em)
    return em.ops


def _qkv_width(lay: _Layout) -> int:
    m = lay.model
    return (m.num_heads + 2 * m.num_kv_heads) * m.head_dim // lay.tp


def _attention_forward(em: _Emitter) -> None:
    lay, m, b = em.lay, em.lay.model, "attention"
    h, t = m.hidden_size, lay.tokens
    em.norm("attn_norm", b)
    em.tp_before_column_parallel("attn_input", b)
    em.matmul("qkv_proj", t, _qkv_width(lay), h, b)
    if m.position_embedding == "rope":
        rope_width = (m.num_heads + m.num_kv_heads) * m.head_dim // lay.tp
        em.elementwise("rope", t * rope_width, b, flops_per_element=3.0)
    em.ops.append(_attention_core(lay, em.labels))
    em.matmul("attn_out_proj", t, h, m.q_dim // lay.tp, b)
    em.tp_after_row_parallel("attn_output", b)
    em.elementwise("attn_residual", lay.local_tokens * h, b, inputs=2)


def _attention_core(lay: _Layout, labels: dict, backward: bool = False) -> Op:
    m = lay.model
    return ops.attention(lay.micro_batch, m.num_heads // lay.tp, m.num_kv_heads // lay.tp,
                         lay.seq_len, lay.seq_len, m.head_dim, dtype=lay.dtype, causal=True,
                         backward=backward, name="attn_core.bwd" if backward else "attn_core",
                         block="attention", **labels)


def _mlp_forward(em: _Emitter) -> None:
    lay, m, b = em.lay, em.lay.model, "mlp"
    h, t, f = m.hidden_size, lay.tokens, m.ffn_hidden_size // lay.tp
    em.norm("mlp_norm", b)
    em.tp_before_column_parallel("mlp_input", b)
    _expert_forward(em, t, f)
    em.tp_after_row_parallel("mlp_output", b)
    em.elementwise("mlp_residual", lay.local_tokens * h, b, inputs=2)


def _expert_forward(em: _Emitter, tokens: int, f: int, **extra: object) -> None:
    m, h = em.lay.model, em.lay.model.hidden_size
    prefix = f"expert{extra['expert']}." if extra else "mlp_"
    width = 2 * f if m.gated_mlp else f
    em.matmul(f"{prefix}up_gate" if m.gated_mlp else f"{prefix}up", tokens, width, h, "mlp", **extra)
    act = "swiglu" if m.gated_mlp else "gelu"
    em.elementwise(f"{prefix}{act}", tokens * f, "mlp", inputs=2 if m.gated_mlp else 1,
                   flops_per_element=8.0, **extra)
    em.matmul(f"{prefix}down", tokens, h, f, "mlp", **extra)


# MoE hook: router + experts with given (default balanced) token counts; no expert parallelism,
# so every tensor-parallel rank runs every expert with ffn/tp columns and no all-to-all is needed.

def _expert_counts(lay: _Layout, counts: Sequence[int] | None) -> list[int]:
    m = lay.model
    routed = lay.tokens * m.experts_per_token
    if counts is None:
        base, extra = divmod(routed, m.num_experts)
        return [base + (1 if e < extra else 0) for e in range(m.num_experts)]
    counts = list(counts)
    if len(counts) != m.num_experts or any(c < 0 for c in counts) or sum(counts) != routed:
        raise ValueError(f"{m.name}: expert_token_counts must be {m.num_experts} non-negative "
                         f"counts summing to tokens x experts_per_token = {routed}, got {counts}")
    return counts


def _moe_forward(em: _Emitter, counts: list[int]) -> None:
    lay, m, b = em.lay, em.lay.model, "mlp"
    h, f, routed = m.hidden_size, m.ffn_hidden_size // lay.tp, lay.tokens * m.experts_per_token
    em.norm("mlp_norm", b)
    em.matmul("router", lay.local_tokens, m.num_experts, h, b)
    em.elementwise("router_topk", lay.local_tokens * m.num_experts, b, kind=OpKind.SOFTMAX,
                   flops_per_element=5.0)
    em.tp_before_column_parallel("mlp_input", b)
    em.elementwise("moe_permute", routed * h, b, flops_per_element=0.0)
    for expert, count in enumerate(counts):
        if count:
            _expert_forward(em, count, f, expert=expert)
    if m.num_shared_experts:  # DeepSeekMoE shared experts: every token, fused into one MLP
        _expert_forward(em, lay.tokens, f * m.num_shared_experts, expert="shared")
    em.elementwise("moe_unpermute", routed * h, b, flops_per_element=1.0)
    em.tp_after_row_parallel("mlp_output", b)
    em.elementwise("mlp_residual", lay.local_tokens * h, b, inputs=2)


# --- one decoder layer: backward -----------------------------------------------------------------

def layer_backward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                   sequence_parallel: bool = False, dtype: str = "bf16", layer: int = 0,
                   recompute: str = "none",
                   expert_token_counts: Sequence[int] | None = None) -> list[Op]:
    """Backward ops of one decoder layer on one rank, in execution order.

    Every forward matmul gets a dgrad and a wgrad matmul (together 2x its FLOPs), attention a
    fused backward. ``recompute="full"`` first replays the whole forward (phase "recompute");
    ``"selective"`` replays only the attention core, just before its backward (Korthikanti et al.
    2022, section 5).
    """
    _check_recompute(recompute)
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    counts = _expert_counts(lay, expert_token_counts) if model.is_moe else []
    replay: list[Op] = []  # full recompute replays the layer's forward before its backward
    if recompute == "full":
        replay = [op.with_labels(phase="recompute")
                  for op in layer_forward(model, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                                          sequence_parallel=sequence_parallel, dtype=dtype,
                                          layer=layer, expert_token_counts=expert_token_counts)]
    em = _Emitter(lay, layer, "bwd")
    if model.is_moe:
        _moe_backward(em, counts)
    else:
        _mlp_backward(em)
    _attention_backward(em, replay_core=recompute == "selective")
    return replay + em.ops


def _column_parallel_backward(em: _Emitter, name: str, m: int, n: int, k: int, block: str,
                              **extra: object) -> None:
    """Backward of a column-parallel matmul whose input is the (gathered) block input.

    Megatron: with SP, all-gather the saved sharded input (for the wgrad), dgrad, reduce-scatter
    the input gradient, wgrad; without SP, dgrad, all-reduce of the input gradient, wgrad.
    """
    lay = em.lay
    if lay.sp:
        em.collective("all_gather", f"{name}.input.all_gather", lay.hidden_bytes, block)
    em.matmul(f"{name}.dgrad", m, k, n, block, **extra)
    if lay.tp > 1:
        kind = "reduce_scatter" if lay.sp else "all_reduce"
        em.collective(kind, f"{name}.dgrad.{kind}", lay.hidden_bytes, block)
    em.ops.append(ops.matmul(k, n, m, dtype=lay.dtype, name=f"{name}.wgrad", block=block,
                             **em.labels, **extra))


def _grad_into_row_parallel(em: _Emitter, name: str, block: str) -> None:
    """Backward of forward g: nothing (all-reduce), or all-gather of the gradient (SP)."""
    if em.lay.sp:
        em.collective("all_gather", f"{name}.grad.all_gather", em.lay.hidden_bytes, block)


def _expert_backward(em: _Emitter, tokens: int, f: int, **extra: object) -> None:
    m, h = em.lay.model, em.lay.model.hidden_size
    prefix = f"expert{extra['expert']}." if extra else "mlp_"
    em.linear_backward(f"{prefix}down", tokens, h, f, "mlp", **extra)
    act = "swiglu" if m.gated_mlp else "gelu"
    em.elementwise(f"{prefix}{act}.bwd", tokens * f, "mlp", inputs=3 if m.gated_mlp else 2,
                   outputs=2 if m.gated_mlp else 1, flops_per_element=16.0, **extra)


def _mlp_backward(em: _Emitter) -> None:
    lay, m, b = em.lay, em.lay.model, "mlp"
    h, t, f = m.hidden_size, lay.tokens, m.ffn_hidden_size // lay.tp
    _grad_into_row_parallel(em, "mlp_output", b)
    _expert_backward(em, t, f)
    up = "mlp_up_gate" if m.gated_mlp else "mlp_up"
    _column_parallel_backward(em, up, t, 2 * f if m.gated_mlp else f, h, b)
    em.norm("mlp_norm.bwd", b, backward=True)
    em.elementwise("mlp_residual.bwd", lay.local_tokens * h, b, inputs=2)


def _moe_backward(em: _Emitter, counts: list[int]) -> None:
    lay, m, b = em.lay, em.lay.model, "mlp"
    h, f, routed = m.hidden_size, m.ffn_hidden_size // lay.tp, lay.tokens * m.experts_per_token
    width = 2 * f if m.gated_mlp else f
    up = "up_gate" if m.gated_mlp else "up"
    _grad_into_row_parallel(em, "mlp_output", b)
    em.elementwise("moe_unpermute.bwd", routed * h, b, inputs=2)
    if m.num_shared_experts:
        fs = f * m.num_shared_experts
        _expert_backward(em, lay.tokens, fs, expert="shared")
        em.linear_backward(f"expertshared.{up}", lay.tokens, 2 * fs if m.gated_mlp else fs, h, b,
                           expert="shared")
    for expert in reversed(range(m.num_experts)):
        if counts[expert]:
            _expert_backward(em, counts[expert], f, expert=expert)
            em.linear_backward(f"expert{expert}.{up}", counts[expert], width, h, b, expert=expert)
    em.elementwise("moe_permute.bwd", routed * h, b, flops_per_element=1.0)
    # The experts' input gradient leaves the tensor-parallel region like a column-parallel one;
    # the permuted (gathered) tokens were kept whole, so no re-gather for the wgrad.
    if lay.tp > 1:
        kind = "reduce_scatter" if lay.sp else "all_reduce"
        em.collective(kind, f"mlp_input.grad.{kind}", lay.hidden_bytes, b)
    em.elementwise("router_topk.bwd", lay.local_tokens * m.num_experts, b, kind=OpKind.SOFTMAX,
                   inputs=2, flops_per_element=5.0)
    em.linear_backward("router", lay.local_tokens, m.num_experts, h, b)
    em.norm("mlp_norm.bwd", b, backward=True)
    em.elementwise("mlp_residual.bwd", lay.local_tokens * h, b, inputs=2)


def _attention_backward(em: _Emitter, replay_core: bool) -> None:
    lay, m, b = em.lay, em.lay.model, "attention"
    h, t = m.hidden_size, lay.tokens
    _grad_into_row_parallel(em, "attn_output", b)
    em.linear_backward("attn_out_proj", t, h, m.q_dim // lay.tp, b)
    if replay_core:
        em.ops.append(_attention_core(lay, {**em.labels, "phase": "recompute"}))
    em.ops.append(_attention_core(lay, em.labels, backward=True))
    if m.position_embedding == "rope":
        rope_width = (m.num_heads + m.num_kv_heads) * m.head_dim // lay.tp
        em.elementwise("rope.bwd", t * rope_width, b, flops_per_element=3.0)
    _column_parallel_backward(em, "qkv_proj", t, _qkv_width(lay), h, b)
    em.norm("attn_norm.bwd", b, backward=True)
    em.elementwise("attn_residual.bwd", lay.local_tokens * h, b, inputs=2)


# --- embedding and LM head (vocabulary parallel) ---------------------------------------------------

def megatron_padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of ``divisible_by x tp`` (50257 -> 51200 at tp=8)."""
    multiple = divisible_by * tp
    return math.ceil(vocab_size / multiple) * multiple


def vocab_shard(model: ModelConfig, *, tp: int = 1, tp_rank: int = 0,
                padded_vocab_size: int | None = None) -> int:
    """Vocabulary rows on rank ``tp_rank``.

    With a ``padded_vocab_size`` (divisible by tp) every rank holds ``padded / tp`` rows. Without
    one, the real vocabulary is split as evenly as it goes: the first ``vocab % tp`` ranks hold
    one row more, so the shards sum to exactly ``vocab_size`` and rank 0 is the slowest.
    """
    if not 0 <= tp_rank < tp:
        raise ValueError(f"tp_rank must be in [0, {tp}), got {tp_rank}")
    if padded_vocab_size is not None:
        if padded_vocab_size < model.vocab_size or padded_vocab_size % tp:
            raise ValueError(f"{model.name}: padded_vocab_size must be >= vocab_size "
                             f"({model.vocab_size}) and divisible by tp={tp}, got {padded_vocab_size}")
        return padded_vocab_size // tp
    base, extra = divmod(model.vocab_size, tp)
    return base + (1 if tp_rank < extra else 0)


def embedding_forward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                      sequence_parallel: bool = False, dtype: str = "bf16", tp_rank: int = 0,
                      padded_vocab_size: int | None = None) -> list[Op]:
    """Vocab-parallel token embedding lookup, its TP reduction, and learned positions if any."""
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    rows = vocab_shard(model, tp=tp, tp_rank=tp_rank, padded_vocab_size=padded_vocab_size)
    em = _Emitter(lay, "embedding", "fwd")
    h, eb, t = model.hidden_size, dtype_bytes(dtype), lay.tokens
    # Each rank reads the rows in its shard (tokens x rows / vocab on average) and writes a full
    # [tokens x hidden] partial result, zero for tokens outside its shard.
    em.ops.append(Op(OpKind.EMBEDDING, bytes_read=float(8 * t + eb * t * h * rows / model.vocab_size),
                     bytes_written=float(eb * t * h), dtype=dtype, shape=(t * h,),
                     name="embedding_lookup", labels={"block": "embedding", **em.labels}))
    em.tp_after_row_parallel("embedding", "embedding")
    if model.position_embedding == "learned":
        em.elementwise("position_embedding", lay.local_tokens * h, "embedding", inputs=2)
    return em.ops


def embedding_backward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                       sequence_parallel: bool = False, dtype: str = "bf16", tp_rank: int = 0,
                       padded_vocab_size: int | None = None) -> list[Op]:
    """Embedding weight gradient: a scatter-add of the output gradient into the vocab shard."""
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    rows = vocab_shard(model, tp=tp, tp_rank=tp_rank, padded_vocab_size=padded_vocab_size)
    em = _Emitter(lay, "embedding", "bwd")
    h, eb, t = model.hidden_size, dtype_bytes(dtype), lay.tokens
    if model.position_embedding == "learned":
        em.elementwise("position_embedding.bwd", lay.local_tokens * h, "embedding")
    _grad_into_row_parallel(em, "embedding", "embedding")
    em.ops.append(Op(OpKind.EMBEDDING, flops=float(t * h * rows / model.vocab_size),
                     bytes_read=float(8 * t + eb * t * h),
                     bytes_written=float(eb * t * h * rows / model.vocab_size), dtype=dtype,
                     shape=(t * h,), backward=True, name="embedding_lookup.bwd",
                     labels={"block": "embedding", **em.labels}))
    return em.ops


def lm_head_forward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                    sequence_parallel: bool = False, dtype: str = "bf16", tp_rank: int = 0,
                    padded_vocab_size: int | None = None) -> list[Op]:
    """Final norm, LM head [tokens x hidden] @ [hidden x vocab/tp], vocab-parallel cross-entropy.

    The cross-entropy all-reduces (max, target logit, sum of exponentials) are fp32 per token,
    as in Megatron's ``vocab_parallel_cross_entropy``.
    """
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    rows = vocab_shard(model, tp=tp, tp_rank=tp_rank, padded_vocab_size=padded_vocab_size)
    em = _Emitter(lay, "lm_head", "fwd")
    b, t = "lm_head", lay.tokens
    em.norm("final_norm", b)
    em.tp_before_column_parallel("lm_head_input", b)
    em.matmul("lm_head", t, rows, model.hidden_size, b)
    em.elementwise("cross_entropy.max", t * rows, b, kind=OpKind.SOFTMAX, outputs=0)
    if tp > 1:
        em.collective("all_reduce", "cross_entropy.max.all_reduce", 4.0 * t, b)
    em.elementwise("cross_entropy.exp_sum", t * rows, b, kind=OpKind.SOFTMAX, flops_per_element=3.0)
    if tp > 1:
        em.collective("all_reduce", "cross_entropy.target_logit.all_reduce", 4.0 * t, b)
        em.collective("all_reduce", "cross_entropy.sum_exp.all_reduce", 4.0 * t, b)
    em.elementwise("cross_entropy.loss", t, b, kind=OpKind.SOFTMAX, flops_per_element=3.0)
    return em.ops


def lm_head_backward(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                     sequence_parallel: bool = False, dtype: str = "bf16", tp_rank: int = 0,
                     padded_vocab_size: int | None = None) -> list[Op]:
    """Cross-entropy gradient (softmax - one-hot), LM head dgrad and wgrad, final norm backward."""
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    rows = vocab_shard(model, tp=tp, tp_rank=tp_rank, padded_vocab_size=padded_vocab_size)
    em = _Emitter(lay, "lm_head", "bwd")
    b, t = "lm_head", lay.tokens
    em.elementwise("cross_entropy.bwd", t * rows, b, kind=OpKind.SOFTMAX, flops_per_element=2.0)
    _column_parallel_backward(em, "lm_head", t, rows, model.hidden_size, b)
    em.norm("final_norm.bwd", b, backward=True)
    return em.ops


# --- memory: activations kept for the backward pass ------------------------------------------------

def activation_bytes_breakdown(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                               sequence_parallel: bool = False, recompute: str = "none",
                               dtype: str = "bf16", flash_attention: bool = True,
                               dropout: bool = False) -> dict[str, float]:
    """Bytes of each tensor one layer keeps on one rank for its backward pass.

    Derived tensor by tensor as in Korthikanti et al. 2022, section 4 (s = seq_len,
    b = micro_batch, h = hidden, a = heads, t = tp; activations in ``dtype``, masks 1 byte):

    * attention block: norm input and QKV input (h each), Q and K (q_dim + kv_dim; their "4sbh"),
      V (kv_dim), the output projection's input (q_dim); without flash attention the softmax
      output (a s per token) and, with dropout, its mask and output; with flash attention only
      the fp32 log-sum-exp per (token, head) (the output O is the out-projection input already
      counted, and the s x s scores are recomputed); with dropout, the block's dropout mask (h);
    * MLP block: norm input and MLP input (h each), the up projection's output (f, or 2f for the
      gate and up halves of a SwiGLU), the down projection's input (f); with dropout, its mask.
      MoE (hook, balanced routing): the up/down terms times top-k, plus the permuted tokens
      (k h, all-gathered, so not split) and fp32 router probabilities (E per token).

    Terms inside the tensor-parallel regions are divided by t; the others (norms, residual path,
    dropout masks) only with sequence parallelism. ``recompute="selective"`` drops the attention
    core's terms (the s x s tensors, or flash's statistics); ``"full"`` keeps only the layer input
    (h, divided by t with sequence parallelism, as Megatron stores the sharded input). Per-token
    norm statistics (a few bytes per token) are left out, as in the paper.

    With ``flash_attention=False, dropout=True``, 2-byte activations, an MHA LayerNorm model with
    a 4h GeLU MLP, this is the paper's sbh(34 + 5as/h), sbh(10 + 24/t + 5as/(ht)) with TP,
    sbh/t (34 + 5as/h) with TP and SP, and 2sbh with full recompute.
    """
    _check_recompute(recompute)
    lay = _layout(model, micro_batch, seq_len, tp, sequence_parallel, dtype)
    eb, sb, h = dtype_bytes(dtype), micro_batch * seq_len, model.hidden_size
    outside = 1.0 / tp if lay.sp else 1.0  # norms, residuals, dropout: split only by SP
    inside = 1.0 / tp                       # tensor-parallel regions
    if recompute == "full":
        return {"layer_input": sb * h * eb * outside}
    terms = {
        "attn_norm_input": sb * h * eb * outside,
        "qkv_input": sb * h * eb * outside,
        "query": sb * model.q_dim * eb * inside,
        "key": sb * model.kv_dim * eb * inside,
        "value": sb * model.kv_dim * eb * inside,
    }
    if recompute == "none":
        scores = model.num_heads * seq_len * sb * inside  # a s^2 b / t elements
        if flash_attention:
            terms["softmax_stats"] = 4.0 * model.num_heads * sb * inside
        else:
            terms["softmax_output"] = scores * eb
            if dropout:
                terms["softmax_dropout_mask"] = scores
                terms["softmax_dropout_output"] = scores * eb
    terms["out_proj_input"] = sb * model.q_dim * eb * inside
    if dropout:
        terms["attn_dropout_mask"] = sb * h * outside
    terms["mlp_norm_input"] = sb * h * eb * outside
    terms["mlp_input"] = sb * h * eb * outside
    k, f = model.experts_per_token, model.ffn_hidden_size
    if model.is_moe:
        terms["router_probs"] = 4.0 * sb * model.num_experts * outside
        terms["moe_permuted_input"] = k * sb * h * eb
    terms["mlp_up_output"] = k * sb * (2 if model.gated_mlp else 1) * f * eb * inside
    terms["mlp_down_input"] = k * sb * f * eb * inside
    if dropout:
        terms["mlp_dropout_mask"] = sb * h * outside
    return terms


def activation_bytes_per_layer(model: ModelConfig, *, micro_batch: int, seq_len: int, tp: int = 1,
                               sequence_parallel: bool = False, recompute: str = "none",
                               dtype: str = "bf16", flash_attention: bool = True,
                               dropout: bool = False) -> float:
    """Bytes one layer keeps for its backward on one rank: the sum of
    :func:`activation_bytes_breakdown` (see there for the derivation)."""
    return float(sum(activation_bytes_breakdown(
        model, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
        sequence_parallel=sequence_parallel, recompute=recompute, dtype=dtype,
        flash_attention=flash_attention, dropout=dropout).values()))


# --- memory: weights, gradients, optimizer states --------------------------------------------------
#
# Mixed-precision Adam (Rajbhandari et al. 2020, ZeRO, section 3.1): 2 bytes of bf16/fp16
# weights, 2 bytes of gradients and 12 bytes of fp32 optimizer states (master weights,
# momentum, variance) = 16 bytes per parameter. Megatron accumulates bf16 gradients in fp32
# (4 bytes), hence gradient_bytes' default dtype "fp32" (18 bytes per parameter); pass
# dtype="bf16" for the paper's 16. ZeRO stage 1 divides optimizer states by dp, stage 2 also
# gradients, stage 3 also weights.

PARTS = ("layer", "embedding", "lm_head")


def params_per_rank(model: ModelConfig, *, part: str = "layer", tp: int = 1, tp_rank: int = 0,
                    padded_vocab_size: int | None = None) -> int:
    """Parameters one tensor-parallel rank holds for one layer, the embedding or the LM head.

    Column- and row-parallel weights and the column-parallel biases are split over tp; norms,
    row-parallel biases and the MoE router are replicated. "embedding" is the vocab shard plus
    learned positions (replicated); "lm_head" is the final norm plus the head's vocab shard
    (none when tied: the embedding holds it).
    """
    _check_tp(model, tp)
    h, q, kv, f, experts = (model.hidden_size, model.q_dim, model.kv_dim, model.ffn_hidden_size,
                            model.num_experts + model.num_shared_experts)
    if part == "layer":
        weights = (h * (q + 2 * kv) + q * h + experts * model.mlp_matrices * h * f) // tp
        biases = 0
        if model.bias:
            biases = (q + 2 * kv) // tp + h + experts * ((model.mlp_matrices - 1) * f // tp + h)
        return weights + biases + model.params_router_per_layer + model.params_norms_per_layer
    rows = vocab_shard(model, tp=tp, tp_rank=tp_rank, padded_vocab_size=padded_vocab_size)
    if part == "embedding":
        return rows * h + model.params_embedding - model.vocab_size * h
    if part == "lm_head":
        return model.params_norm + (0 if model.tied_embeddings else rows * h)
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def _zero_divisor(dp: int, zero_stage: int, from_stage: int) -> int:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if isinstance(dp, bool) or not isinstance(dp, int) or dp <= 0:
        raise ValueError(f"dp must be a positive integer, got {dp!r}")
    return dp if zero_stage >= from_stage else 1


def weight_bytes(model: ModelConfig, *, part: str = "layer", tp: int = 1, dtype: str = "bf16",
                 dp: int = 1, zero_stage: int = 0) -> float:
    """Bytes of the working weights on one rank (sharded over dp by ZeRO-3)."""
    return params_per_rank(model, part=part, tp=tp) * dtype_bytes(dtype) / _zero_divisor(dp, zero_stage, 3)


def gradient_bytes(model: ModelConfig, *, part: str = "layer", tp: int = 1, dtype: str = "fp32",
                   dp: int = 1, zero_stage: int = 0) -> float:
    """Bytes of the gradients on one rank (fp32 accumulation by default; sharded by ZeRO-2)."""
    return params_per_rank(model, part=part, tp=tp) * dtype_bytes(dtype) / _zero_divisor(dp, zero_stage, 2)


def optimizer_bytes(model: ModelConfig, *, part: str = "layer", tp: int = 1, dp: int = 1,
                    zero_stage: int = 0, master_weights: bool = True) -> float:
    """Bytes of Adam's fp32 states on one rank: master weights (if any), momentum, variance
    (12 or 8 bytes per parameter; sharded over dp from ZeRO-1)."""
    per_param = 12 if master_weights else 8
    return params_per_rank(model, part=part, tp=tp) * per_param / _zero_divisor(dp, zero_stage, 1)

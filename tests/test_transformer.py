"""A decoder layer as ops on one tensor-parallel rank, checked against the closed forms.

The FLOP identity, the TP/SP collective pattern (Shoeybi et al. 2019; Korthikanti et al. 2022)
and Korthikanti's activation formulas would each catch a wrong layer expansion.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest

from clustersim.ops import OpKind
from clustersim.workloads import transformer as tf
from clustersim.workloads.models import get_model

COMPUTE = (OpKind.MATMUL, OpKind.ATTENTION)


def flops(ops, kinds=COMPUTE, phase=None):
    return sum(op.flops for op in ops if op.kind in kinds and phase in (None, op.labels["phase"]))


def collectives(ops, phase=None):
    return [op for op in ops if op.kind is OpKind.COLLECTIVE
            and phase in (None, op.labels["phase"])]


def training_flops_all_ranks(model, *, micro_batch, seq_len, tp, sequence_parallel=False):
    """Matmul + attention FLOPs of a whole training step of one micro-batch, over the TP group."""
    shape = dict(micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                 sequence_parallel=sequence_parallel)
    per_rank = 0.0
    for layer in range(model.num_layers):
        per_rank += flops(tf.layer_forward(model, layer=layer, **shape))
        per_rank += flops(tf.layer_backward(model, layer=layer, **shape))
    # Every rank holds the same layer shard; the vocabulary may split unevenly (50257 over 8).
    lm_head = sum(flops(tf.lm_head_forward(model, tp_rank=r, **shape))
                  + flops(tf.lm_head_backward(model, tp_rank=r, **shape)) for r in range(tp))
    return per_rank * tp + lm_head


@pytest.mark.parametrize("name, micro_batch, seq_len, tp, sp", [
    ("llama2-7b", 1, 4096, 1, False),
    ("llama2-7b", 2, 4096, 8, False),
    ("gpt3-175b", 1, 2048, 8, True),
    ("llama2-70b", 1, 4096, 8, True),
    ("tiny-moe", 2, 64, 2, True),
])
def test_ops_add_up_to_model_flops_exactly(name, micro_batch, seq_len, tp, sp):
    model = get_model(name)
    total = training_flops_all_ranks(model, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                                     sequence_parallel=sp)
    expected = tf.model_flops_per_token(model, seq_len) * micro_batch * seq_len
    assert total == pytest.approx(expected, rel=1e-12)


def test_model_flops_per_token_is_narayanan_equation_3():
    gpt3 = get_model("gpt3-175b")
    h, layers, vocab, s = 12288, 96, 50257, 2048
    per_token = 72 * layers * h * h * (1 + s / (6 * h) + vocab / (12 * layers * h))
    assert tf.model_flops_per_token(gpt3, s) == pytest.approx(per_token, rel=1e-12)


@pytest.mark.parametrize("name, tp, sp", [("llama2-7b", 1, False), ("llama2-70b", 8, True),
                                          ("gpt3-175b", 4, False), ("tiny-moe", 2, False)])
def test_backward_costs_twice_the_forward(name, tp, sp):
    model = get_model(name)
    shape = dict(micro_batch=2, seq_len=256, tp=tp, sequence_parallel=sp)
    fwd, bwd = tf.layer_forward(model, **shape), tf.layer_backward(model, **shape)
    assert flops(bwd, (OpKind.MATMUL,)) == pytest.approx(2 * flops(fwd, (OpKind.MATMUL,)), rel=1e-12)
    assert flops(bwd, (OpKind.ATTENTION,)) == pytest.approx(2 * flops(fwd, (OpKind.ATTENTION,)),
                                                            rel=1e-12)
    head_f, head_b = tf.lm_head_forward(model, **shape), tf.lm_head_backward(model, **shape)
    assert flops(head_b) == pytest.approx(2 * flops(head_f), rel=1e-12)
    assert sum(op.name.endswith(".dgrad") for op in bwd) == sum(
        op.kind is OpKind.MATMUL for op in fwd)


@pytest.mark.parametrize("sp", [False, True])
def test_full_recompute_replays_exactly_one_forward_first(sp):
    model = get_model("llama2-13b")
    shape = dict(micro_batch=1, seq_len=1024, tp=4, sequence_parallel=sp, layer=3)
    fwd = tf.layer_forward(model, **shape)
    plain = tf.layer_backward(model, **shape)
    full = tf.layer_backward(model, recompute="full", **shape)
    all_kinds = tuple(OpKind)
    assert flops(full, all_kinds) == pytest.approx(flops(plain, all_kinds) + flops(fwd, all_kinds),
                                                   rel=1e-12)
    replay = full[:len(fwd)]
    assert [op.name for op in replay] == [op.name for op in fwd]
    assert all(op.labels["phase"] == "recompute" for op in replay)
    assert all(op.labels["phase"] == "bwd" for op in full[len(fwd):])
    # The replayed collectives are real traffic too.
    assert len(collectives(full, "recompute")) == len(collectives(fwd))


def test_selective_recompute_replays_only_the_attention_core_before_its_backward():
    model = get_model("llama2-7b")
    shape = dict(micro_batch=1, seq_len=2048, tp=2)
    plain = tf.layer_backward(model, **shape)
    selective = tf.layer_backward(model, recompute="selective", **shape)
    core = [op for op in tf.layer_forward(model, **shape) if op.kind is OpKind.ATTENTION]
    replayed = [op for op in selective if op.labels["phase"] == "recompute"]
    assert replayed == core and len(selective) == len(plain) + 1
    names = [op.name for op in selective]
    assert names.index("attn_core") + 1 == names.index("attn_core.bwd")


def test_tensor_parallel_all_reduces_two_forward_two_backward_of_the_hidden_tensor():
    model = get_model("llama2-7b")
    b, s, tp = 2, 4096, 8
    shape = dict(micro_batch=b, seq_len=s, tp=tp)
    ops = tf.layer_forward(model, **shape) + tf.layer_backward(model, **shape)
    for phase in ("fwd", "bwd"):
        reduces = collectives(ops, phase)
        assert [op.labels["collective"] for op in reduces] == ["all_reduce", "all_reduce"]
        assert all(op.bytes_read == b * s * 4096 * 2 for op in reduces)
        assert all(op.labels["group"] == "tp" for op in reduces)
    # Column-parallel input gradients: after each dgrad, before its wgrad.
    names = [op.name for op in ops if op.labels["phase"] == "bwd"]
    for proj in ("qkv_proj", "mlp_up_gate"):
        i = names.index(f"{proj}.dgrad.all_reduce")
        assert names[i - 1] == f"{proj}.dgrad" and names[i + 1] == f"{proj}.wgrad"


def test_no_collectives_without_tensor_parallelism():
    model = get_model("gpt3-175b")
    shape = dict(micro_batch=1, seq_len=2048, sequence_parallel=True)  # SP is moot at tp=1
    ops = (tf.layer_forward(model, **shape) + tf.layer_backward(model, recompute="full", **shape)
           + tf.embedding_forward(model, **shape) + tf.lm_head_forward(model, **shape)
           + tf.lm_head_backward(model, **shape) + tf.embedding_backward(model, **shape))
    assert collectives(ops) == []


def test_sequence_parallel_splits_each_all_reduce_into_reduce_scatter_and_all_gather():
    model = get_model("llama2-70b")
    b, s, tp = 1, 4096, 8
    full = b * s * 8192 * 2
    tp_only = dict(micro_batch=b, seq_len=s, tp=tp)
    with_sp = dict(tp_only, sequence_parallel=True)
    for phase, build in (("fwd", tf.layer_forward), ("bwd", tf.layer_backward)):
        reduces = collectives(build(model, **tp_only), phase)
        split = collectives(build(model, **with_sp), phase)
        kinds = collections.Counter(op.labels["collective"] for op in split)
        assert kinds["reduce_scatter"] == kinds["all_gather"] - (2 if phase == "bwd" else 0) == len(reduces)
        # One reduce-scatter + all-gather per all-reduce, of the same (full) tensor.
        scatter_gather = [op for op in split if not op.name.endswith(".input.all_gather")]
        assert sum(op.bytes_read for op in scatter_gather) == 2 * sum(op.bytes_read for op in reduces)
        assert all(op.bytes_read == full for op in split)
    # The extra backward all-gathers re-gather the sharded inputs of the column-parallel matmuls.
    extra = [op.name for op in tf.layer_backward(model, **with_sp) if op.name.endswith(".input.all_gather")]
    assert extra == ["mlp_up_gate.input.all_gather", "qkv_proj.input.all_gather"]


def test_sequence_parallel_shards_norms_and_residuals_but_not_matmuls():
    model = get_model("llama2-7b")
    tp_only = tf.layer_forward(model, micro_batch=1, seq_len=4096, tp=4)
    with_sp = tf.layer_forward(model, micro_batch=1, seq_len=4096, tp=4, sequence_parallel=True)
    by_name = {op.name: op for op in tp_only}
    for op in with_sp:
        if op.kind is OpKind.NORM or op.name.endswith("residual"):
            assert op.bytes_total * 4 == by_name[op.name].bytes_total
        elif op.kind.is_compute:
            assert op == by_name[op.name]


def test_every_op_is_labelled():
    model = get_model("tiny-moe")
    shape = dict(micro_batch=2, seq_len=32, tp=2, sequence_parallel=True)
    ops = (tf.embedding_forward(model, **shape) + tf.layer_forward(model, layer=1, **shape)
           + tf.lm_head_forward(model, **shape) + tf.lm_head_backward(model, **shape)
           + tf.layer_backward(model, layer=1, recompute="full", **shape)
           + tf.embedding_backward(model, **shape))
    for op in ops:
        assert op.labels["phase"] in ("fwd", "bwd", "recompute"), op.name
        assert op.labels["layer"] in (1, "embedding", "lm_head"), op.name
        if op.kind is OpKind.COLLECTIVE:
            assert op.labels["group"] == "tp"
            assert op.labels["collective"] in ("all_reduce", "all_gather", "reduce_scatter")


def test_embedding_and_lm_head_are_vocabulary_parallel():
    model = get_model("gpt3-175b")
    shape = dict(micro_batch=1, seq_len=2048, tp=8)
    head = [op for op in tf.lm_head_forward(model, **shape) if op.kind is OpKind.MATMUL]
    assert [op.shape for op in head] == [(1, 2048, 6283, 12288)]  # 50257 = 8 x 6282 + 1
    shards = [tf.vocab_shard(model, tp=8, tp_rank=r) for r in range(8)]
    assert sum(shards) == 50257 and max(shards) == shards[0]
    assert tf.megatron_padded_vocab_size(50257, 1) == 50304
    assert tf.megatron_padded_vocab_size(50257, 8) == 51200
    padded = tf.lm_head_forward(model, padded_vocab_size=51200, **shape)
    assert [op.shape for op in padded if op.kind is OpKind.MATMUL] == [(1, 2048, 6400, 12288)]
    # Cross-entropy needs three fp32-per-token all-reduces; the embedding one all-reduce.
    ce = [op for op in collectives(tf.lm_head_forward(model, **shape)) if "cross_entropy" in op.name]
    assert [op.bytes_read for op in ce] == [4 * 2048] * 3
    emb = collectives(tf.embedding_forward(model, **shape))
    assert [(op.labels["collective"], op.bytes_read) for op in emb] == [("all_reduce", 2048 * 12288 * 2)]
    emb_sp = collectives(tf.embedding_forward(model, sequence_parallel=True, **shape))
    assert [op.labels["collective"] for op in emb_sp] == ["reduce_scatter"]


def test_moe_hook_balanced_routing_and_custom_counts():
    model = get_model("tiny-moe")  # 4 experts, top-2
    shape = dict(micro_batch=2, seq_len=32)
    ops = tf.layer_forward(model, **shape)
    up = [op for op in ops if op.name.endswith(".up_gate")]
    assert [op.labels["expert"] for op in up] == [0, 1, 2, 3]
    assert [op.shape[1] for op in up] == [32, 32, 32, 32]  # 64 tokens x top-2 / 4 experts
    skewed = tf.layer_forward(model, expert_token_counts=[128, 0, 0, 0], **shape)
    assert [op.labels["expert"] for op in skewed if op.name.endswith(".up_gate")] == [0]
    assert flops(skewed) == pytest.approx(flops(ops), rel=1e-12)
    with pytest.raises(ValueError, match="summing to tokens x experts_per_token = 128"):
        tf.layer_forward(model, expert_token_counts=[10, 10, 10, 10], **shape)


# --- validation ---------------------------------------------------------------------------------

def test_tp_must_divide_heads_and_says_what_it_expected():
    with pytest.raises(ValueError, match="tp=3 must divide num_heads=32.*valid tp values are "
                                         "\\[1, 2, 4, 8, 16, 32\\]"):
        tf.layer_forward(get_model("llama2-7b"), micro_batch=1, seq_len=128, tp=3)


def test_tp_beyond_kv_heads_is_refused_not_silently_replicated():
    with pytest.raises(ValueError, match="tp=16 must divide num_kv_heads=8.*replicating kv heads"):
        tf.layer_backward(get_model("llama2-70b"), micro_batch=1, seq_len=128, tp=16)


def test_other_bad_inputs():
    model = get_model("llama2-7b")
    with pytest.raises(ValueError, match="seq_len divisible by tp=8, got seq_len=100"):
        tf.layer_forward(model, micro_batch=1, seq_len=100, tp=8, sequence_parallel=True)
    with pytest.raises(ValueError, match="recompute must be one of"):
        tf.layer_backward(model, micro_batch=1, seq_len=128, recompute="some")
    with pytest.raises(ValueError, match="micro_batch must be a positive integer, got 0"):
        tf.layer_forward(model, micro_batch=0, seq_len=128)
    with pytest.raises(ValueError, match="unknown dtype"):
        tf.layer_forward(model, micro_batch=1, seq_len=128, dtype="bf17")


# --- activation memory ----------------------------------------------------------------------------

GPT_SHAPED = dataclasses.replace(get_model("gpt3-175b"), name="gpt-shaped")  # 4h GeLU, MHA, LN


@pytest.mark.parametrize("s, b, t", [(2048, 1, 8), (2048, 4, 4), (4096, 2, 2)])
def test_korthikanti_section_4_formulas(s, b, t):
    h, a = GPT_SHAPED.hidden_size, GPT_SHAPED.num_heads
    paper = dict(micro_batch=b, seq_len=s, flash_attention=False, dropout=True)

    def act(**kw):
        return tf.activation_bytes_per_layer(GPT_SHAPED, **paper, **kw)

    sbh = s * b * h
    assert act() == pytest.approx(sbh * (34 + 5 * a * s / h), rel=1e-12)
    assert act(tp=t) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)), rel=1e-12)
    assert act(tp=t, sequence_parallel=True) == pytest.approx(sbh / t * (34 + 5 * a * s / h),
                                                              rel=1e-12)
    assert act(tp=t, recompute="full") == pytest.approx(2 * sbh, rel=1e-12)
    # Selective recompute (their Table 2): the 5as/h term goes.
    assert act(tp=t, recompute="selective") == pytest.approx(sbh * (10 + 24 / t), rel=1e-12)
    assert act(tp=t, sequence_parallel=True, recompute="selective") == pytest.approx(
        34 * sbh / t, rel=1e-12)


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("flash", [False, True])
def test_activation_bytes_shrink_monotonically_with_tp(sp, flash):
    model = get_model("llama2-7b")
    sizes = [tf.activation_bytes_per_layer(model, micro_batch=1, seq_len=4096, tp=t,
                                           sequence_parallel=sp, flash_attention=flash)
             for t in (1, 2, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


def test_flash_attention_keeps_no_quadratic_term():
    model = get_model("llama3-8b")

    def act(seq_len, flash):
        return tf.activation_bytes_per_layer(model, micro_batch=1, seq_len=seq_len,
                                             flash_attention=flash)

    assert act(8192, True) == pytest.approx(2 * act(4096, True), rel=1e-12)
    assert act(8192, False) > 2 * act(4096, False)


def test_activation_terms_generalise_to_gqa_and_swiglu():
    model = get_model("llama2-70b")  # 64 heads, 8 kv heads, SwiGLU 28672
    s, t = 4096, 8
    terms = tf.activation_bytes_breakdown(model, micro_batch=1, seq_len=s, tp=t)
    assert terms["key"] == terms["value"] == s * 1024 * 2 / t
    assert terms["query"] == s * 8192 * 2 / t
    assert terms["mlp_up_output"] == s * 2 * 28672 * 2 / t  # gate and up halves
    assert terms["mlp_down_input"] == s * 28672 * 2 / t
    assert terms["softmax_stats"] == 4 * 64 * s / t
    assert "softmax_output" not in terms


# --- weights, gradients, optimizer states -----------------------------------------------------------

def test_mixed_precision_adam_is_16_bytes_per_parameter():
    model = get_model("llama2-7b")
    per_layer = model.params_per_layer
    total = (tf.weight_bytes(model) + tf.gradient_bytes(model, dtype="bf16")
             + tf.optimizer_bytes(model))
    assert total == 16 * per_layer
    assert tf.gradient_bytes(model) == 4 * per_layer  # fp32 gradient accumulation by default
    assert tf.optimizer_bytes(model, dp=8, zero_stage=1) == 12 * per_layer / 8
    assert tf.gradient_bytes(model, dp=8, zero_stage=1) == 4 * per_layer
    assert tf.weight_bytes(model, dp=8, zero_stage=3) == 2 * per_layer / 8


def test_params_per_rank_add_up_to_the_model():
    for name in ("gpt3-175b", "llama2-70b", "mixtral-8x7b"):
        model = get_model(name)
        whole = (model.num_layers * tf.params_per_rank(model) + tf.params_per_rank(model, part="embedding")
                 + tf.params_per_rank(model, part="lm_head"))
        assert whole == model.params_total, name
    llama = get_model("llama2-7b")  # no biases: only the norms are replicated
    assert 8 * tf.params_per_rank(llama, tp=8) == llama.params_per_layer + 7 * llama.params_norms_per_layer

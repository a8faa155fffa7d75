"""Kernel choices (attention flash | unfused, dropout, fusions, cross-entropy, Adam): each op's
FLOPs and bytes from its formula, and what switching them does to a training step."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from clustersim import ops
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.ops import OpKind
from clustersim.workloads import kernels as k
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.training import TrainingWorkload

REL = 1e-9
B, A, S, D = 2, 4, 128, 64   # batch, heads, sequence, head dim


def total(op_list, attr):
    return sum(getattr(op, attr) for op in op_list)


@pytest.mark.parametrize("backward", [False, True])
def test_unfused_attention_flops_equal_the_flash_count(backward):
    flash = ops.attention(B, A, A, S, S, D, backward=backward)
    build = k.unfused_attention_backward if backward else k.unfused_attention_forward
    unfused = build(B, A, S, S, D, "bf16", dropout_p=0.1, fused_softmax=True)
    gemms = [op for op in unfused if op.kind is OpKind.MATMUL]
    assert len(gemms) == (4 if backward else 2)
    assert math.isclose(total(gemms, "flops"), flash.flops, rel_tol=REL)   # 4 b a s^2 d (x2)


def test_unfused_attention_writes_and_reads_the_score_matrix():
    fwd = {op.name: op for op in k.unfused_attention_forward(B, A, S, S, D, "bf16", dropout_p=0.1,
                                                             fused_softmax=True)}
    scores = B * A * S * S
    assert math.isclose(fwd["attn.scores"].bytes_written, 2 * scores, rel_tol=REL)
    softmax = fwd["attn.scale_mask_softmax"]
    assert (softmax.bytes_read, softmax.bytes_written) == (2 * scores, 2 * scores)
    assert fwd["attn.dropout"].bytes_written == 3 * scores          # bf16 output + bool mask
    assert math.isclose(fwd["attn.context"].bytes_read, 2 * (scores + B * A * S * D), rel_tol=REL)
    assert fwd["attn.context.permute"].bytes_total == 2 * 2 * B * A * S * D   # [s, b, h] copy
    unfused = k.unfused_attention_forward(B, A, S, S, D, "bf16", dropout_p=0.0, fused_softmax=False)
    passes = [op for op in unfused if op.kind not in (OpKind.MATMUL, OpKind.MEMCPY)]
    # Megatron's torch fallback runs in fp32 (query-key layer scaling forces softmax_in_fp32)
    assert [op.name for op in passes] == ["attn.cast_fp32", "attn.scale", "attn.mask",
                                          "attn.softmax", "attn.cast_back"]
    assert math.isclose(total(passes, "bytes_total"),
                        ((2 + 4) + (4 + 4) + (5 + 4) + (4 + 4) + (4 + 2)) * scores, rel_tol=REL)


def test_the_causal_fused_softmax_loads_the_lower_triangle_and_writes_full_rows():
    """scaled_upper_triang_masked_softmax.h loads row i's first i + 1 scores (forward: the
    scores; backward: the gradient and the probabilities) and stores the whole row."""
    scores, tri = B * A * S * S, B * A * S * (S + 1) // 2
    fwd = {op.name: op for op in k.unfused_attention_forward(
        B, A, S, S, D, "fp16", dropout_p=0.0, fused_softmax=True, causal=True)}
    softmax = fwd["attn.scale_mask_softmax"]
    assert (softmax.bytes_read, softmax.bytes_written) == (2 * tri, 2 * scores)
    bwd = {op.name: op for op in k.unfused_attention_backward(
        B, A, S, S, D, "fp16", dropout_p=0.0, fused_softmax=True, causal=True)}
    assert (bwd["attn.softmax.bwd"].bytes_read, bwd["attn.softmax.bwd"].bytes_written) == \
        (2 * 2 * tri, 2 * scores)
    # dQ, dK, dV concatenated into the QKV gradient (autograd of the split)
    assert bwd["attn.qkv_split.bwd"].bytes_total == 2 * 2 * 3 * B * A * S * D


@pytest.mark.parametrize("kv_len,heads,fused", [(2048, 4, True), (4096, 4, False),
                                                 (16, 4, False), (2048, 3, False)])
def test_the_fused_softmax_runs_only_inside_its_kernel_constraint(kv_len, heads, fused):
    """fused_softmax.py:132: 16 < s_kv <= 2048, s_q % 4 == 0, (b a) % 4 == 0; else fp32 torch."""
    names = {op.name for op in k.unfused_attention_forward(1, heads, kv_len, kv_len, 64, "fp16",
                                                            dropout_p=0.0, fused_softmax=True)}
    assert ("attn.scale_mask_softmax" in names) == fused
    assert ("attn.cast_fp32" in names) == (not fused)


def test_dropout_bias_and_bias_dropout_add_bytes():
    n, t, h = 4096 * 8, 4096, 8
    drop = k.dropout("d", n, "bf16")
    assert (drop.bytes_read, drop.bytes_written) == (2 * n, 3 * n)
    back = k.dropout_backward("d", n, "bf16")
    assert (back.bytes_read, back.bytes_written) == (3 * n, 2 * n)
    fused = k.bias_dropout_add("bda", t, h, "bf16", bias=True, dropout_p=0.1, fused=True)
    assert len(fused) == 1 and fused[0].bytes_total == 2 * (2 * t * h + h) + 3 * t * h
    unfused = k.bias_dropout_add("bda", t, h, "bf16", bias=True, dropout_p=0.1, fused=False)
    assert [op.name for op in unfused] == ["bda.bias", "bda.dropout", "bda.add"]
    # bias add (read n + h, write n) + dropout (2n, 3n) + add (4n, 2n), all bf16
    assert total(unfused, "bytes_total") == 2 * (2 * t * h + h) + 5 * t * h + 6 * t * h


def test_cross_entropy_unfused_is_fp32_passes_over_the_logits():
    t, v = 512, 1000
    fwd = k.cross_entropy_forward(t, v, "bf16", fused=False)
    n = t * v
    # cast (2n -> 4n), max (4n), subtract (4n, 4n), exp (4n, 4n), sum (4n), divide (4n, 4n)
    assert total(fwd, "bytes_total") == (2 + 4) * n + 4 * n + 8 * n + 8 * n + 4 * n + 8 * n + 2 * 4 * t
    fused = k.cross_entropy_forward(t, v, "bf16", fused=True)
    assert total(fused, "bytes_read") == 2 * 2 * n


def test_adam_bytes_per_parameter():
    p = 1_000_000
    fused = k.adam_ops(p, weight_dtype="bf16", grad_dtype="fp32", fused=True)
    assert len(fused) == 1 and fused[0].bytes_total == 30 * p       # (4+12) read, (12+2) written
    unfused = k.adam_ops(p, weight_dtype="bf16", grad_dtype="fp32", fused=False)
    assert len(unfused) == 9 and total(unfused, "bytes_total") == 86 * p
    assert all(op.kind is OpKind.OPTIMIZER for op in unfused)
    # Megatron 2021: grad fp16->fp32 (2+4), unscale (4+4), norm (4), FusedAdam (16+12), copy (4+2)
    megatron = k.adam_ops(p, weight_dtype="fp16", grad_dtype="fp32", fp16_optimizer_passes=True)
    assert total(megatron, "bytes_total") == 52 * p
    assert [op.name for op in megatron][0] == "optimizer.grad_to_fp32"


def test_expanding_a_layer_keeps_model_flops_and_adds_the_missing_ops():
    model = get_model("gpt3-175b")
    kw = dict(micro_batch=1, seq_len=2048, tp=8)
    megatron = k.KernelChoices(attention="unfused", attention_dropout=0.1, hidden_dropout=0.1)
    for build in (tfm.layer_forward, tfm.layer_backward):
        base = build(model, **kw)
        expanded = k.expand_layer_ops(base, megatron, bias=model.bias,
                                      hidden_size=model.hidden_size, tokens=2048)
        compute = (OpKind.MATMUL, OpKind.ATTENTION)
        assert math.isclose(sum(op.flops for op in expanded if op.kind in compute),
                            sum(op.flops for op in base if op.kind in compute), rel_tol=REL)
        assert not any(op.kind is OpKind.ATTENTION for op in expanded)
        assert any("dropout" in op.name for op in expanded)
        assert total(expanded, "bytes_total") > total(base, "bytes_total")
    assert k.expand_layer_ops(base, k.KernelChoices(), bias=False, hidden_size=model.hidden_size,
                              tokens=2048) == base   # the defaults are transformer.py's form


def step_time(**kernels):
    work = TrainingWorkload(kind="training", model="tiny", seq_len=256, micro_batch_size=2,
                            global_batch_size=2, kernels=kernels)
    cluster = ClusterConfig(node="DGX-A100", nodes=1, gpus_per_node=1).build()
    return work.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics


def test_a_step_with_megatron_2021_kernels_is_slower_with_the_same_model_flops():
    modern = step_time()
    old = step_time(attention="unfused", attention_dropout=0.1, hidden_dropout=0.1,
                    fused_cross_entropy=False, fused_optimizer=False)
    assert old["step_time_s"] > modern["step_time_s"]
    assert math.isclose(old["mfu"] * old["step_time_s"], modern["mfu"] * modern["step_time_s"],
                        rel_tol=REL)


def test_unknown_kernel_keys_are_rejected():
    with pytest.raises(ValidationError, match="flash_attn"):
        TrainingWorkload(kind="training", model="tiny", seq_len=64, global_batch_size=1,
                         kernels={"flash_attn": True})
    with pytest.raises(ValueError, match="attention"):
        k.KernelChoices(attention="paged")


def test_fp8_linear_gemms_are_quantized_and_keep_their_flops():
    gemm = ops.matmul(4096, 8192, 2048, dtype="bf16", name="mlp_up", shared_b=True)
    cast, fp8 = k.fp8_gemm(gemm)
    assert (cast.bytes_read, cast.bytes_written) == (2 * 4096 * 2048, 4096 * 2048)
    assert fp8.dtype == "fp8" and math.isclose(fp8.flops, gemm.flops, rel_tol=REL)
    assert fp8.bytes_read == 4096 * 2048 + 2048 * 8192        # fp8 A and the fp8 weight
    assert fp8.bytes_written == 2 * 4096 * 8192               # bf16 output
    layer = tfm.layer_forward(get_model("llama2-7b"), micro_batch=1, seq_len=512)
    expanded = k.expand_layer_ops(layer, k.KernelChoices(gemm_dtype="fp8"), bias=False,
                                  hidden_size=4096, tokens=512)
    kinds = {op.dtype for op in expanded if op.kind is OpKind.MATMUL}
    assert kinds == {"fp8"} and all(op.dtype == "bf16" for op in expanded
                                    if op.kind is OpKind.ATTENTION)


def _compiler(dtype: str, **kernels):
    from clustersim.workloads.training_step import StepConfig, _StepCompiler

    work = TrainingWorkload(kind="training", model="tiny", seq_len=256, micro_batch_size=2,
                            global_batch_size=2, dtype=dtype, recompute="full", kernels=kernels)
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=1).build()
    cfg = StepConfig(model=work.model_config_, layout=work.layout, micro_batch=2, seq_len=256,
                     recompute="full", dtype=dtype, kernels=work.kernels.choices())
    return _StepCompiler(cfg, cluster, work.make_schedule())


@pytest.mark.parametrize("dtype,kernels", [("fp16", dict(attention="unfused", attention_dropout=0.1,
                                                         hidden_dropout=0.1)), ("fp8", {})])
def test_the_forward_pass_runs_the_kernels_its_recomputation_runs(dtype, kernels):
    """Full recomputation replays the forward inside the backward: the forward pass of a layer
    must be op for op the recomputed forward (a forward left in transformer.py's flash/bf16 form
    while the backward ran the chosen kernels made Megatron-2021 steps 15 % too fast)."""
    from clustersim.schedules.actions import ActionKind

    sc = _compiler(dtype, **kernels)
    forward = sc.action_ops(ActionKind.F, 0)[1]          # group 0 is the embedding
    layer_bwd = sc.action_ops(ActionKind.BW, 0)[-2]       # last group is the embedding
    assert [op.name for op in layer_bwd[:len(forward)]] == [op.name for op in forward]
    assert [op.dtype for op in layer_bwd[:len(forward)]] == [op.dtype for op in forward]
    if dtype == "fp8":
        assert {op.dtype for op in forward if op.name in ("qkv_proj", "mlp_up")} == {"fp8"}
    else:
        assert {"attn.scores", "attn.scale_mask_softmax", "attn.dropout"} <= {op.name for op in forward}


def test_fp8_current_scaling_casts_as_transformer_engine_runs_them():
    """A gradient (no fused producer) costs an amax read before its cast; on Hopper every cast
    also writes the transposed copy the wgrad GEMM reads; the wgrad GEMM casts nothing."""
    t, h = 4096, 2048
    dgrad = ops.matmul(t, h, h, dtype="bf16", name="attn_out_proj.dgrad", shared_b=True)
    cast, gemm = k.fp8_gemm(dgrad, amax_pass=True, transposed_copy=True)
    assert (cast.bytes_read, cast.bytes_written) == (2 * 2 * t * h, 2 * t * h)
    wgrad = ops.matmul(h, h, t, dtype="bf16", name="attn_out_proj.wgrad")
    only = k.fp8_gemm(wgrad, amax_pass=True, transposed_copy=True)
    assert [op.kind for op in only] == [OpKind.MATMUL] and only[0].dtype == "fp8"
    layer = tfm.layer_backward(get_model("llama2-7b"), micro_batch=1, seq_len=512)
    expanded = k.expand_layer_ops(layer, k.KernelChoices(gemm_dtype="fp8"), bias=False,
                                  hidden_size=4096, tokens=512)
    casts = {op.name for op in expanded if op.name.endswith(".fp8_cast")}
    assert casts and not any(".wgrad" in name for name in casts)


def test_megatron_2021_layernorm_backward_reads_x_and_dy_twice():
    """layer_norm_cuda_kernel.cu: cuComputePartGradGammaBeta then cuComputeGradInput, each
    reading dy and x; one fused backward reads them once."""
    layer = tfm.layer_backward(get_model("gpt3-175b"), micro_batch=1, seq_len=2048, tp=8)
    norm = next(op for op in layer if op.name == "attn_norm.bwd")
    two = k.expand_layer_ops([norm], k.KernelChoices(fused_norm_backward=False), bias=True,
                             hidden_size=12288, tokens=2048)
    assert [op.name for op in two] == ["attn_norm.bwd.gamma_beta", "attn_norm.bwd"]
    assert math.isclose(total(two, "bytes_read"), 2 * norm.bytes_read, rel_tol=REL)
    assert math.isclose(total(two, "bytes_written"), norm.bytes_written, rel_tol=REL)


def test_torch_ddp_copies_each_gradient_into_its_bucket_and_back():
    p = 1_000_000
    base = k.adam_ops(p, weight_dtype="fp16", fp16_optimizer_passes=True)
    ddp = k.adam_ops(p, weight_dtype="fp16", fp16_optimizer_passes=True, ddp_bucket_copies=True)
    assert total(ddp, "bytes_total") - total(base, "bytes_total") == 2 * (2 + 2) * p

"""TP communication overlap (Megatron-Core userbuffers): closed forms, bounds, which collective
pairs with which GEMM, and the training step using it."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.errors import ConfigError
from clustersim.experiment import expand, run_one
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.tp_overlap import (TPOverlap, layer_time_s, overlap_pairs,
                                             overlapped_time_s, pair_time_s, te_gemm_name)

times = st.floats(1e-6, 1e-1)
factors = st.floats(1.0, 3.0)


def test_pair_without_interference_is_the_longer_kernel():
    assert math.isclose(pair_time_s(3e-3, 1e-3), 3e-3, rel_tol=1e-9)
    assert math.isclose(pair_time_s(1e-3, 3e-3), 3e-3, rel_tol=1e-9)


def test_pair_with_interference_follows_its_piecewise_form():
    # GEMM 1 ms at 1.5x while the 3 ms collective runs at 1.2x: the GEMM ends at 1.5 ms, having
    # held the collective to 1.5/1.2 = 1.25 ms of progress; 1.75 ms remain at full speed.
    assert math.isclose(pair_time_s(1e-3, 3e-3, 1.5, 1.2), 1.5e-3 + 1.75e-3, rel_tol=1e-9)


def test_ring_exchange_and_pipeline_closed_forms():
    g, c = 8e-3, 3e-3
    # ring over 4 ranks: 3 steps of max(2 ms, 1 ms) then the last 2 ms chunk
    assert math.isclose(overlapped_time_s("ring_exchange", g, c, chunks=4), 3 * 2e-3 + 2e-3, rel_tol=1e-9)
    # pipeline in 4 splits: 2 ms + 3 x max(2, 0.75) + 0.75 ms
    assert math.isclose(overlapped_time_s("pipeline", g, c, chunks=4), 2e-3 + 6e-3 + 0.75e-3, rel_tol=1e-9)
    assert math.isclose(overlapped_time_s("bulk", g, c, chunks=4), g, rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(g=times, c=times, n=st.integers(2, 8), method=st.sampled_from(["ring_exchange", "pipeline", "bulk"]),
       a=factors, b=factors)
def test_overlap_is_bounded(g, c, n, method, a, b):
    free = overlapped_time_s(method, g, c, chunks=n)
    assert max(g, c) * (1 - 1e-9) <= free <= (g + c) * (1 + 1e-9)  # never slower than serial
    slowed = overlapped_time_s(method, g, c, chunks=n, gemm_factor=a, comm_factor=b)
    assert max(g, c) * (1 - 1e-9) <= slowed <= (a * g + b * c) * (1 + 1e-9)
    assert slowed >= free * (1 - 1e-9)  # interference never helps


def test_sm_share_sets_the_gemm_slowdown():
    cfg = TPOverlap(pipeline_comm_sms=16, gemm_contention=0.05)
    assert math.isclose(cfg.gemm_factor("pipeline", 132), 132 / 116 + 0.05, rel_tol=1e-9)
    assert math.isclose(cfg.gemm_factor("ring_exchange", 132), 132 / 131 + 0.05, rel_tol=1e-9)
    with pytest.raises(ValueError, match="no SM"):
        TPOverlap(bulk_comm_sms=132).gemm_factor("bulk", 132)


def test_each_gemm_takes_its_own_sm_count_by_transformer_engine_name():
    ops = llama_layer(True)
    names = {op.name: te_gemm_name(op) for op in ops if op.kind.name == "MATMUL"}
    assert names["mlp_up_gate.wgrad"] == "fc1_wgrad" and names["attn_out_proj.dgrad"] == "proj_dgrad"
    cfg = TPOverlap()  # Megatron-Bridge H100 bf16: qkv_wgrad's reduce-scatter holds 24 SMs
    assert math.isclose(cfg.gemm_factor("bulk", 132, "qkv_wgrad"), 132 / 108, rel_tol=1e-9)
    assert math.isclose(cfg.gemm_factor("bulk", 132, "fc1_dgrad"), 132 / 130, rel_tol=1e-9)
    with pytest.raises(ConfigError, match="unknown GEMM 'attn_fprop'"):
        step_time({"tp_comm_overlap": {"comm_sms": {"attn_fprop": 2}}})


def llama_layer(backward):
    kw = dict(layer=0, micro_batch=1, seq_len=256, tp=4, sequence_parallel=True, dtype="bf16")
    model = get_model("llama3-70b")
    return (tfm.layer_backward(model, recompute="none", **kw) if backward
            else tfm.layer_forward(model, **kw))


def test_each_sequence_parallel_collective_pairs_with_its_gemm():
    fwd = llama_layer(False)
    assert [(fwd[c].name, fwd[g].name, m) for c, g, m in overlap_pairs(fwd)] == [
        ("attn_input.all_gather", "qkv_proj", "ring_exchange"),
        ("attn_output.reduce_scatter", "attn_out_proj", "pipeline"),
        ("mlp_input.all_gather", "mlp_up_gate", "ring_exchange"),
        ("mlp_output.reduce_scatter", "mlp_down", "pipeline")]
    bwd = llama_layer(True)
    methods = {bwd[c].name: (bwd[g].name, m) for c, g, m in overlap_pairs(bwd)}
    assert methods["mlp_output.grad.all_gather"] == ("mlp_down.dgrad", "ring_exchange")
    assert methods["mlp_up_gate.input.all_gather"] == ("mlp_up_gate.dgrad", "bulk")
    assert methods["mlp_up_gate.dgrad.reduce_scatter"] == ("mlp_up_gate.wgrad", "bulk")
    assert len(methods) == 6


def test_layer_time_is_the_sum_without_overlap_and_less_with_it():
    ops = llama_layer(False)
    op_time = lambda op: 1e-9 * op.flops / 1e3 + 1e-6  # noqa: E731 - any positive timing
    comm_time = lambda op: 1e-12 * op.bytes_read  # noqa: E731
    serial = sum(comm_time(o) if o.kind.is_communication else op_time(o) for o in ops)
    assert math.isclose(layer_time_s(ops, op_time, comm_time, None, tp=4, num_sms=132), serial, rel_tol=1e-9)
    free = TPOverlap(pipeline_comm_sms=0, ring_comm_sms=0, bulk_comm_sms=0, comm_sms=())
    assert layer_time_s(ops, op_time, comm_time, free, tp=4, num_sms=132) < serial


EXPERIMENT = {
    "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 2, "collectives": "nccl"},
    "workload": {"kind": "training", "model": "tiny", "seq_len": 512, "micro_batch_size": 2,
                 "global_batch_size": 4, "parallel": {"tp": 2, "sequence_parallel": True},
                 "granularity": "layer", "replicas": "one"},
}


def step_time(kernels=None, **workload):
    exp = {**EXPERIMENT, "workload": {**EXPERIMENT["workload"], **workload,
                                      **({"kernels": kernels} if kernels is not None else {})}}
    [run] = expand({"name": "t", **exp})
    return run_one(run, record_trace=False).metrics["step_time_s"]


def test_training_step_with_overlap_is_never_slower_without_interference():
    base = step_time()
    free = step_time({"tp_comm_overlap": {"pipeline_comm_sms": 0, "ring_comm_sms": 0, "bulk_comm_sms": 0,
                                          "comm_sms": {}}})
    assert free < base
    slowed = step_time({"tp_comm_overlap": {"gemm_contention": 0.5, "comm_contention": 0.5}})
    assert slowed > free


def test_overlap_needs_sequence_parallelism():
    with pytest.raises(ConfigError, match="sequence_parallel"):
        step_time({"tp_comm_overlap": {}}, parallel={"tp": 2})

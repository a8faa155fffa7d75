"""NPU + PIM devices in the serving workload: dispatch by op kind or Op/B, NeuPIMs' blocked vs
concurrent decode layers, and PIM GEMV scaling with banks until the host I/O limits it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clustersim.hardware.accelerator_presets import load_pim
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.hardware.node import load_device
from clustersim.ops import attention, matmul
from clustersim.workloads.models import get_model
from clustersim.workloads.serving import pim_split
from clustersim.workloads.serving.iteration import IterationModel
from clustersim.workloads.serving.workload import ServingWorkload


def rel(x):
    return pytest.approx(x, rel=1e-9)


def test_pim_gemv_time_falls_with_more_banks_until_the_host_io_limits_it():
    base = load_pim("HBM-PIM")
    rows, k = 4096, 4096
    times, ios = [], []
    for banks in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        pim = dataclasses.replace(base, banks_per_channel=banks)
        cost = pim.gemv(rows, k)
        times.append(cost.time_s)
        ios.append(cost.io_s)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(times, times[1:]))     # never slower
    assert times[0] > 10 * times[-1]                                         # and much faster
    # Once every unit holds a single row, more banks cannot help: the floor is the host
    # writing x into every channel and reading y back, plus one row's stream.
    floor = ios[-1] + base.stream_time_s(k * 2, "fp16")
    assert times[-1] == rel(floor) and times[-2] == rel(floor)
    # More channels add pins but every channel needs its own copy of x: the host I/O grows.
    wide = [dataclasses.replace(base, channels=c).gemv(rows, k).io_s for c in (16, 64, 256)]
    assert wide[0] < wide[1] < wide[2]


def test_dispatch_puts_decode_gemvs_on_pim_and_batched_gemms_on_the_host():
    gemv = load_device("A100-HBM-PIM", dispatch="gemv")
    duplex = load_device("A100-HBM-PIM", dispatch="op_b")
    one, batched = matmul(1, 4096, 4096, shared_b=True), matmul(256, 4096, 4096, shared_b=True)
    assert duplex.place(one) == "pim" and duplex.place(batched) == "npu"
    assert duplex.op_time(one) == rel(min(duplex.pim.op_time(one), duplex.npu.op_time(one)))
    # PIM re-streams the weights for every row: 256 rows cost ~256 GEMVs (where PIM stops).
    assert gemv.op_time(batched) > 100 * gemv.op_time(one)
    neupims = load_device("NeuPIMs-NPU")
    assert neupims.place(attention(8, 32, 32, 1, 2048, 128)) == "pim"
    assert neupims.place(attention(1, 32, 32, 512, 512, 128)) == "npu"       # prefill
    assert neupims.place(matmul(1, 4096, 4096)) == "npu"
    assert neupims.peak_flops("bf16") == neupims.npu.peak_flops("bf16")


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 256), context=st.integers(16, 8192),
       device=st.sampled_from(["A100-HBM-PIM", "NeuPIMs-NPU"]),
       model=st.sampled_from(["llama2-7b", "llama3-8b"]))
def test_concurrent_is_never_slower_than_blocked(batch, context, device, model):
    iteration = IterationModel(get_model(model),
                               load_device(device, dispatch="attention", overlap="concurrent"))
    parts = pim_split.layer_parts(iteration, batch, context)
    blocked = iteration.layers_per_stage * (parts.g1 + parts.a + parts.g2)
    saving = pim_split.overlap_saving_s(iteration, batch, context)
    assert 0 <= saving <= blocked
    # Never faster than the busier side alone (host GEMMs of both halves, or all attention).
    half = pim_split.layer_parts(iteration, -(-batch // 2), context)
    assert blocked - saving >= iteration.layers_per_stage * min(parts.a, half.g1 + half.g2) * (1 - 1e-9)


def test_concurrent_overlaps_attention_with_gemms_when_attention_is_large():
    iteration = IterationModel(get_model("llama2-7b"),
                               load_device("A100-HBM-PIM", dispatch="attention", overlap="concurrent"))
    whole = pim_split.layer_parts(iteration, 128, 4096)
    half = pim_split.layer_parts(iteration, 64, 4096)
    layers = iteration.layers_per_stage
    split = pim_split.interleaved_s(half, half, layers)
    assert split < layers * (whole.g1 + whole.a + whole.g2)
    # Steady state: each layer costs the busier side's two halves.
    per_layer = max(2 * (half.g1 + half.g2), 2 * half.a)
    assert split >= layers * per_layer * (1 - 1e-9)
    assert pim_split.overlap_saving_s(iteration, 128, 4096) > 0


def test_serving_on_npu_pim_records_both_sides_and_concurrent_is_not_slower():
    def serve(overlap):
        cluster = ClusterConfig(node={"device": "NeuPIMs-NPU", "count": 1, "link_bandwidth": "64 GB/s"},
                                gpu_overrides={"overlap": overlap}).build()
        workload = ServingWorkload(model="llama2-7b", scheduler={"max_num_seqs": 32},
                                   requests={"count": 32, "arrival": {"kind": "burst"},
                                             "prompt_tokens": {"kind": "fixed", "tokens": 1024},
                                             "output_tokens": {"kind": "fixed", "tokens": 16}})
        return workload.run(cluster, rng=np.random.default_rng(0), record_trace=True)

    blocked, concurrent = serve("blocked"), serve("concurrent")
    streams = set(blocked.trace.spans["stream"])
    assert {"npu", "pim"} <= streams
    assert concurrent.metrics["tpot_p50_s"] <= blocked.metrics["tpot_p50_s"] * (1 + 1e-12)

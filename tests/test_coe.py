"""Composition of experts: switches are timed tier-to-tier copies on the engine, the weights
tier is an LRU cache that never overflows, and a fused decoder layer never moves more HBM bytes
than the same layer run kernel by kernel."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.hardware.presets import load_gpu
from clustersim.workloads.coe import CoeWorkload
from clustersim.workloads.fused_dataflow import decoder_layer_ops, fused, kernel_by_kernel
from clustersim.workloads.models import ModelConfig

SMALL = {"name": "e", "num_layers": 2, "hidden_size": 512, "num_heads": 8, "num_kv_heads": 8,
         "ffn_hidden_size": 2048, "vocab_size": 8192, "max_seq_len": 4096}
RDU_NODE = {"device": "SN40L", "count": 2, "link_bandwidth": "64 GB/s"}


def rel(x):
    return pytest.approx(x, rel=1e-9)


def run(workload, node=RDU_NODE, **overrides):
    cluster = ClusterConfig(node=node, gpu_overrides=overrides).build()
    result = workload.run(cluster, rng=np.random.default_rng(0), record_trace=True)
    return cluster, result


def test_a_switch_on_an_idle_link_takes_bytes_over_bandwidth_plus_latency():
    workload = CoeWorkload(expert=SMALL, experts=4, requests=6, mix="uniform",
                           output_tokens=2, prompt_tokens=8)
    cluster, result = run(workload, copy_latency_s="20 us")
    bytes_per_device = workload.expert_bytes() / 2
    expected = bytes_per_device / 100e9 + 20e-6              # SN40L DDR at 100 GB/s
    assert result.metrics["switch_time_s"] == rel(expected)
    spans = result.trace.spans
    switches = spans[spans["category"] == "tier_copy"]
    copies = switches[switches["name"].str.startswith("switch in")]
    assert len(copies) == 2 * result.metrics["switches"] > 0      # on both devices
    assert all(d == rel(expected) for d in (copies["end_s"] - copies["start_s"]))
    # On a GPU the switch crosses PCIe: bytes / 64 GB/s per H100 link, no DMA setup.
    gpu = load_gpu("h100", host_memory_bytes=2**38, host_link_bandwidth_bytes_per_s=64e9)
    assert gpu.copy_time_s(1e9, "host", "hbm") == rel(1e9 / 64e9)


def test_the_weights_tier_is_an_lru_cache_that_never_exceeds_its_capacity():
    workload = CoeWorkload(expert=SMALL, experts=40, requests=120, mix="zipf", skew=0.5,
                           output_tokens=2, prompt_tokens=8, weights_fraction=0.9)
    node = {"device": "SN40L", "count": 1, "link_bandwidth": "64 GB/s"}
    # Shrink HBM so that only a few experts fit and evictions happen.
    capacity = 5.5 * workload.expert_bytes()
    cluster, result = run(workload, node=node, hbm_capacity_bytes=capacity,
                          sram_capacity_bytes=workload.expert_bytes() / 4)
    m = result.metrics
    assert m["hbm_slots"] == 4 and 0 < m["hbm_hit_rate"] < 1
    assert m["peak_weights_tier_gib"] * 2**30 <= 4 * workload.expert_bytes() * (1 + 1e-12)
    assert m["peak_weights_tier_gib"] * 2**30 <= capacity
    # Hits + switches = requests, and every switch costs the same closed form.
    assert m["switches"] == round(120 * (1 - m["hbm_hit_rate"]))


def test_experts_that_fit_no_tier_are_refused_with_the_nodes_needed():
    workload = CoeWorkload(expert="llama2-70b", experts=200)
    with pytest.raises(ConfigError) as err:
        workload.check(ClusterConfig(node="DGX-H100").build())
    assert err.value.key == "workload.experts" and "nodes would hold them" in str(err.value)
    tiny_hbm = ClusterConfig(node={"device": "SN40L", "count": 1, "link_bandwidth": "1 GB/s"},
                             gpu_overrides={"hbm_capacity_bytes": "1 GiB",
                                            "sram_capacity_bytes": "0.5 GiB"}).build()
    with pytest.raises(ConfigError, match="fits no tier"):
        CoeWorkload(expert="llama2-7b", experts=2).check(tiny_hbm)


_model = st.builds(lambda layers, heads, head_dim, ffn_mult, kv_div: ModelConfig.from_dict(
    {"name": "r", "num_layers": layers, "hidden_size": heads * head_dim, "num_heads": heads,
     "num_kv_heads": max(1, heads // kv_div), "ffn_hidden_size": heads * head_dim * ffn_mult,
     "vocab_size": 1000, "max_seq_len": 1 << 16}),
    st.integers(1, 4), st.sampled_from([4, 8, 16]), st.sampled_from([32, 64, 128]),
    st.integers(1, 4), st.sampled_from([1, 2, 4]))


@settings(max_examples=60, deadline=None)
@given(model=_model, tokens=st.integers(1, 512), extra=st.integers(0, 4096),
       tp=st.sampled_from([1, 2, 4]))
def test_fused_never_moves_more_hbm_bytes_than_kernel_by_kernel(model, tokens, extra, tp):
    from clustersim.hardware.accelerator_presets import load_rdu
    if model.num_heads % tp or model.num_kv_heads % tp:
        return
    rdu = load_rdu("SN40L")
    layer = decoder_layer_ops(model, tokens=tokens, context=tokens + extra, tp=tp)
    hidden = tokens * model.hidden_size * 2
    one_graph = fused(rdu, layer, hidden_bytes=hidden)
    kernels = kernel_by_kernel(rdu, layer)
    assert one_graph.hbm_bytes <= kernels.hbm_bytes
    assert one_graph.time_s <= kernels.time_s * (1 + 1e-9)


def test_weights_that_fit_in_sram_stay_there_across_tokens_and_leave_hbm_traffic():
    from clustersim.hardware.accelerator_presets import load_rdu
    from clustersim.workloads.fused_dataflow import kv_bytes, layer_cost, sram_resident

    rdu = load_rdu("SN40L")                                  # 520 MiB of SRAM per socket
    small, big = ModelConfig.from_dict(SMALL), ModelConfig.from_dict({**SMALL, "num_layers": 400,
                                                                        "hidden_size": 2048})
    assert sram_resident(rdu, small, tp=1, dtype="bf16")
    assert not sram_resident(rdu, big, tp=1, dtype="bf16")
    cost = layer_cost(rdu, small, tokens=1, context=64, tp=1, dtype="bf16", execution="fused")
    layer = decoder_layer_ops(small, tokens=1, context=64, tp=1)
    # Only the KV cache and the layer's input and output cross HBM.
    assert cost.hbm_bytes == rel(sum(kv_bytes(op) for op in layer) + 2 * small.hidden_size * 2)

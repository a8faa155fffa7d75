"""Expert offloading: an HBM expert cache in front of host memory, fetches on PCIe."""

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.models import get_model
from clustersim.workloads.moe.inference import MoEInferenceWorkload

MIXTRAL_4L = {**{f: getattr(get_model("mixtral-8x7b"), f) for f in (
    "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "max_seq_len",
    "num_experts", "experts_per_token")}, "name": "mixtral-4-layers", "num_layers": 4}


@pytest.fixture(scope="module")
def cluster():
    return ClusterConfig(node="DGX-H100", nodes=1).build()


def _run(cluster, model=MIXTRAL_4L, **offload):
    w = MoEInferenceWorkload(model=model, batch_size=2, prompt_len=32, output_len=8,
                             moe={"distribution": "zipf", "zipf_s": 0.8, "affinity": 0.5},
                             offload=offload)
    w.check(cluster)
    return w.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics


def test_every_expert_cached_costs_what_all_on_gpu_costs(cluster):
    m = _run(cluster, cache_fraction=1.0)
    assert m["hit_rate"] == 1.0 and m["stall_s"] == 0.0 and m["fetched_gib"] == 0.0
    assert m["tpot_s"] == pytest.approx(m["tpot_all_on_gpu_s"], rel=1e-9)


def test_fetch_time_is_expert_bytes_over_pcie(cluster):
    m = _run(cluster, cache_fraction=0.5)
    expert_bytes = get_model("mixtral-8x7b").params_expert * 2
    pcie = cluster.devices[0].tier_for("offload").bandwidth_bytes_per_s
    assert m["fetch_ms_per_expert"] == pytest.approx(expert_bytes / pcie * 1e3, rel=1e-9)
    # every miss is one whole expert over the link
    assert m["fetched_gib"] * 2**30 == pytest.approx(m["misses"] * expert_bytes, rel=1e-9)


def test_lru_hit_rate_grows_with_the_cache_and_stalls_shrink(cluster):
    runs = [_run(cluster, cache_fraction=f) for f in (0.25, 0.5, 0.75, 1.0)]
    hits = [r["hit_rate"] for r in runs]
    stalls = [r["stall_s"] for r in runs]
    assert hits == sorted(hits) and hits[0] < hits[-1]
    assert stalls == sorted(stalls, reverse=True)
    assert all(r["tpot_s"] >= r["tpot_all_on_gpu_s"] * (1 - 1e-9) for r in runs)


def test_cpu_execution_of_missed_experts_beats_fetching_in_decode(cluster):
    fetch = _run(cluster, cache_fraction=0.25)
    hybrid = _run(cluster, cache_fraction=0.25, cpu_execution=True)
    assert hybrid["cpu_expert_runs"] > 0
    assert hybrid["tpot_s"] < fetch["tpot_s"]


def test_perfect_prediction_prefetch_hits(cluster):
    w = dict(model=MIXTRAL_4L, batch_size=1, prompt_len=16, output_len=8)
    moe = {"distribution": "zipf", "zipf_s": 0.8, "affinity": 1.0, "affinity_set": 2}
    runs = {}
    for prefetch in ("none", "next_layer"):
        wl = MoEInferenceWorkload(**w, moe=moe, offload={"cache_fraction": 0.5,
                                                         "prefetch": prefetch})
        runs[prefetch] = wl.run(cluster, rng=np.random.default_rng(1), record_trace=False).metrics
    assert runs["next_layer"]["prefetch_hits"] > 0
    assert runs["next_layer"]["misses"] < runs["none"]["misses"]
    assert runs["next_layer"]["tpot_s"] <= runs["none"]["tpot_s"] * (1 + 1e-9)


def test_a_cache_larger_than_memory_is_refused(cluster):
    w = MoEInferenceWorkload(model="mixtral-8x7b", offload={"cache_fraction": 1.0})
    with pytest.raises(ConfigError, match="cache_fraction can be at most"):
        w.check(cluster)
    with pytest.raises(ConfigError, match="dense"):
        MoEInferenceWorkload(model="llama2-7b").check(cluster)


def test_score_policy_keeps_hot_experts_where_lru_thrashes(cluster):
    """A decode step sweeps the layers in order: once a step needs more experts than the cache
    holds, LRU always evicts the expert needed next; frequency with the layer tie-break does not."""
    w = dict(model=MIXTRAL_4L, batch_size=4, prompt_len=16, output_len=16,
             moe={"distribution": "zipf", "zipf_s": 0.8})
    hits = {}
    for policy in ("lru", "score"):
        wl = MoEInferenceWorkload(**w, offload={"cache_fraction": 0.5, "policy": policy})
        hits[policy] = wl.run(cluster, rng=np.random.default_rng(2), record_trace=False).metrics
    assert hits["score"]["hit_rate"] > 2 * hits["lru"]["hit_rate"], hits
    assert hits["score"]["tpot_s"] < hits["lru"]["tpot_s"]


def test_ep_inference_routes_each_iteration_and_counts_its_bytes(cluster):
    """Serving with EP: every iteration routes exactly its own tokens (the prefill's 16 per
    sequence, then one per sequence per decode step) on each of the 4 GPUs, top-2, every layer."""
    from clustersim.workloads.moe.ep_inference import run_ep_inference
    from clustersim.workloads.moe.ep_layer import EPOptions
    from clustersim.workloads.moe.routing import RoutingSpec

    model = get_model("tiny-moe")
    options = EPOptions(RoutingSpec(4, 2, "zipf", zipf_s=1.0))
    m = run_ep_inference(model, cluster, ep=4, batch=3, prompt_len=16, output_len=4,
                         dtype="bf16", options=options, rng=np.random.default_rng(0))
    assert m["tokens_routed"] == (3 * 16 + 4 * 3) * 4 * 2 * model.num_layers
    assert m["ttft_s"] > m["tpot_s"] > 0
    w = MoEInferenceWorkload(model="tiny-moe", batch_size=3, prompt_len=16, output_len=4, ep=3)
    with pytest.raises(ConfigError, match="ep=3 must divide"):
        w.check(cluster)

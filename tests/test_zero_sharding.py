"""ZeRO-2 and ZeRO-3 / FSDP FULL_SHARD in the training step: the ZeRO paper's memory closed
form, the added all-gathers and reduce-scatters against their idle-fabric closed forms, overlap
bounds, agreement between granularities, and refused layouts."""

import math

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.training import TrainingWorkload

REL = 1e-9
GIB = 2**30


def run(*, nodes=2, gpus_per_node=1, zero_stage=3, dp=2, tp=1, **workload):
    spec = {"model": "tiny", "seq_len": 128, "micro_batch_size": 2,
            "global_batch_size": 2 * dp, **workload,
            "parallel": {"dp": dp, "tp": tp, "zero_stage": zero_stage,
                         **workload.get("parallel", {})}}
    work = TrainingWorkload(kind="training", **spec)
    cluster = ClusterConfig(node="DGX-H100", nodes=nodes, gpus_per_node=gpus_per_node).build()
    work.check(cluster)
    return work.run(cluster, rng=np.random.default_rng(0), record_trace=True), cluster


def units(tp=1):
    """Parameters of one TP rank in each FSDP unit: embedding, layers, LM head."""
    model = get_model("tiny")
    layer = tfm.params_per_rank(model, part="layer", tp=tp)
    return {"embedding": tfm.params_per_rank(model, part="embedding", tp=tp),
            "layer": layer, "layers": model.num_layers,
            "lm_head": tfm.params_per_rank(model, part="lm_head", tp=tp)}


def total_params(tp=1) -> float:
    u = units(tp)
    return float(u["embedding"] + u["layers"] * u["layer"] + u["lm_head"])


def ring_time_s(cluster, size_bytes: float, n: int) -> float:
    """Ring all-gather / reduce-scatter of a ``size_bytes`` buffer over n GPUs one per node on
    an idle fabric: n-1 steps, each a step latency, the NIC path latency and S/n over the NIC."""
    fabric = cluster.router
    return ((n - 1) * (cluster.inter_node_step_latency_s + fabric.nic_latency_s)
            + (n - 1) / n * size_bytes / fabric.nic_bandwidth_bytes_per_s)


def device_busy_s(result, device="n0.gpu0", categories=("compute", "optimizer")) -> float:
    spans = result.trace.spans
    mine = spans[(spans["device"] == device) & spans["category"].isin(categories)]
    return float((mine["end_s"] - mine["start_s"]).sum())


@pytest.mark.parametrize("dp", [2, 4])
def test_stage3_state_is_the_zero_papers_closed_form(dp):
    result, _ = run(nodes=dp, dp=dp)
    m, psi = result.metrics, total_params()
    state = (m["stage0_weights_gib"] + m["stage0_gradients_gib"] + m["stage0_optimizer_gib"]) * GIB
    assert math.isclose(state, (2 + 2 + 12) * psi / dp, rel_tol=REL)  # (2+2+K) Psi / N_d


def test_stage2_shards_gradients_and_optimizer_not_weights():
    result, _ = run(zero_stage=2)
    m, psi = result.metrics, total_params()
    assert math.isclose(m["stage0_weights_gib"] * GIB, 2 * psi, rel_tol=REL)
    assert math.isclose(m["stage0_gradients_gib"] * GIB, 2 * psi / 2, rel_tol=REL)
    assert math.isclose(m["stage0_optimizer_gib"] * GIB, 12 * psi / 2, rel_tol=REL)
    # stage 2 communicates as stage 1 (a reduce-scatter per bucket): the same step time
    stage1, _ = run(zero_stage=1)
    assert math.isclose(result.metrics["step_time_s"], stage1.metrics["step_time_s"], rel_tol=REL)
    assert result.metrics["peak_memory_gib"] < stage1.metrics["peak_memory_gib"]


@pytest.mark.parametrize("prefetch, gathered_layers", [(False, 1), (True, 2)])
def test_stage3_peak_is_sharded_state_plus_activations_plus_gathered_units(prefetch, gathered_layers):
    # One micro-batch: the peak is during the last layer's backward, all activations held,
    # that layer's parameters gathered with its unsharded gradient, and, with prefetch, the
    # next layer's parameters arriving.
    result, _ = run(zero_prefetch=prefetch)
    m, u = result.metrics, units()
    activations = u["layers"] * m["activation_gib_per_layer"] * GIB
    assert u["layer"] > u["lm_head"]  # so the last layer's backward holds the most
    expected = 16 * total_params() / 2 + activations + 2 * u["layer"] * (1 + gathered_layers)
    assert math.isclose(m["peak_memory_gib"] * GIB, expected, rel_tol=REL)


@pytest.mark.parametrize("microbatches, reduce_dtype", [(1, "bf16"), (3, "bf16"), (2, "fp32")])
def test_without_overlap_the_added_time_is_the_closed_form_collectives(microbatches, reduce_dtype):
    result, cluster = run(zero_prefetch=False, global_batch_size=2 * 2 * microbatches,
                          zero_reduce_dtype=reduce_dtype)
    u = units()
    sizes = [u["embedding"], u["lm_head"]] + [u["layer"]] * u["layers"]
    reduce_bytes = {"bf16": 2.0, "fp32": 4.0}[reduce_dtype]
    # per micro-batch, every unit: an all-gather of its bf16 parameters before forward and
    # before backward, a reduce-scatter of its gradients (in reduce_dtype) after backward
    per_microbatch = sum(2 * ring_time_s(cluster, 2.0 * p, 2)
                         + ring_time_s(cluster, reduce_bytes * p, 2) for p in sizes)
    compute = device_busy_s(result)
    assert math.isclose(result.metrics["step_time_s"], compute + microbatches * per_microbatch,
                        rel_tol=REL)


@pytest.mark.parametrize("microbatches", [1, 3])
def test_overlap_is_never_slower_and_never_beats_compute_or_bandwidth(microbatches):
    kw = dict(global_batch_size=2 * 2 * microbatches)
    overlapped, cluster = run(**kw)
    serial, _ = run(zero_prefetch=False, **kw)
    u = units()
    unit_bytes = 2.0 * (u["embedding"] + u["lm_head"] + u["layers"] * u["layer"])
    # each NIC direction carries S/2 of every collective (n = 2): 3 collectives per unit
    wire_s = microbatches * 3 * unit_bytes / 2 / cluster.router.nic_bandwidth_bytes_per_s
    step = overlapped.metrics["step_time_s"]
    assert step <= serial.metrics["step_time_s"] * (1 + REL)
    assert step >= max(device_busy_s(overlapped), wire_s) * (1 - REL)
    assert step < serial.metrics["step_time_s"]  # prefetch hides some gathers


def test_layer_granularity_and_one_replica_match_op_granularity():
    exact, _ = run(nodes=2, gpus_per_node=2, tp=2)
    folded, _ = run(nodes=2, gpus_per_node=2, tp=2, granularity="layer")
    one, _ = run(nodes=2, gpus_per_node=2, tp=2, replicas="one")
    for other in (folded, one):
        assert math.isclose(other.metrics["step_time_s"], exact.metrics["step_time_s"], rel_tol=1e-9)
    assert math.isclose(one.metrics["peak_memory_gib"], exact.metrics["peak_memory_gib"],
                        rel_tol=1e-9)
    # A layer task allocates at its start what the op path allocates at its last op: the peaks
    # may differ by which small unit (embedding or LM head) is gathered at that instant.
    u = units(tp=2)
    assert abs(folded.metrics["peak_memory_gib"] - exact.metrics["peak_memory_gib"]) * GIB \
        <= 2.0 * abs(u["lm_head"] - u["embedding"]) * (1 + REL)


@pytest.mark.parametrize("bad, words", [
    ({"parallel": {"pp": 2}, "schedule": "1f1b"}, "pp=2"),
    ({"schedule": "zb-h1"}, "1f1b"),
])
def test_unsupported_layouts_are_refused_naming_the_key(bad, words):
    with pytest.raises(ConfigError) as info:
        run(nodes=4 if "parallel" in bad else 2, **bad)
    assert info.value.key == "workload.parallel.zero_stage"
    assert words in str(info.value)


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="zero_stage"):
        TrainingWorkload(kind="training", model="tiny", seq_len=128, global_batch_size=2,
                         parallel={"dp": 2, "zero_stage": 4})


def test_collectives_go_through_the_clusters_nccl_model():
    from clustersim.workloads.idle_collectives import idle_collective_time_s

    spec = {"model": "tiny", "seq_len": 128, "micro_batch_size": 2, "global_batch_size": 8,
            "parallel": {"dp": 4, "zero_stage": 3}, "zero_prefetch": False}
    steps = {}
    for model in ("flows", "nccl"):
        work = TrainingWorkload(kind="training", **spec)
        cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=4, collectives=model).build()
        work.check(cluster)
        result = work.run(cluster, rng=np.random.default_rng(0), record_trace=True)
        u, group = units(), [0, 1, 2, 3]
        sizes = [u["embedding"], u["lm_head"]] + [u["layer"]] * u["layers"]
        comm = sum(idle_collective_time_s(cluster, [("all_gather", group, 2.0 * p)]) * 2
                   + idle_collective_time_s(cluster, [("reduce_scatter", group, 2.0 * p)])
                   for p in sizes)
        steps[model] = result.metrics["step_time_s"]
        busy = device_busy_s(result, device=cluster.names[0])
        assert math.isclose(steps[model], busy + comm, rel_tol=REL)
    assert not math.isclose(steps["flows"], steps["nccl"], rel_tol=1e-6)

"""ZeRO-1/2 parameter all-gathers (param_gather.py): closed forms on an idle node, the ZeRO paper's
communication volume, and when the overlapped gathers start and what waits for them."""

import math

import numpy as np

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.training import TrainingWorkload

REL = 1e-9
DP = 4
LAYER_PARAMS = tfm.params_per_rank(get_model("tiny"), part="layer")


def run(zero_stage, gpus_per_node=DP, parallel=None, **workload):
    spec = {"model": "tiny", "seq_len": 128, "micro_batch_size": 2, "global_batch_size": 16,
            "grad_bucket_params": LAYER_PARAMS, "overlap_grad_reduce": False,
            "parallel": {"dp": DP, "zero_stage": zero_stage, **(parallel or {})}, **workload}
    work = TrainingWorkload(kind="training", **spec)
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=gpus_per_node).build()
    work.check(cluster)
    return work.run(cluster, rng=np.random.default_rng(0), record_trace=True), cluster


def ring_all_gather_s(cluster, n, size_bytes):
    """NVSwitch ring on an idle node: n-1 steps of size/n per rank over the GPU's NVLink port,
    each after the collective's step latency and the port's latency."""
    up = next(link for link in cluster.links if link.name == "gpu0.nvlink.up")
    return (n - 1) * (cluster.intra_node_step_latency_s + up.latency_s
                      + size_bytes / n / up.capacity_bytes_per_s)


def bucket_bytes():
    """The tiny model's gradient buckets of one layer's parameters (backward order: the LM head
    fills a bucket with layer 1, layer 0 one alone, the embedding the last), in bf16."""
    model = get_model("tiny")
    head, embedding = (tfm.params_per_rank(model, part=p) for p in ("lm_head", "embedding"))
    return [2.0 * (head + LAYER_PARAMS), 2.0 * LAYER_PARAMS, 2.0 * embedding]


def gathers(result, device="gpu0"):
    spans = result.trace.spans
    return spans[(spans["device"] == device) & spans["name"].str.startswith("param all_gather")]


def test_zero1_gathers_after_the_optimizer_add_the_closed_form_ring_all_gathers():
    result, cluster = run(1)
    spans = result.trace.spans
    optimizer_end = float(spans[spans["name"] == "optimizer step"]["end_s"].max())
    expected = sum(ring_all_gather_s(cluster, DP, size) for size in bucket_bytes())
    assert len(gathers(result)) == 3
    assert math.isclose(result.metrics["step_time_s"], optimizer_end + expected, rel_tol=REL)


def test_zero1_moves_the_bytes_of_an_all_reduce():
    # Rajbhandari et al. 2020, section 7.2: reduce-scatter + all-gather = all-reduce's volume.
    plain, _ = run(0)
    zero1, _ = run(1)
    zero2, _ = run(2)
    carried = [r.trace.fabric.bytes_carried.sum() for r in (plain, zero1, zero2)]
    # every rank sends 2(n-1)/n of each bucket, through its NVLink up port and the peer's down port
    ring = 2 * (DP - 1) / DP * sum(bucket_bytes()) * DP * 2
    for total in carried:
        assert math.isclose(total, ring, rel_tol=REL)
    assert gathers(plain).empty


def test_overlapped_gathers_hide_behind_the_first_forward_except_the_first_bucket():
    hidden, cluster = run(1, overlap_param_gather=True)
    exposed, _ = run(1)
    spans = hidden.trace.spans
    compute = spans[(spans["device"] == "gpu0") & (spans["category"] == "compute")]
    first = gathers(hidden)
    # Forward order: the embedding's bucket first; it is gathered before any compute can start.
    assert first["name"].iloc[0].endswith("bucket2")
    assert math.isclose(float(compute["start_s"].min()),
                        ring_all_gather_s(cluster, DP, bucket_bytes()[2]), rel_tol=REL)
    assert hidden.metrics["step_time_s"] < exposed.metrics["step_time_s"]
    # No gather after the optimizer: the step ends with it.
    optimizer_end = float(spans[spans["name"] == "optimizer step"]["end_s"].max())
    assert math.isclose(hidden.metrics["step_time_s"], optimizer_end, rel_tol=REL)


def test_unaligned_gathers_of_a_later_stage_start_when_its_first_input_arrives():
    # 1F1B (not interleaved): Megatron launches a stage's first gather in its first forward
    # pre-hook, after the activations arrived; the stage-1 gather cannot start at t = 0.
    result, _ = run(1, gpus_per_node=8, parallel={"pp": 2}, overlap_param_gather=True,
                    global_batch_size=32)
    spans = result.trace.spans
    stage1 = spans[spans["device"] == "gpu4"]
    arrival = float(stage1[stage1["category"] == "compute"]["start_s"].min())
    first_gather = gathers(result, "gpu4")["start_s"].min()
    assert first_gather > 0.0
    assert first_gather <= arrival
    assert gathers(result, "gpu0")["start_s"].min() == 0.0


def test_interleaved_gathers_start_together_on_every_stage():
    # align_param_gather (Megatron-LM's default for interleaved schedules): every stage launches
    # its gathers at the start of the step, not when its first input arrives.
    import dataclasses

    model = dataclasses.asdict(get_model("tiny"))
    model.update(num_layers=8, name="tiny8")
    result, _ = run(1, gpus_per_node=4, parallel={"dp": 2, "pp": 2}, overlap_param_gather=True,
                    schedule="interleaved", model=model, global_batch_size=16)
    for device in ("gpu0", "gpu2"):   # stage 0 and stage 1 of DP replica 0
        assert gathers(result, device)["start_s"].min() == 0.0

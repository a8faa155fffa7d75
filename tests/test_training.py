"""Training steps compiled to Programs: closed forms on idealised layouts, and consistency
between the exact (op) and the fast (layer, one replica) granularities."""

import math

import numpy as np
import pytest

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.ops import OpKind
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.training import TrainingWorkload

REL = 1e-9


def run(gpus_per_node=1, nodes=1, **workload):
    spec = {"model": "tiny", "seq_len": 128, "micro_batch_size": 2, "global_batch_size": 4,
            **workload}
    work = TrainingWorkload(kind="training", **spec)
    cluster = ClusterConfig(node="DGX-H100", nodes=nodes, gpus_per_node=gpus_per_node).build()
    work.check(cluster)
    return work.run(cluster, rng=np.random.default_rng(0), record_trace=True), cluster


def test_single_gpu_step_is_the_sum_of_its_op_times():
    result, cluster = run()
    gpu, model = cluster.devices[0], get_model("tiny")
    kw = dict(micro_batch=2, seq_len=128)
    ops = (tfm.embedding_forward(model, **kw)
           + [op for l in range(model.num_layers) for op in tfm.layer_forward(model, layer=l, **kw)]
           + tfm.lm_head_forward(model, **kw) + tfm.lm_head_backward(model, **kw)
           + [op for l in reversed(range(model.num_layers)) for op in tfm.layer_backward(model, layer=l, **kw)]
           + tfm.embedding_backward(model, **kw))
    assert not any(op.kind.is_communication for op in ops)
    per_microbatch = sum(gpu.op_time(op) for op in ops)
    optimizer = result.trace.spans.query("name == 'optimizer step'")
    expected = 2 * per_microbatch + float(optimizer["end_s"].iloc[0] - optimizer["start_s"].iloc[0])
    assert math.isclose(result.metrics["step_time_s"], expected, rel_tol=REL)


def test_mfu_is_model_flops_over_peak_times_step_time():
    result, cluster = run()
    flops = tfm.model_flops_per_token(get_model("tiny"), 128) * 4 * 128
    peak = cluster.devices[0].tensor_rate("bf16")
    assert math.isclose(result.metrics["mfu"], flops / (result.metrics["step_time_s"] * peak),
                        rel_tol=REL)


def test_layer_granularity_matches_op_granularity_for_tensor_parallelism():
    exact, _ = run(gpus_per_node=2, parallel={"tp": 2})
    fast, _ = run(gpus_per_node=2, parallel={"tp": 2}, granularity="layer")
    assert math.isclose(exact.metrics["step_time_s"], fast.metrics["step_time_s"], rel_tol=1e-9)
    assert fast.metrics["tasks"] < exact.metrics["tasks"] / 5


def test_one_replica_stands_for_all_data_parallel_replicas():
    full, _ = run(gpus_per_node=2, nodes=2, parallel={"tp": 2, "dp": 2}, global_batch_size=8)
    one, _ = run(gpus_per_node=2, nodes=2, parallel={"tp": 2, "dp": 2}, global_batch_size=8,
                 replicas="one")
    assert math.isclose(full.metrics["step_time_s"], one.metrics["step_time_s"], rel_tol=1e-9)
    assert one.metrics["devices_simulated"] == 2 and full.metrics["devices_simulated"] == 4


def test_gradient_buckets_overlap_the_backward_pass():
    # Buckets of ~one layer: all but the last bucket's reduction hide under the backward pass.
    params_per_layer = tfm.params_per_rank(get_model("tiny"), part="layer")
    kw = dict(gpus_per_node=1, nodes=2, parallel={"dp": 2}, global_batch_size=8,
              grad_bucket_params=params_per_layer)
    overlapped, _ = run(**kw)
    serial, _ = run(**kw, overlap_grad_reduce=False)
    assert overlapped.metrics["step_time_s"] < serial.metrics["step_time_s"]
    dp = overlapped.trace.spans.query("stream == 'dp' and device == 'n0.gpu0'")
    # Backward order: the LM head (smaller than a layer) fills a bucket with layer 1; layer 0
    # fills one alone; the embedding is the last, partial bucket.
    assert len(dp) == 3
    backward_end = overlapped.trace.spans.query("device == 'n0.gpu0' and category == 'compute'")["end_s"].max()
    assert dp["start_s"].min() < backward_end  # the first bucket starts during the backward


def test_tensor_parallel_collectives_appear_on_their_own_stream():
    result, _ = run(gpus_per_node=2, parallel={"tp": 2})
    spans = result.trace.spans
    tp = spans[spans["stream"] == "tp"]
    # 2 forward + 2 backward all-reduces per layer plus the embedding and loss reductions.
    per_layer = tp[tp["layer"].isin([0, 1])].groupby(["device", "microbatch"]).size()
    assert set(per_layer.tolist()) == {2 * 4}

"""Any device kind as a cluster member: node presets and inline nodes of GPUs, RDUs, systolic
cores and NPU+PIM devices run the same training, serving and collective workloads."""

from __future__ import annotations

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.experiment import expand, load_experiment
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.hardware.presets import load_gpu
from clustersim.workloads.collective_bench import CollectiveBench
from clustersim.workloads.serving.workload import ServingWorkload
from clustersim.workloads.training import TrainingWorkload

SMALL = {"name": "small", "num_layers": 2, "hidden_size": 512, "num_heads": 8,
         "num_kv_heads": 8, "ffn_hidden_size": 2048, "vocab_size": 8192, "max_seq_len": 2048}


def rel(x):
    return pytest.approx(x, rel=1e-9)


def training(tp: int, dp: int = 1, **kw) -> TrainingWorkload:
    return TrainingWorkload(model=SMALL, seq_len=256, global_batch_size=dp,
                            parallel={"tp": tp, "dp": dp}, **kw)


def gpu_cluster_as_before() -> Cluster:
    """DGX-H100 built the way ClusterConfig built it before nodes became device-agnostic."""
    gpu = load_gpu("H100-SXM5-80GB", host_memory_bytes=2 * 2**40 / 8,
                   host_link_bandwidth_bytes_per_s=64e9)
    nodes = NodeFabric(num_nodes=1, gpus_per_node=8, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.5e-6, nic_bandwidth_bytes_per_s=50e9,
                       nic_latency_s=2.7e-6, nics_per_node=8)
    return Cluster(devices=[gpu] * 8, names=[f"gpu{i}" for i in range(8)], links=nodes.links(),
                   router=nodes, gpus_per_node=8, intra_node_step_latency_s=1e-6,
                   inter_node_step_latency_s=5e-6)


def step_time(cluster: Cluster, workload=None) -> float:
    workload = workload or training(tp=8)
    return workload.run(cluster, rng=np.random.default_rng(0), record_trace=False) \
        .metrics["step_time_s"]


def test_a_gpu_node_through_the_new_schema_gives_the_same_step_as_before():
    before = step_time(gpu_cluster_as_before())
    assert step_time(ClusterConfig(node="DGX-H100").build()) == rel(before)
    inline = ClusterConfig(node={"device": "h100", "count": 8, "link_bandwidth": "450 GB/s",
                                 "link_latency": "0.5 us", "host_memory": "2 TiB",
                                 "pcie_bandwidth": "64 GB/s"})
    assert step_time(inline.build()) == rel(before)
    assert inline.build().names == [f"gpu{i}" for i in range(8)]


@pytest.mark.parametrize("node, kind", [("SN40L-16", "rdu"), ("TPU-v4-Board", "systolic"),
                                        ("NeuPIMs-8", "npu_pim"),
                                        ("DGX-A100-HBM-PIM", "npu_pim")])
def test_training_serving_and_collectives_run_unchanged_on_accelerator_nodes(node, kind):
    cluster = ClusterConfig(node=node).build()
    assert cluster.description["device_kind"] == kind
    n = cluster.num_devices
    train = training(tp=8, dp=n // 8)
    train.check(cluster)
    metrics = train.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics
    assert metrics["step_time_s"] > 0 and 0 < metrics["mfu"] <= 1
    serve = ServingWorkload(model=SMALL, parallel={"tp": 8}, requests={"count": 3})
    serve.check(cluster)
    served = serve.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics
    assert served["requests"] == 3
    bench = CollectiveBench(collective="all_reduce", size="4 MiB")
    assert bench.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics


def test_capacities_are_never_exceeded_and_a_model_that_fits_no_tier_is_refused():
    cluster = ClusterConfig(node="TPU-v4-Board").build()     # 16 GiB per core
    big = TrainingWorkload(model="llama2-7b", seq_len=512, global_batch_size=8,
                           parallel={"tp": 1, "dp": 8})
    with pytest.raises(ConfigError) as err:                  # before any simulation
        big.check(cluster)
    assert err.value.key == "workload.parallel" and "fits no tier" in str(err.value)
    assert "'dram', which holds 16.0 GiB" in str(err.value)
    with pytest.raises(ConfigError, match="fits no tier"):   # and if run anyway (no spill)
        big.run(cluster, rng=np.random.default_rng(0), record_trace=False)
    run = training(tp=8).run(cluster, rng=np.random.default_rng(0), record_trace=False)
    capacity = cluster.devices[0].tier_for("weights").capacity_bytes
    assert 0 < run.metrics["peak_memory_gib"] * 2**30 <= capacity


def test_bad_input_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        ClusterConfig(device="TPU-v9").build()
    message = str(err.value)
    assert err.value.key == "cluster.device"
    assert "unknown device preset 'TPU-v9'" in message and "SN40L" in message
    assert "\n" not in message
    typo = {"name": "x", "cluster": {"node": {"device": "SN40L", "count": 2, "link_bandwith": 1e9}},
            "workload": {"kind": "collective"}}
    with pytest.raises(ConfigError) as err:
        expand(typo)
    assert err.value.key == "cluster.node" and "did you mean 'link_bandwidth'" in str(err.value)
    raw = {"name": "x", "cluster": {"node": "SN40L-16"},
           "workload": {"kind": "training", "model": SMALL, "seq_len": 128,
                        "global_batch_size": 2, "dtype": "fp8", "parallel": {"tp": 8, "dp": 2}}}
    run = expand(raw)[0]
    with pytest.raises(ConfigError) as err:
        run.workload.check(run.config.cluster.build())
    assert err.value.key == "workload.dtype" and "no fp8 peak" in str(err.value)
    assert "['bf16']" in str(err.value)


def test_an_experiment_file_with_a_device_kind_loads(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\ncluster: {node: {device: TPU-v1, count: 4, link_bandwidth: 10 GB/s}}\n"
                    "workload: {kind: collective, collective: all_reduce, size: 1 MiB}\n")
    runs = load_experiment(path)
    assert runs[0].config.cluster.build().names == ["tpu0", "tpu1", "tpu2", "tpu3"]


def test_a_bad_device_override_names_cluster_gpu_overrides():
    """Regression: a bad NPU+PIM dispatch was reported under the key 'cluster'."""
    with pytest.raises(ConfigError, match=r"dispatch must be one of \['npu', 'gemv', "
                                          r"'attention', 'op_b'\], got 'everything'") as err:
        ClusterConfig(node="NeuPIMs-8", gpu_overrides={"dispatch": "everything"}).build()
    assert err.value.key == "cluster.gpu_overrides"
    with pytest.raises(ConfigError, match="unknown override 'foo'") as err:
        ClusterConfig(node="SN40L-16", gpu_overrides={"foo": 1}).build()
    assert err.value.key == "cluster.gpu_overrides"


def test_a_kv_cache_dtype_the_device_lacks_is_refused_before_the_run():
    """Regression: an fp32 KV cache on PIM / RDU / TPU failed at run time in attention."""
    for node in ({"device": "HBM-PIM", "count": 1, "link_bandwidth": "10 GB/s"},
                 {"device": "SN40L", "count": 1, "link_bandwidth": "10 GB/s"}):
        cluster = ClusterConfig(node=node).build()
        serve = ServingWorkload(model="tiny", kv_cache={"dtype": "fp32"}, requests={"count": 1})
        with pytest.raises(ConfigError, match="fp32.*set kv_cache.dtype to a dtype") as err:
            serve.check(cluster)
        assert err.value.key == "workload.kv_cache.dtype"
    gpu = ClusterConfig(node="DGX-H100", gpus_per_node=1).build()     # GPUs take fp32 KV
    ServingWorkload(model="tiny", kv_cache={"dtype": "fp32"}, requests={"count": 1}).check(gpu)


def test_inline_host_memory_on_a_device_without_a_host_tier_is_refused():
    """Regression: host_memory on an inline PIM / RDU node was silently ignored, and the coe
    workload then told the user to 'use a node with host memory'."""
    for device in ("HBM-PIM", "SN40L", "TPU-v4-Core"):
        node = {"device": device, "count": 2, "link_bandwidth": "10 GB/s",
                "host_memory": "512 GiB", "pcie_bandwidth": "32 GB/s"}
        with pytest.raises(ConfigError, match="cannot use the node's host memory") as err:
            ClusterConfig(node=node).build()
        assert err.value.key == "cluster.node.host_memory"
    for device in ("A100-SXM4-80GB", "A100-HBM-PIM"):          # GPU hosts get the tier
        node = {"device": device, "count": 2, "link_bandwidth": "10 GB/s",
                "host_memory": "512 GiB", "pcie_bandwidth": "32 GB/s"}
        host = ClusterConfig(node=node).build().devices[0].tier_for("offload")
        assert host.name == "host" and host.capacity_bytes == pytest.approx(256 * 2**30, rel=1e-9)

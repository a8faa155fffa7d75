"""Spilling training state to the offload tier (cluster.spill): ZeRO-Offload order, capacities
respected, never faster than the same run with enough memory, refused by default."""

from __future__ import annotations

import pytest

from clustersim.errors import ConfigError
from clustersim.experiment import run_experiment
from clustersim.hardware.presets import load_gpu
from clustersim.hardware.spill import SpilledDevice, spill_penalty_s
from clustersim.ops import OpKind, elementwise, matmul

MB = 1e6


def _spec(tmp_path, name: str, cluster: str) -> object:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nseed: 0\n"
        f"cluster: {{node: DGX-A100, gpus_per_node: 1, {cluster}}}\n"
        "workload: {kind: training, model: tiny, seq_len: 32, micro_batch_size: 1,\n"
        "           global_batch_size: 1, parallel: {tp: 1}}\n"
        "output: {trace: false, plots: false}\n")
    return path


def test_spilled_optimizer_fits_and_is_never_faster_than_enough_memory(tmp_path):
    # tiny: 106,816 parameters x 18 B = 1.92 MB of state; 1 MB of HBM holds the weights and
    # gradients (0.64 MB) and the activations, not Adam's 1.28 MB of fp32 states.
    small = "gpu_overrides: {hbm_capacity_bytes: 1 MB}"
    with pytest.raises(ConfigError, match=r"set cluster\.spill: true to keep the optimizer "
                                          r"states on its 'host' tier") as err:
        run_experiment(_spec(tmp_path, "refused", small), out=tmp_path / "r")
    assert err.value.key == "workload.parallel"
    spilled = run_experiment(_spec(tmp_path, "spilled", small + ", spill: true"),
                             out=tmp_path / "s").iloc[0]
    roomy = run_experiment(_spec(tmp_path, "roomy", "spill: true"), out=tmp_path / "b").iloc[0]
    assert spilled["status"] == roomy["status"] == "ok"
    assert (spilled["spilled"], roomy["spilled"]) == ("optimizer", "none")
    assert spilled["peak_memory_gib"] * 2**30 <= 1 * MB            # HBM never exceeded
    assert spilled["step_time_s"] > roomy["step_time_s"]
    # the difference is the Adam step's spilled traffic: read + write of 12 B/param over PCIe
    gpu = load_gpu("A100-SXM4-80GB", host_memory_bytes=2**40, host_link_bandwidth_bytes_per_s=32e9)
    extra = spill_penalty_s(gpu, 2 * 12 * 106816)
    assert spilled["step_time_s"] - roomy["step_time_s"] == pytest.approx(extra, rel=1e-6)


def test_gradients_spill_after_the_optimizer_and_weights_never_do(tmp_path):
    # 0.5 MB: weights + gradients (0.64 MB) no longer fit, weights (0.21 MB) do
    both = run_experiment(_spec(tmp_path, "both", "gpu_overrides: {hbm_capacity_bytes: 0.5 MB}, "
                                "spill: true"), out=tmp_path / "g").iloc[0]
    assert both["status"] == "ok" and both["spilled"] == "optimizer+gradients"
    assert both["peak_memory_gib"] * 2**30 <= 0.5 * MB
    with pytest.raises(ConfigError, match="does not fit even with spilling: the weights alone"):
        run_experiment(_spec(tmp_path, "weights", "gpu_overrides: {hbm_capacity_bytes: 0.1 MB}, "
                             "spill: true"), out=tmp_path / "w")


def test_spill_needs_an_offload_tier(tmp_path):
    path = tmp_path / "tpu.yaml"
    path.write_text(
        "name: tpu\nseed: 0\n"
        "cluster: {node: {device: TPU-v4-MXU, count: 1, link_bandwidth: 100 GB/s}, spill: true}\n"
        "workload: {kind: training, model: llama2-7b, seq_len: 64, global_batch_size: 1}\n")
    with pytest.raises(ConfigError, match="TPU-v4-MXU has no offload tier to spill to") as err:
        run_experiment(path, out=tmp_path / "o")
    assert err.value.key == "cluster.spill"


def test_spilled_device_only_slows_the_ops_that_touch_spilled_state():
    gpu = load_gpu("H100-SXM5-80GB", host_memory_bytes=2**40, host_link_bandwidth_bytes_per_s=64e9)
    wrapped = SpilledDevice(gpu, traffic_ratio=0.75)
    adam = elementwise(1000, inputs=4, outputs=4, dtype="fp32", kind=OpKind.OPTIMIZER)
    gemm = matmul(1, 256, 256, dtype="bf16")
    assert wrapped.op_time(gemm) == gpu.op_time(gemm)
    extra = 0.75 * adam.bytes_total * (1 / 64e9 - 1 / gpu.hbm_bandwidth_bytes_per_s)
    assert wrapped.op_time(adam) == pytest.approx(gpu.op_time(adam) + extra, rel=1e-9)
    assert wrapped.name == gpu.name and wrapped.memory_tiers == gpu.memory_tiers
    with pytest.raises(ValueError, match="has no offload tier"):
        SpilledDevice(load_gpu("H100-SXM5-80GB"), traffic_ratio=1.0)


def test_npu_pim_node_gets_the_host_tier_and_spills_to_it():
    """Regression: DGX-A100-HBM-PIM's host DDR was ignored (only plain GPUs got it), so its
    devices had no offload tier for KV swap or spilling."""
    import numpy as np

    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.workloads.training import TrainingWorkload

    cluster = ClusterConfig(node="DGX-A100-HBM-PIM", gpus_per_node=2, spill=True).build()
    device = cluster.devices[0]
    host = device.tier_for("offload")
    assert host.name == "host" and host.capacity_bytes == pytest.approx(2 * 2**40 / 2, rel=1e-9)
    assert host.bandwidth_bytes_per_s == pytest.approx(32e9, rel=1e-9)
    # LLaMA-2-7B at tp=2: 56 GiB of state on 30 GiB of HBM-PIM; Adam's 37.6 GiB go to the host
    train = TrainingWorkload(model="llama2-7b", seq_len=64, global_batch_size=1,
                             parallel={"tp": 2}, granularity="layer")
    train.check(cluster)
    metrics = train.run(cluster, rng=np.random.default_rng(0), record_trace=False).metrics
    assert metrics["spilled"] == "optimizer"
    assert metrics["peak_memory_gib"] * 2**30 <= device.tier_for("weights").capacity_bytes


@pytest.mark.parametrize("dp, zero_stage, kinds", [(1, 0, ("optimizer",)),
                                                   (4, 1, ("optimizer",)),
                                                   (4, 1, ("optimizer", "gradients"))])
def test_the_adam_step_pays_twice_the_spilled_bytes_of_its_parameters(dp, zero_stage, kinds):
    """Closed form: with ZeRO-1 the Adam op covers params / dp elements, but the spilled
    gradients are all of the rank's params; either way its extra time is that of moving
    2 x (spilled bytes per param) x params over the offload tier instead of HBM."""
    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.workloads.tier_fit import TrainingSpill, state_bytes_per_param

    cluster = ClusterConfig(node="DGX-H100", gpus_per_node=1).build()
    plan = TrainingSpill(kinds, state_bytes_per_param(dp=dp, zero_stage=zero_stage), dp,
                         zero_stage)
    spilled = plan.apply(cluster).devices[0]
    params = 1_000_000
    shard = params // (dp if zero_stage else 1)
    adam = elementwise(shard, inputs=4, outputs=4, flops_per_element=10.0, dtype="fp32",
                       kind=OpKind.OPTIMIZER)
    base = cluster.devices[0]
    expected = spill_penalty_s(base, 2 * plan.spilled_bytes_per_param * params)
    assert spilled.op_time(adam) - base.op_time(adam) == pytest.approx(expected, rel=1e-9)
    placed = plan.place(base, params)        # bytes are conserved across the two tiers
    assert sum(placed.values()) == pytest.approx(
        sum(state_bytes_per_param(dp=dp, zero_stage=zero_stage).values()) * params, rel=1e-12)
    assert placed["host"] == pytest.approx(plan.spilled_bytes_per_param * params, rel=1e-12)


def test_rdu_adam_streams_from_hbm_and_spilling_is_charged_once():
    """Regression: the RDU timed any op whose bytes (reads + writes) exceeded HBM from DDR, so
    Adam on a 13B model ran at DDR speed even when its state fitted HBM, and a spilled step paid
    DDR twice (the RDU's own guess plus the spill)."""
    from clustersim.hardware.accelerator_presets import load_rdu

    rdu = load_rdu("SN40L")
    adam = elementwise(3_000_000_000, inputs=4, outputs=4, flops_per_element=10.0,
                       dtype="fp32", kind=OpKind.OPTIMIZER)           # 96 GB > 64 GiB of HBM
    assert adam.bytes_total > rdu.tier_for("weights").capacity_bytes
    assert rdu.timing(adam).tier == "hbm"
    spilled = SpilledDevice(rdu, traffic_ratio=0.5)
    assert spilled.op_time(adam) - rdu.op_time(adam) == pytest.approx(
        0.5 * adam.bytes_total * (1 / 100e9 - 1 / 1.6e12), rel=1e-9)


def test_spill_plans_fit_the_default_tier_and_spill_no_more_kinds_than_needed():
    """Hypothesis over model size, layout and HBM size: the state left on the default tier fits
    it, the plan spills the fewest kinds in ZeRO-Offload order, and bytes are conserved."""
    from hypothesis import given, settings, strategies as st

    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.workloads.models import get_model
    from clustersim.workloads.tier_fit import SPILL_ORDER, plan_training_spill

    model = get_model("llama2-7b")

    @settings(max_examples=25, deadline=None)
    @given(tp=st.sampled_from([1, 2, 4, 8]), dp=st.sampled_from([1, 2, 8]),
           zero=st.sampled_from([0, 1]), hbm_gib=st.floats(2.0, 200.0))
    def check(tp, dp, zero, hbm_gib):
        cluster = ClusterConfig(node="DGX-H100", gpus_per_node=1, spill=True,
                                gpu_overrides={"hbm_capacity_bytes": hbm_gib * 2**30}).build()
        try:
            plan = plan_training_spill(model, cluster, tp=tp, pp=1, dp=dp, zero_stage=zero)
        except ConfigError as exc:                     # only when the weights alone overflow
            assert "weights alone" in str(exc)
            assert 2.0 * model.params_total / tp > hbm_gib * 2**30
            return
        device = cluster.devices[0]
        params = model.params_total / tp
        placed = plan.place(device, params)
        assert placed["hbm"] <= device.tier_for("weights").capacity_bytes * (1 + 1e-12)
        assert plan.kinds == SPILL_ORDER[:len(plan.kinds)]
        if plan.kinds:                                 # one kind fewer would not have fitted
            fewer = sum(plan.per_param[k] for k in plan.kinds[:-1]) * params
            total = sum(plan.per_param.values()) * params
            assert total - fewer > device.tier_for("weights").capacity_bytes
        assert sum(placed.values()) == pytest.approx(sum(plan.per_param.values()) * params,
                                                     rel=1e-12)

    check()

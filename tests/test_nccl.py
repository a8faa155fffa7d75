"""NCCL's tuning model: its own formula for chosen (algorithm, protocol) pairs, the pair it
picks, the fit to measured times, and the cluster hook that times intra-node collectives."""

import math

import numpy as np
import pytest

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.hardware.network.nccl import NcclFit, NcclGraph, NcclModel
from clustersim.validate.nccl_fit import CollectiveSample, fit_nccl, predict_s
from clustersim.workloads.training_step import idle_collective_time_s

REL = 1e-9
H100 = NcclGraph(arch="hopper", ranks=8, channels=16, bw_intra_gbps=20.0)


def test_ring_simple_all_reduce_is_nccls_formula():
    m = NcclModel(H100)
    # busBw = 16 x 20 GB/s, x nRanks / nsteps = 8 / 14; latency = base 8.4 + 14 steps x 3.4 us
    bw, lat = 320.0 * 8 / 14, 8.4 + 14 * 3.4
    size = 64 * 2**20
    assert math.isclose(m.nccl_time_us("all_reduce", "ring", "Simple", size),
                        lat + size / (1000 * bw), rel_tol=REL)


def test_tree_ll128_all_reduce_is_nccls_formula():
    m = NcclModel(H100)
    # 0.92 x 320 (under 16 x 38.7), then LL128 in a node x 7/9 (under 16 x 36.7), tree ratio 1/2;
    # latency = base 14.0 + 2 (8 - 1) x 1.25 us; tree correction for 2^20 B: log2(2^20/64) = 14 -> .6
    bw = min(min(320 * 0.92, 16 * 38.7) * 7 / 9, 16 * 36.7) * 0.5 * 0.6
    size = 2**20
    assert math.isclose(m.nccl_time_us("all_reduce", "tree", "LL128", size),
                        14.0 + 2 * 7 * 1.25 + size / (1000 * bw), rel_tol=REL)


def test_nvls_all_reduce_is_nccls_formula():
    m = NcclModel(NcclGraph(arch="hopper", ranks=8, channels=16, bw_intra_gbps=20.0,
                            nvls_channels=16, nvls_bw_intra_gbps=40.0))
    bw = 16 * (40.0 * 0.85 * 15 / 16 * 2.0) * 8 / 14
    size = 2**30
    assert math.isclose(m.nccl_time_us("all_reduce", "nvls", "Simple", size),
                        25.0 + size / (1000 * bw), rel_tol=REL)
    assert m.nccl_time_us("all_reduce", "nvls", "LL", size) is None   # NVLS is Simple only


def test_nccl_picks_low_latency_protocols_for_small_and_simple_for_large_messages():
    m = NcclModel(H100)
    algo, proto, t = m.choose("all_reduce", 2048)
    assert proto == "LL" and t == min(m.nccl_time_us("all_reduce", a, p, 2048) or math.inf
                                      for a in ("ring", "tree") for p in ("LL", "LL128", "Simple"))
    assert m.choose("all_reduce", 2**30)[1] == "Simple"
    assert m.choose("all_gather", 2**30)[0] == "ring"        # tree has no all-gather


def test_fit_recovers_the_graph_and_protocol_scales_from_synthetic_times():
    truth = NcclModel(NcclGraph(arch="ampere", ranks=4, channels=8, bw_intra_gbps=18.0),
                      NcclFit((2.0, 1.0, 1.5), (1.0, 1.0, 0.8)))
    sizes = [2 ** e for e in range(11, 31)]
    samples = [CollectiveSample("all_reduce", 4, s, truth.time_s("all_reduce", s)) for s in sizes]
    fitted = fit_nccl("ampere", 4, samples)
    assert np.allclose(predict_s(fitted, samples), [s.time_s for s in samples], rtol=1e-3)


def test_a_cluster_selecting_nccl_times_intra_node_collectives_with_it():
    cluster = ClusterConfig(node="DGX-H100", nodes=1, collectives="nccl").build()
    model = cluster.collective_model.model(8)
    for size in (4096.0, 256 * 2**20):
        expected = model.time_s("all_reduce", size)
        measured = idle_collective_time_s(cluster, [("all_reduce", list(range(8)), size)])
        assert math.isclose(measured, expected, rel_tol=1e-6)
    flows = ClusterConfig(node="DGX-H100", nodes=1).build()
    assert flows.collective_model is None


def test_an_on_device_calibrations_all_reduce_feeds_the_nccl_model():
    from clustersim.hardware.calibration import Profile
    from clustersim.validate.nccl_fit import fit_on_device_all_reduce

    truth = NcclModel(NcclGraph(arch="ampere", ranks=8, channels=8, bw_intra_gbps=18.0),
                      NcclFit((1.0, 1.0, 2.0), (1.0, 1.0, 1.3)))
    sizes = [2**20 * s for s in (1, 4, 16, 64, 256, 1024)]
    record = {"gpus": 8, "backend": "nccl",
              "sizes": [{"bytes": s, "median_s": truth.time_s("all_reduce", s)} for s in sizes]}
    section = fit_on_device_all_reduce(record, "ampere")
    profile = Profile("A100-SXM4-80GB", "cuda", "A100-SXM4-80GB", {}, (),
                      measurements={"nccl": section})
    fitted = profile.nccl_models[8]
    assert np.allclose([fitted.time_s("all_reduce", s) for s in sizes],
                       [truth.time_s("all_reduce", s) for s in sizes], rtol=1e-2)
    assert fit_on_device_all_reduce({"skipped": "no GPUs"}, "ampere") is None

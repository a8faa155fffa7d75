"""Networks, routing and collectives: closed forms on idle fabrics, conservation, routing
policies against the ideal multipath reference, oversubscription, seeds."""

import math

import numpy as np
import pytest

from clustersim.hardware.network import NodeFabric, build_network, collective_steps
from clustersim.hardware.network.routing import NetworkRouter, PacketSpraying
from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import PairArray
from clustersim.sim.program import FlowStep, Program
from clustersim.workloads.collective_bench import max_link_congestion

REL = 1e-9
NIC = 50e9          # 400 Gb/s
NVLINK = 450e9


def nodes(count, gpus=1, nic_latency=0.0, nvlink_latency=0.0, nics=None):
    return NodeFabric(num_nodes=count, gpus_per_node=gpus, nvlink_bandwidth_bytes_per_s=NVLINK,
                      nvlink_latency_s=nvlink_latency, nic_bandwidth_bytes_per_s=NIC,
                      nic_latency_s=nic_latency, nics_per_node=nics)


def leaf_spine(count, gpus=1, seed=0, **network):
    config = {"kind": "leaf_spine", "hosts_per_leaf": 4, "spines": 4, **network}
    return build_network(config, nodes=nodes(count, gpus), rng=np.random.default_rng(seed))


def simulate(links, router, steps, devices, replay=True):
    program = Program()
    ids = [program.device(f"d{i}") for i in range(devices)]
    members = sorted({d for step in steps for pair in step.pairs for d in pair})
    program.collective("c", [(ids[d], "comm", ()) for d in members], steps)
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=False)
    sim.fabric.replay_repeats = replay
    sim.run_program(program)
    return sim


def permutation_step(count, seed, size=1e9):
    perm = np.random.default_rng(seed).permutation(count)
    return FlowStep(PairArray(np.arange(count), perm), size)


# -- closed forms on idle fabrics -------------------------------------------------------------
@pytest.mark.parametrize("replay", [True, False])
def test_ring_all_reduce_on_an_idle_non_blocking_fabric_matches_the_closed_form(replay):
    n, size, alpha, path_latency = 8, 1e9, 5e-6, 2e-6
    fabric = nodes(n, nic_latency=path_latency)
    steps = collective_steps("all_reduce", list(range(n)), size, algorithm="ring",
                             step_latency_s=alpha)
    sim = simulate(fabric.links(), fabric, steps, n, replay=replay)
    expected = 2 * (n - 1) * (alpha + path_latency) + 2 * (n - 1) / n * size / NIC
    assert math.isclose(sim.env.now, expected, rel_tol=REL)
    if replay:  # 14 identical steps on an idle fabric: two solved, the rest replayed
        assert sim.fabric.replayed_coflows == 2 * (n - 1) - 2


def test_ring_over_a_sprayed_leaf_spine_is_as_fast_as_non_blocking():
    n, size = 16, 1e9
    links, router = leaf_spine(n, routing="spray")
    sim = simulate(links, router, collective_steps("all_reduce", list(range(n)), size), n)
    assert math.isclose(sim.env.now, 2 * (n - 1) / n * size / NIC, rel_tol=REL)


def test_halving_doubling_all_reduce_matches_rabenseifner():
    n, size, alpha = 8, 1e9, 3e-6
    fabric = nodes(n)
    steps = collective_steps("all_reduce", list(range(n)), size, algorithm="halving_doubling",
                             step_latency_s=alpha)
    sim = simulate(fabric.links(), fabric, steps, n)
    assert math.isclose(sim.env.now, 2 * math.log2(n) * alpha + 2 * (n - 1) / n * size / NIC,
                         rel_tol=REL)


def test_double_binary_tree_has_logarithmic_latency_and_moves_2_n_minus_1_halves():
    n, alpha = 16, 1e-5
    fabric = nodes(n)
    ids = list(range(n))
    tree = simulate(fabric.links(), fabric,
                    collective_steps("all_reduce", ids, 1.0, algorithm="tree", step_latency_s=alpha), n)
    ring = simulate(fabric.links(), fabric,
                    collective_steps("all_reduce", ids, 1.0, algorithm="ring", step_latency_s=alpha), n)
    depth = 4  # in-order binary tree over 16 ranks
    assert tree.env.now == pytest.approx(2 * depth * alpha, rel=1e-3)
    assert ring.env.now == pytest.approx(2 * (n - 1) * alpha, rel=1e-3)
    size = 64e6
    sim = simulate(fabric.links(), fabric,
                   collective_steps("all_reduce", ids, size, algorithm="tree"), n)
    # every edge of both trees carries its half up and down: 2 trees x (n-1) edges x 2 x S/2
    assert math.isclose(sim.fabric.bytes_carried.sum() / 2, 2 * (n - 1) * size, rel_tol=REL)


def test_pairwise_all_to_all_on_an_idle_fabric():
    n, size, alpha = 6, 6e8, 2e-6
    fabric = nodes(n)
    steps = collective_steps("all_to_all", list(range(n)), size, step_latency_s=alpha)
    sim = simulate(fabric.links(), fabric, steps, n)
    assert math.isclose(sim.env.now, (n - 1) * (alpha + size / n / NIC), rel_tol=REL)


def test_hierarchical_all_reduce_is_nvlink_phases_plus_a_rail_ring():
    count, gpus, size, intra, inter = 4, 8, 1e9, 1e-6, 5e-6
    fabric = nodes(count, gpus)
    group = list(range(count * gpus))
    steps = collective_steps("all_reduce", group, size, gpus_per_node=gpus, step_latency_s=inter,
                             intra_node_step_latency_s=intra)
    sim = simulate(fabric.links(), fabric, steps, count * gpus)
    g, n = gpus, count
    expected = 2 * (g - 1) * (intra + size / g / NVLINK) \
        + 2 * (n - 1) * (inter + size / g / n / NIC)
    assert math.isclose(sim.env.now, expected, rel_tol=REL)
    # every NIC carries the rail ring's 2(N-1)/N of the S/g shard
    nic_up = sim.fabric.bytes_carried[2 * count * gpus::2]
    assert np.allclose(nic_up, 2 * (n - 1) / n * size / g, rtol=REL)


def test_hierarchical_all_to_all_sends_what_the_flat_exchange_sends_over_the_network():
    count, gpus, size = 4, 4, 8e8
    fabric = nodes(count, gpus)
    group = list(range(count * gpus))
    flat = simulate(fabric.links(), fabric,
                    collective_steps("all_to_all", group, size, algorithm="pairwise"), count * gpus)
    hier = simulate(fabric.links(), fabric,
                    collective_steps("all_to_all", group, size, gpus_per_node=gpus), count * gpus)
    nic = slice(2 * count * gpus, None)
    assert math.isclose(hier.fabric.bytes_carried[nic].sum(), flat.fabric.bytes_carried[nic].sum(),
                        rel_tol=REL)
    assert hier.env.now < flat.env.now


# -- conservation, planes, topologies ---------------------------------------------------------
def test_bytes_are_conserved_across_tiers_of_a_leaf_spine():
    count = 16
    links, router = leaf_spine(count, gpus=4, routing="split:3")
    group = list(range(count * 4))
    sim = simulate(links, router, collective_steps("all_to_all", group, 4e8, gpus_per_node=4),
                   count * 4)
    carried = sim.fabric.bytes_carried
    by = {}
    for link, value in zip(links, carried):
        # NIC and NVLink links end in .up/.down; leaf_spine ones are leafL.spineS (up) or
        # spineS.leafL (down)
        direction = "up" if link.name.endswith(".up") or link.name.startswith("leaf") else "down"
        by[link.tier, direction] = by.get((link.tier, direction), 0.0) + value
    assert math.isclose(by["nic", "up"], by["nic", "down"], rel_tol=REL)
    assert math.isclose(by["nvlink", "up"], by["nvlink", "down"], rel_tol=REL)
    assert math.isclose(by["leaf_spine", "up"], by["leaf_spine", "down"], rel_tol=REL)
    # what leaves a host is what the all-to-all sends to other nodes: (N-1)/N of S per GPU
    assert math.isclose(by["nic", "up"], count * 4 * 4e8 * (count - 1) / count, rel_tol=REL)


def test_ecmp_collisions_congest_where_spraying_and_the_ideal_reference_do_not():
    count = 32
    results = {}
    for routing in ("ecmp", "spray", "ideal", "adaptive"):
        links, router = leaf_spine(count, routing=routing, seed=1)
        steps = [permutation_step(count, seed) for seed in range(6)]
        sim = simulate(links, router, steps, count)
        results[routing] = (max_link_congestion(sim.fabric), sim.env.now)
    # per-link spraying (no bundles) gives the same as the bundled form
    links, router = leaf_spine(count, routing="spray", seed=1)
    per_link = NetworkRouter(router.network, [PacketSpraying(bundled=False)])
    sim = simulate(links, per_link, [permutation_step(count, seed) for seed in range(6)], count)
    assert max_link_congestion(sim.fabric) == pytest.approx(results["spray"][0], rel=REL)
    assert sim.env.now == pytest.approx(results["spray"][1], rel=REL)
    assert results["spray"][0] == pytest.approx(results["ideal"][0], rel=REL)
    assert results["spray"][1] == pytest.approx(results["ideal"][1], rel=REL)
    assert results["ecmp"][0] >= 2 and results["ecmp"][1] > results["spray"][1]
    assert results["adaptive"][0] < results["ecmp"][0]


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_oversubscription_divides_cross_leaf_bandwidth(ratio):
    # 8 hosts on 2 leaves; every host of leaf 0 sends to a host of leaf 1 and back.
    links, router = leaf_spine(8, routing="spray", oversubscription=ratio, spines=1)
    step = FlowStep(PairArray([0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3]), 1e9)
    sim = simulate(links, router, [step], 8)
    assert math.isclose(sim.env.now, ratio * 1e9 / NIC, rel_tol=REL)


def test_ecmp_is_deterministic_per_seed_and_on_average_no_faster_than_spraying():
    count = 32
    steps = [permutation_step(count, seed) for seed in range(3)]

    def time(routing, seed):
        links, router = leaf_spine(count, routing=routing, seed=seed)
        return simulate(links, router, steps, count).env.now

    assert time("ecmp", 7) == time("ecmp", 7)
    ecmp = [time("ecmp", seed) for seed in range(20)]
    assert len(set(ecmp)) > 1
    assert np.mean(ecmp) >= time("spray", 0)
    split = [time("split:8", seed) for seed in range(20)]
    assert np.mean(ecmp) > np.mean(split) >= time("spray", 0) * (1 - REL)


def test_rail_optimised_rail_traffic_never_reaches_a_spine():
    count, gpus = 8, 4
    links, router = leaf_spine(count, gpus, rail_optimized=True, hosts_per_leaf=8, spines=2)
    group = list(range(count * gpus))
    sim = simulate(links, router, collective_steps("all_reduce", group, 1e9, gpus_per_node=gpus),
                   count * gpus)
    spine = [i for i, link in enumerate(links) if link.tier == "leaf_spine"]
    assert sim.fabric.bytes_carried[spine].sum() == 0
    assert router.network.planes[0].num_leaves == gpus


def test_fat_tree_cross_pod_traffic_crosses_the_cores_and_their_oversubscription():
    config = {"kind": "fat_tree", "hosts_per_leaf": 2, "leaves_per_pod": 2, "spines": 2,
              "cores_per_spine": 2, "routing": "spray", "core_oversubscription": 2}
    links, router = build_network(config, nodes=nodes(8))
    # pod 0 = hosts 0-3, pod 1 = hosts 4-7: all cross-pod, core tier at 2:1
    step = FlowStep(PairArray(range(8), [4, 5, 6, 7, 0, 1, 2, 3]), 1e9)
    sim = simulate(links, router, [step], 8)
    assert math.isclose(sim.env.now, 2 * 1e9 / NIC, rel_tol=REL)
    core = [i for i, link in enumerate(links) if link.tier == "spine_core"]
    assert math.isclose(sim.fabric.bytes_carried[core].sum(), 2 * 8e9, rel_tol=REL)


def test_heterogeneous_nics_route_each_pair_over_the_first_shared_plane():
    # Nodes 0-1 have InfiniBand, 2-3 RoCE at half the rate; all four share slow Ethernet.
    config = {"kind": "non_blocking", "planes": [
        {"name": "ib", "nic": "infiniband", "nodes": "0-1"},
        {"name": "roce", "nic": "roce", "nodes": "2-3", "nic_bandwidth": "200 Gb/s"},
        {"name": "eth", "nic": "ethernet", "nics_per_node": 1, "nic_bandwidth": "100 Gb/s",
         "nic_latency": "10 us"}]}
    links, router = build_network(config, nodes=nodes(4, gpus=2))
    net = router.network
    assert [net.nic_kind_of(0, 1), net.nic_kind_of(2, 3), net.nic_kind_of(1, 2)] == \
        ["infiniband", "roce", "ethernet"]

    def one(src, dst):
        return simulate(links, router, [FlowStep(((src, dst),), 1e9)], 8).env.now

    assert math.isclose(one(0, 2), 1e9 / NIC, rel_tol=REL)                     # IB, node 0 -> 1
    assert math.isclose(one(4, 6), 1e9 / 25e9, rel_tol=REL)                    # RoCE 200 Gb/s
    assert math.isclose(one(0, 4), 10e-6 + 1e9 / 12.5e9, rel_tol=REL)          # Ethernet

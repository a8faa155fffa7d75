"""Expert placement strategies as pure functions, and all-to-allv flow steps."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.hardware.network.all_to_all import (all_to_allv_steps, hierarchical_matrices,
                                                    layered_steps)
from clustersim.schedules.expert_placement import (affinity_aware, load_balanced,
                                                   placement_cost, replicate_hot, round_robin)
from clustersim.workloads.moe.routing import (RoutingSpec, affinity_counts, expert_counts,
                                              routing_model)


def _routing(e=8, layers=3, tokens=3000, seed=0, **kw):
    rng = np.random.default_rng(seed)
    choices = routing_model(RoutingSpec(e, 2, **kw), layers, rng).sample(tokens, rng)
    return expert_counts(choices, e), affinity_counts(choices, e)


def test_uniform_loads_balanced_placement_is_even():
    loads = np.full((2, 8), 100.0)
    for placement in (round_robin(2, 8, 4), load_balanced(loads, 4)):
        per_device = placement.device_loads(loads)
        assert np.allclose(per_device, 200.0, rtol=1e-9)
        assert all(len(placement.experts_on(0, d)) == 2 for d in range(4))


def test_load_balanced_beats_round_robin_under_skew():
    loads, aff = _routing(distribution="zipf", zipf_s=1.5)
    rr = round_robin(3, 8, 4).device_loads(loads).max(axis=1)
    lb = load_balanced(loads, 4).device_loads(loads).max(axis=1)
    assert (lb <= rr + 1e-9).all() and lb.sum() < rr.sum()


def test_ilp_never_worse_than_round_robin_on_its_objective():
    loads, aff = _routing(e=8, layers=2, distribution="zipf", zipf_s=1.0, affinity=0.8)
    kw = dict(devices_per_node=2)
    ilp = affinity_aware(loads, aff, 4, time_limit_s=2.0, **kw)
    rr = round_robin(2, 8, 4)
    assert placement_cost(ilp, loads, aff, **kw)["objective"] <= \
        placement_cost(rr, loads, aff, **kw)["objective"]
    assert placement_cost(ilp, loads, aff, **kw)["cross_device_tokens"] < \
        placement_cost(rr, loads, aff, **kw)["cross_device_tokens"]


def test_replication_splits_the_hot_expert():
    loads = np.array([[700.0, 100, 100, 100]])
    placement = replicate_hot(round_robin(1, 4, 4), loads, 1)
    assert len(placement.replicas[0][0]) > 1
    per_device = placement.device_loads(loads)
    assert per_device.sum() == pytest.approx(1000.0, rel=1e-9)
    assert per_device.max() < 700.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), scale=st.floats(1.0, 5.0))
def test_objective_is_monotone_in_affinity(seed, scale):
    rng = np.random.default_rng(seed)
    loads = rng.integers(0, 50, size=(3, 8)).astype(float)
    aff = rng.integers(0, 20, size=(2, 8, 8)).astype(float)
    more = aff + rng.integers(0, 5, size=aff.shape) * scale
    placement = round_robin(3, 8, 4) if seed % 2 else load_balanced(loads, 4)
    kw = dict(devices_per_node=2)
    assert placement_cost(placement, loads, more, **kw)["objective"] >= \
        placement_cost(placement, loads, aff, **kw)["objective"]


def test_layered_all_to_allv_sends_each_pair_its_bytes():
    matrix = np.array([[0, 3, 1], [2, 0, 0], [5, 5, 7]], dtype=float)
    sent = np.zeros((3, 3))
    for step in layered_steps(matrix, [10, 11, 12]):
        for src, dst in step.pairs:
            sent[src - 10, dst - 10] += step.bytes_per_flow * step.repeat
    expected = matrix.copy()
    np.fill_diagonal(expected, 0)
    assert np.allclose(sent, expected, rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_hierarchical_phases_conserve_bytes(seed):
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 100, size=(8, 8)).astype(float)
    intra, inter = hierarchical_matrices(matrix, 4)
    off = matrix.sum() - np.trace(matrix)
    cross = matrix[:4, 4:].sum() + matrix[4:, :4].sum()
    assert inter.sum() == pytest.approx(cross, rel=1e-9)   # each cross-node byte crosses once
    # intra-node phase: off-diagonal bytes plus cross-node bytes moved to their rail
    assert (intra - np.diag(np.diag(intra))).sum() <= off + 1e-9
    steps = all_to_allv_steps(matrix, list(range(8)), devices_per_node=4, max_levels=1000)
    assert sum(len(s.pairs) * s.bytes_per_flow for s in steps) == pytest.approx(
        (intra.sum() - np.trace(intra)) + inter.sum(), rel=1e-9)


def _simulate(steps, nodes):
    from clustersim.sim.engine import Simulation
    from clustersim.sim.program import Program

    fabric = NodeFabric(num_nodes=nodes, gpus_per_node=4, nvlink_bandwidth_bytes_per_s=400e9,
                        nvlink_latency_s=0.0, nic_bandwidth_bytes_per_s=50e9, nic_latency_s=0.0)
    program = Program()
    for i in range(4 * nodes):
        program.device(f"gpu{i}")
    program.collective("a2av", [(d, "comm", ()) for d in range(4 * nodes)], steps)
    sim = Simulation(device_names=program.device_names, links=fabric.links(), router=fabric,
                     record_trace=False)
    sim.run_program(program)
    return sim.env.now


def test_all_to_allv_on_an_idle_node_costs_the_busiest_port():
    """One node, NVSwitch: every GPU sends and receives on its own port, so the all-to-allv
    takes the busiest port's bytes over its bandwidth, uneven pairs or not."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(1, 9, size=(4, 4)).astype(float) * 1e6
    np.fill_diagonal(matrix, 0)
    steps = all_to_allv_steps(matrix, list(range(4)), devices_per_node=4, max_levels=64)
    busiest = max(matrix.sum(axis=0).max(), matrix.sum(axis=1).max())
    # layered steps cannot beat the busiest port (the concurrent all-to-allv's time)
    t = _simulate(steps, 1)
    assert t >= busiest / 400e9 * (1 - 1e-9)
    uniform = np.full((4, 4), 2e6)
    t = _simulate(all_to_allv_steps(uniform, list(range(4)), devices_per_node=4), 1)
    assert t == pytest.approx(3 * 2e6 / 400e9, rel=1e-9)


def test_hierarchical_all_to_all_sends_one_message_per_rail_across_nodes():
    uniform = np.full((8, 8), 1e6)
    steps = all_to_allv_steps(uniform, list(range(8)), devices_per_node=4)
    # Tutel's 2DH: inside the node each GPU sends every local peer that peer's block plus its
    # block for the peer's rail on the other node (2 MB each); then each rail sends the other
    # node one 4 MB message (its node's four blocks for that GPU).
    t = _simulate(steps, 2)
    intra = (3 * 1e6 + 3 * 1e6) / 400e9          # to 3 local peers: own block + rail block
    inter = 4 * 1e6 / 50e9                        # one rail message of the node's 4 blocks
    assert t == pytest.approx(intra + inter, rel=1e-9)

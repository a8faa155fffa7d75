"""The fluid fabric: max-min fairness, sprayed flows, bundles, coflow replay, lazy pairs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Link, PairArray, RoutedFlows, max_min_rates
from clustersim.sim.program import FlowStep, Program

REL = 1e-9


def run(links, router, make, devices=4, replay=True):
    """Build a program with ``make(program, ids)`` and run it; returns the Simulation."""
    program = Program()
    ids = [program.device(f"d{i}") for i in range(devices)]
    make(program, ids)
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=True)
    sim.fabric.replay_repeats = replay
    sim.run_program(program)
    return sim


class Direct:
    """Transfer src -> dst crosses link src (its uplink) and link 10 + dst (its downlink)."""

    static = True

    def paths(self, src, dst, fabric):
        return [((src, 10 + dst), 1.0)]


def direct_links(rate=1e9, latency=0.0):
    return [Link(f"up{i}", rate, latency) for i in range(10)] + \
        [Link(f"down{i}", rate) for i in range(10)]


def test_two_transfers_into_one_receiver_get_half_each():
    def make(program, ids):
        program.transfer(ids[0], ids[2], 1e9, stream="a", name="x")
        program.transfer(ids[1], ids[2], 1e9, stream="b", name="y")

    sim = run(direct_links(), Direct(), make)
    assert math.isclose(sim.env.now, 2.0, rel_tol=REL)
    assert math.isclose(sim.fabric.bytes_carried[12], 2e9, rel_tol=REL)


def test_a_sprayed_flow_has_one_rate_set_by_its_worst_path():
    # One flow spread evenly over links a and b (coefficient 1/2 each); b is shared with a
    # second flow. Max-min: both rise to r with r/2 + r = 1 GB/s on b, so r = 2/3 GB/s each.
    # The other flow (1 GB) ends at 1.5 s; the sprayed one then runs at 2 GB/s (1 GB/s on
    # each path) for its last 1 GB and ends at 2 s.
    class Spray:
        def route(self, src, dst, fabric):
            if src[0] == 0:   # the sprayed flow: links 0 (path a) and 1 (path b)
                return RoutedFlows(np.array([0]), np.array([1.0]), np.array([0, 0]),
                                   np.array([0, 1]), np.array([0.5, 0.5]), 0.0)
            return RoutedFlows(np.array([0]), np.array([1.0]), np.array([0]), np.array([1]),
                               np.array([1.0]), 0.0)

    def make(program, ids):
        program.transfer(ids[0], ids[1], 2e9, stream="a", name="sprayed")
        program.transfer(ids[2], ids[3], 1e9, stream="b", name="other")

    sim = run([Link("a", 1e9), Link("b", 1e9)], Spray(), make)
    spans = {r.name: r.end_s for r in sim.trace().spans.itertuples()}
    assert math.isclose(spans["other"], 1.5, rel_tol=REL)
    assert math.isclose(spans["sprayed"], 2.0, rel_tol=REL)
    assert math.isclose(sim.fabric.bytes_carried[0], 1e9, rel_tol=REL)
    assert math.isclose(sim.fabric.bytes_carried[1], 2e9, rel_tol=REL)


def test_a_bundle_is_solved_as_one_link_and_reported_per_member():
    # Links 1 and 2 form a bundle (2 GB/s together); two flows route over it.
    class Bundled:
        bundles = [[1, 2]]

        def route(self, src, dst, fabric):
            n = len(src)
            return RoutedFlows(np.arange(n), np.ones(n), np.repeat(np.arange(n), 2),
                               np.tile([0, 3], n), np.ones(2 * n), 0.0)

    def make(program, ids):
        step = FlowStep(((ids[0], ids[1]), (ids[2], ids[3])), 2e9)
        program.collective("c", [(d, "comm", ()) for d in ids], [step])

    # link 0 (10 GB/s) then the bundle (index 3 = len(links)): both flows share 2 GB/s.
    sim = run([Link("in", 10e9), Link("m0", 1e9), Link("m1", 1e9)], Bundled(), make)
    assert math.isclose(sim.env.now, 2.0, rel_tol=REL)
    carried = sim.fabric.bytes_carried
    assert math.isclose(carried[1], 2e9, rel_tol=REL) and math.isclose(carried[2], 2e9, rel_tol=REL)
    rates = sim.trace().links
    assert rates[rates["link"] == "m0"]["utilisation"].max() == pytest.approx(1.0)


def test_repeated_steps_are_replayed_exactly_even_when_a_transfer_interrupts_them():
    # A ring of 4 repeated 50 times (replayed after the second repeat), and a point-to-point
    # transfer that starts in the middle: the replay must turn back into live flows.
    def make(program, ids):
        ring = tuple((ids[i], ids[(i + 1) % 4]) for i in range(4))
        program.collective("ring", [(d, "comm", ()) for d in ids],
                           [FlowStep(ring, 1e6, repeat=50, latency_s=1e-6)])
        wait = program.compute(ids[0], "compute", "wait", 0.0123456)
        program.transfer(ids[0], ids[2], 5e6, stream="p2p", name="p2p", deps=[wait])

    solved = run(direct_links(), Direct(), make, replay=False)
    replayed = run(direct_links(), Direct(), make, replay=True)
    assert replayed.fabric.replayed_coflows > 0 and replayed.fabric.interrupted_replays == 1
    assert replayed.fabric.solved_flow_events < solved.fabric.solved_flow_events
    assert math.isclose(replayed.env.now, solved.env.now, rel_tol=1e-12)
    assert np.allclose(replayed.fabric.bytes_carried, solved.fabric.bytes_carried, rtol=1e-12)
    assert replayed.fabric.flow_events == solved.fabric.flow_events
    a, b = solved.trace().spans, replayed.trace().spans
    assert np.allclose(a["end_s"].to_numpy(), b["end_s"].to_numpy(), rtol=1e-12)


def test_re_solving_only_the_flows_a_departure_can_change_is_exact():
    # Flows of many rates on shared links (hashed subflows): departures happen one rate level
    # at a time, and each re-solve keeps the slower flows.
    from clustersim.hardware.network import NodeFabric, build_network, collective_steps

    nodes = NodeFabric(num_nodes=16, gpus_per_node=2, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.0, nic_bandwidth_bytes_per_s=50e9, nic_latency_s=0.0)
    links, router = build_network({"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 4,
                                   "routing": "split:4"}, nodes=nodes,
                                  rng=np.random.default_rng(5))
    steps = collective_steps("all_to_all", list(range(32)), 1e8, gpus_per_node=2)
    results = []
    for incremental in (False, True):
        program = Program()
        ids = [program.device(f"g{i}") for i in range(32)]
        program.collective("a2a", [(d, "comm", ()) for d in ids], steps)
        sim = Simulation(device_names=program.device_names, links=links, router=router,
                         record_trace=False)
        sim.fabric.incremental_solves = incremental
        sim.fabric.level_solves = False     # every step solved in one go, with its re-solves
        sim.run_program(program)
        results.append((sim.env.now, sim.fabric.bytes_carried, sim.fabric.recomputations))
    (full, full_bytes, solves), (fast, fast_bytes, fast_solves) = results
    assert solves == fast_solves > 100
    assert math.isclose(fast, full, rel_tol=1e-12)
    assert np.allclose(fast_bytes, full_bytes, rtol=1e-12)


def test_pair_array_is_a_sequence_of_pairs_built_on_demand():
    calls = []

    def make():
        calls.append(1)
        return np.array([0, 1]), np.array([1, 0])

    lazy = PairArray(make=make, length=2)
    assert not calls
    assert list(lazy) == [(0, 1), (1, 0)] and lazy[1] == (1, 0) and len(lazy) == 2
    assert np.asarray(lazy).tolist() == [[0, 1], [1, 0]]
    assert lazy == ((0, 1), (1, 0))
    with pytest.raises(ValueError):
        PairArray([0, 1], [1])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_max_min_rates_are_feasible_and_every_flow_has_a_bottleneck(data):
    links = data.draw(st.integers(1, 6))
    flows = data.draw(st.integers(1, 8))
    capacity = np.array(data.draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 10.0]),
                                           min_size=links, max_size=links)))
    inc_flow, inc_link = [], []
    for f in range(flows):
        path = data.draw(st.sets(st.integers(0, links - 1), min_size=1, max_size=links))
        inc_flow += [f] * len(path)
        inc_link += sorted(path)
    inc_flow, inc_link = np.array(inc_flow), np.array(inc_link)
    rate = max_min_rates(capacity, flows, inc_flow, inc_link, np.ones(len(inc_flow)))
    load = np.bincount(inc_link, weights=rate[inc_flow], minlength=links)
    assert np.all(load <= capacity * (1 + 1e-9))
    for f in range(flows):
        # max-min: some link of f is saturated and f's rate is the largest on it
        mine = inc_link[inc_flow == f]
        assert any(load[l] >= capacity[l] * (1 - 1e-9)
                   and rate[f] >= rate[inc_flow[inc_link == l]].max() * (1 - 1e-9) for l in mine)


def _staggered(program, ids):
    """x: 0 -> 2 (1 GB) at t=0; y: 1 -> 2 (1 GB) after a 0.5 s compute; z: 3 -> 1, alone."""
    program.transfer(ids[0], ids[2], 1e9, stream="a", name="x")
    wait = program.compute(ids[1], "b", "wait", 0.5)
    program.transfer(ids[1], ids[2], 1e9, stream="b", name="y", deps=[wait])
    program.transfer(ids[3], ids[1], 2e9, stream="c", name="z")


def _spans(sim):
    names = {t.id: t.name for t in sim._program.tasks}
    return {names[i]: (b, e) for i, b, e in sim.recorder.spans}


@pytest.mark.parametrize("latency", [0.0, 0.25])
def test_a_lone_flow_skips_the_solver_and_joins_it_exactly_when_a_flow_shares_its_link(latency):
    # x runs alone at 1 GB/s for 0.5 s; then x and y share down-link 2 at 0.5 GB/s: x ends at
    # 1.5 s, y at 2.0 s (each after its path latency). z never meets another flow.
    runs = {}
    for express in (True, False):
        program = Program()
        ids = [program.device(f"d{i}") for i in range(4)]
        _staggered(program, ids)
        sim = Simulation(device_names=program.device_names, links=direct_links(latency=latency),
                         router=Direct(), record_trace=True)
        sim.fabric.express = express
        sim.run_program(program)
        runs[express] = sim
    fast, slow = runs[True], runs[False]
    spans = _spans(fast)
    assert math.isclose(spans["x"][1], latency + 1.5, rel_tol=REL)
    assert math.isclose(spans["y"][1], latency + 2.0, rel_tol=REL)
    for name, (begin, end) in _spans(slow).items():
        assert math.isclose(spans[name][0], begin, rel_tol=REL)
        assert math.isclose(spans[name][1], end, rel_tol=REL)
    assert np.allclose(fast.fabric.bytes_carried, slow.fabric.bytes_carried, rtol=REL)
    assert fast.fabric.flow_events == slow.fabric.flow_events == 6
    assert fast.fabric.express_flow_events >= 2  # z start and end at least
    # Link utilisation: the same final level on every link, per-link times in order.
    log = fast.fabric.utilisation_log
    for link in {entry[1] for entry in log}:
        times = [t for t, index, _ in log if index == link]
        assert times == sorted(times)
        assert [r for _, index, r in log if index == link][-1] == 0.0


def test_a_send_still_in_its_path_latency_is_restarted_by_the_solver_when_its_link_is_taken():
    # x (0 -> 2) waits 1 s of latency on up-link 0; y (1 -> 2, no latency on link 1) starts at
    # 0.5 s on down-link 2 while x still waits. Fluid: y alone 0.5..1.0, then both share.
    links = [Link("up0", 1e9, 1.0)] + [Link(f"up{i}", 1e9) for i in range(1, 10)] + \
        [Link(f"down{i}", 1e9) for i in range(10)]

    def make(program, ids):
        program.transfer(ids[0], ids[2], 1e9, stream="a", name="x")
        wait = program.compute(ids[1], "b", "wait", 0.5)
        program.transfer(ids[1], ids[2], 1e9, stream="b", name="y", deps=[wait])

    sim = run(links, Direct(), make)
    spans = _spans(sim)
    # y: 0.5 GB alone by 1.0, then 0.5 GB at half rate: ends at 2.0; x: 0.5 GB at half rate
    # by 2.0, then 0.5 GB alone: ends at 2.5.
    assert math.isclose(spans["y"][1], 2.0, rel_tol=REL)
    assert math.isclose(spans["x"][1], 2.5, rel_tol=REL)

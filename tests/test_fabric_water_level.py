"""A solo coflow of equal flows ends at size / its first water level (``sim/water_level.py``):
the same end (rel 1e-12), bytes on every link and drain per tier as the one-go solve and the
event loop, on leaf-spine fabrics of many shapes and routings; its rates, solved only when the
replay is interrupted, are the solver's."""

import math

import numpy as np
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.sim.engine import Simulation
from leaf_spine_case import leaf_spine_collective
from clustersim.sim.fabric import Fabric, Link
from clustersim.sim.max_min import max_min_rates
from clustersim.sim.routed_flows import RoutedFlows
from clustersim.sim.water_level import first_level

TIME_REL = 1e-12
BYTES_REL = 1e-9


def _run(shape, mode, interrupt_s=()):
    hosts, gpus, hosts_per_leaf, spines, routing, seed, oversubscription = shape
    links, router, program, ids = leaf_spine_collective(
        hosts, gpus, hosts_per_leaf, spines, routing, seed, oversubscription=oversubscription)
    for number, start_s in enumerate(interrupt_s):
        wait = program.compute(ids[number % 2], f"other{number}", "wait", start_s)
        program.transfer(ids[number % 2], ids[-1 - number], 4e6, stream=f"x{number}",
                         name="send", deps=[wait])
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=False)
    sim.fabric.level_solves = mode == "level"
    sim.fabric.solo_solves = mode != "event loop"
    sim.run_program(program)
    return sim.env.now, sim.fabric


def _assert_same(a, b, time_rel=TIME_REL):
    (time_a, fabric_a), (time_b, fabric_b) = a, b
    assert math.isclose(time_a, time_b, rel_tol=time_rel)
    bytes_a, bytes_b = fabric_a.bytes_carried, fabric_b.bytes_carried
    np.testing.assert_allclose(bytes_a, bytes_b, rtol=BYTES_REL, atol=BYTES_REL * bytes_b.max())
    np.testing.assert_allclose(np.array(fabric_a.coflow_drain_s),
                               np.array(fabric_b.coflow_drain_s), rtol=1e-15)


@settings(max_examples=12, deadline=None)
@given(leaves=st.integers(2, 5), hosts_per_leaf=st.sampled_from([1, 2, 3]),
       gpus=st.sampled_from([1, 2, 4]), spines=st.sampled_from([1, 2, 4]),
       routing=st.sampled_from(["ecmp", "split", "spray"]), seed=st.integers(0, 2**16),
       oversubscription=st.sampled_from([1.0, 2.0]))
def test_level_solves_equal_one_go_solves_and_the_event_loop(leaves, hosts_per_leaf, gpus,
                                                             spines, routing, seed,
                                                             oversubscription):
    ports = hosts_per_leaf * gpus
    if ports % oversubscription:
        oversubscription = 1.0
    if (ports / oversubscription) % spines:
        spines = 1
    shape = (leaves * hosts_per_leaf, gpus, hosts_per_leaf, spines, routing, seed,
             oversubscription)
    level = _run(shape, "level")
    assert level[1].solo_coflows > 0
    _assert_same(level, _run(shape, "one go"))
    _assert_same(level, _run(shape, "event loop"))


def test_interrupted_level_solves_use_the_solvers_rates():
    shape = (8, 4, 2, 2, "ecmp", 3, 1.0)
    end = _run(shape, "level")[0]
    times = (0.3 * end, 0.55 * end, 0.8 * end)     # sends that start inside steps
    level = _run(shape, "level", interrupt_s=times)
    assert level[1].interrupted_replays > 0
    _assert_same(level, _run(shape, "event loop", interrupt_s=times), time_rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), links=st.integers(1, 6), flows=st.integers(1, 30))
def test_first_level_is_the_slowest_max_min_rate(data, links, flows):
    """Closed form: with equal flows, the first water level is the least max-min rate."""
    capacity = np.array(data.draw(st.lists(st.sampled_from([1e9, 2e9, 3e9, 7e9]),
                                           min_size=links, max_size=links)))
    inc_flow, inc_link, inc_coef = [], [], []
    for flow in range(flows):
        path = data.draw(st.lists(st.integers(0, links - 1), min_size=1, max_size=3,
                                  unique=True))
        coef = data.draw(st.sampled_from([1.0, 0.5, 0.25]))
        inc_flow += [flow] * len(path)
        inc_link += path
        inc_coef += [coef] * len(path)
    routed = RoutedFlows(np.arange(flows), np.full(flows, 0.5), np.array(inc_flow),
                         np.array(inc_link), np.array(inc_coef), 0.0)
    rates = max_min_rates(capacity, flows, routed.inc_flow, routed.inc_link, routed.inc_coef)
    assert math.isclose(first_level(capacity, routed), rates.min(), rel_tol=1e-12)
    uneven = RoutedFlows(routed.pair, np.linspace(0.1, 1.0, flows), routed.inc_flow,
                         routed.inc_link, routed.inc_coef, 0.0)
    assert flows == 1 or first_level(capacity, uneven) is None  # later levels decide


def test_a_coflow_of_equal_flows_ends_at_size_over_the_first_level():
    """Three flows on two links: 2 share link 0 (1 GB/s), one alone on link 1 (4 GB/s)."""
    env = simpy.Environment()

    class Table:
        static = True

        def paths(self, src, dst, fabric):
            return [((0,), 1.0)] if src < 2 else [((1,), 1.0)]

    fabric = Fabric(env, [Link("a", 1e9), Link("b", 4e9)], Table(), record_utilisation=False)
    done = fabric.coflow(((0, 10), (1, 11), (2, 12)), 3e9)
    env.run(done)
    assert math.isclose(env.now, 3e9 / 0.5e9, rel_tol=1e-12)    # 6 s at half of link a
    np.testing.assert_allclose(fabric.bytes_carried, [6e9, 3e9], rtol=1e-12)
    assert fabric.solo_coflows == 1 and fabric.recomputations == 1

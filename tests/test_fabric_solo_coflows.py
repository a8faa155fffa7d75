"""A coflow alone on an idle fabric, solved start to end in one go (``sim/solo_coflows.py``),
ends when the event loop says and leaves the same bytes on every link (rel 1e-9), on
leaf-spine fabrics of many shapes and seeds, interrupted or not."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.sim.engine import Simulation
from leaf_spine_case import leaf_spine_collective

REL = 1e-9


def _run(hosts, gpus, hosts_per_leaf, spines, routing, seed, solo, collective="all_to_all",
         interrupt_s=(), oversubscription=1.0):
    links, router, program, ids = leaf_spine_collective(
        hosts, gpus, hosts_per_leaf, spines, routing, seed, collective=collective,
        oversubscription=oversubscription)
    for number, start_s in enumerate(interrupt_s):   # sends amid the collective's steps
        device, peer = (0, len(ids) - 1) if number % 2 else (1, len(ids) // 2)
        wait = program.compute(ids[device], f"other{number}", "wait", start_s)
        program.transfer(ids[device], ids[peer], 4e6, stream=f"x{number}", name="send",
                         deps=[wait])
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=False)
    sim.fabric.solo_solves = solo
    sim.run_program(program)
    return sim.env.now, sim.fabric


def _assert_same(a, b):
    (time_a, fabric_a), (time_b, fabric_b) = a, b
    assert math.isclose(time_a, time_b, rel_tol=REL)
    bytes_a, bytes_b = fabric_a.bytes_carried, fabric_b.bytes_carried
    np.testing.assert_allclose(bytes_a, bytes_b, rtol=REL, atol=REL * bytes_b.max())


@settings(max_examples=12, deadline=None)
@given(leaves=st.integers(2, 5), hosts_per_leaf=st.sampled_from([1, 2, 3]),
       gpus=st.sampled_from([1, 2, 4]), spines=st.sampled_from([1, 2, 4]),
       routing=st.sampled_from(["ecmp", "split", "spray"]), seed=st.integers(0, 2**16),
       oversubscription=st.sampled_from([1.0, 2.0]))
def test_one_go_solves_equal_the_event_loop(leaves, hosts_per_leaf, gpus, spines, routing, seed,
                                            oversubscription):
    hosts = leaves * hosts_per_leaf
    ports = hosts_per_leaf * gpus
    if ports % oversubscription:
        oversubscription = 1.0
    if (ports / oversubscription) % spines:
        spines = 1
    shape = (hosts, gpus, hosts_per_leaf, spines, routing, seed)
    solo = _run(*shape, solo=True, oversubscription=oversubscription)
    assert solo[1].solo_coflows > 0
    _assert_same(solo, _run(*shape, solo=False, oversubscription=oversubscription))


def test_interrupted_one_go_solves_equal_the_event_loop():
    shape = (8, 4, 2, 2, "ecmp", 3)
    plain = _run(*shape, solo=True)
    # Sends that start in the middle of steps (the first steps are some microseconds each).
    times = (0.3 * plain[0], 0.55 * plain[0], 0.8 * plain[0])
    solo = _run(*shape, solo=True, interrupt_s=times)
    assert solo[1].interrupted_replays > 0
    _assert_same(solo, _run(*shape, solo=False, interrupt_s=times))


def test_repeated_steps_replay_the_one_go_solve():
    """A ring's identical steps: the first is solved in one go, the others replay it."""
    solo = _run(8, 2, 2, 2, "ecmp", 5, solo=True, collective="all_reduce")
    _assert_same(solo, _run(8, 2, 2, 2, "ecmp", 5, solo=False, collective="all_reduce"))
    assert solo[1].replayed_coflows > solo[1].solo_coflows


class _Table:
    """Routes from a table: (src, dst) -> [(path, fraction)]."""

    static = True

    def __init__(self, table):
        self.table = table

    def paths(self, src, dst, fabric):
        return self.table[(src, dst)]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), links=st.integers(2, 6), pairs=st.integers(2, 12))
def test_one_go_solves_of_random_coflows_equal_the_event_loop(data, links, pairs):
    """Uneven path fractions give flows of many sizes, so rates are re-solved mid-coflow."""
    from clustersim.sim.fabric import Fabric, Link
    import simpy

    capacity = data.draw(st.lists(st.sampled_from([1e9, 2e9, 3e9, 5e9]), min_size=links,
                                  max_size=links))
    table = {}
    for pair in range(pairs):
        count = data.draw(st.integers(1, 3))
        weights = data.draw(st.lists(st.integers(1, 4), min_size=count, max_size=count))
        table[(pair, pairs + pair)] = [
            (tuple(data.draw(st.lists(st.integers(0, links - 1), min_size=1, max_size=3,
                                      unique=True))), w / sum(weights)) for w in weights]
    results = []
    for solo in (True, False):
        env = simpy.Environment()
        fabric = Fabric(env, [Link(f"l{i}", c) for i, c in enumerate(capacity)], _Table(table),
                        record_utilisation=False)
        fabric.solo_solves = solo
        env.process(_wait(env, fabric.coflow(tuple(table), 1e9)))
        env.run()
        assert fabric.solo_coflows == (1 if solo else 0)
        results.append((env.now, fabric))
    _assert_same(*results)


def _wait(env, event):
    yield event

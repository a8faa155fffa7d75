"""Express sends' link records and drains, kept compactly and expanded on read, equal the
records written eagerly entry for entry, whatever the sends share and whenever the log is read."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Link
from clustersim.sim.program import FlowStep, Program

DEVICES = 5


class Direct:
    """src -> dst crosses up-link src and down-link DEVICES + dst (static: express sends)."""

    static = True

    def paths(self, src, dst, fabric):
        return [((src, DEVICES + dst), 1.0)]


sends = st.lists(st.tuples(st.integers(0, DEVICES - 1), st.integers(0, DEVICES - 1),
                           st.sampled_from([0.0, 1e6, 3e8, 1e9]), st.floats(0.0, 2.0),
                           st.integers(0, 2)), min_size=1, max_size=14)


def run(plan, latencies, ring, compact: bool, reads=(), numpy_from=64):
    program = Program()
    ids = [program.device(f"d{i}") for i in range(DEVICES)]
    for k, (src, dst, size, wait_s, stream) in enumerate(plan):
        wait = program.compute(ids[src], f"s{stream}", f"w{k}", wait_s)
        program.transfer(ids[src], ids[dst], size, stream=f"s{stream}", name=f"t{k}", deps=[wait])
    if ring:
        pairs = tuple((ids[i], ids[(i + 1) % DEVICES]) for i in range(DEVICES))
        program.collective("ring", [(d, "comm", ()) for d in ids],
                           [FlowStep(pairs, 2e8, repeat=6, latency_s=1e-3)])
    links = [Link(f"up{i}", 1e9, latencies[i]) for i in range(DEVICES)] + \
        [Link(f"down{i}", 2e9) for i in range(DEVICES)]
    sim = Simulation(device_names=program.device_names, links=links, router=Direct(),
                     record_trace=True)
    sim.fabric.compact_express_records = compact
    sim.fabric.numpy_expansion_from = numpy_from

    def reader(at_s):
        yield sim.env.timeout(at_s)
        sim.fabric.utilisation_log, sim.fabric.coflow_drain_s  # expands what is pending

    for at_s in reads:
        sim.env.process(reader(at_s))
    sim.run_program(program)
    return sim


@settings(max_examples=40, deadline=None)
@given(sends, st.lists(st.sampled_from([0.0, 0.1, 0.7]), min_size=DEVICES, max_size=DEVICES),
       st.booleans(), st.lists(st.floats(0.0, 4.0), max_size=3), st.sampled_from([1, 3, 64]))
def test_compact_express_records_expand_to_the_eager_log_and_drains(plan, latencies, ring, reads,
                                                                    numpy_from):
    eager = run(plan, latencies, ring, compact=False)
    compact = run(plan, latencies, ring, compact=True, reads=reads, numpy_from=numpy_from)
    assert compact.fabric.express_flow_events == eager.fabric.express_flow_events
    assert compact.recorder.spans == eager.recorder.spans
    # As arrays (what the trace reads; pending records expanded by numpy), then as tuples.
    time_s, link, rate = compact.fabric.utilisation_columns()
    assert list(zip(time_s.tolist(), link.tolist(), rate.tolist())) == eager.fabric.utilisation_log
    assert compact.fabric.utilisation_log == eager.fabric.utilisation_log
    drains = compact.fabric.coflow_drain_s
    assert len(drains) == len(eager.fabric.coflow_drain_s)
    for got, want in zip(drains, eager.fabric.coflow_drain_s):
        assert got.tolist() == want.tolist()
    # The log is a fluid schedule: per link, times never go back and every link ends idle.
    log = compact.fabric.utilisation_log
    for link in {index for _, index, _ in log}:
        entries = [(t, rate) for t, index, rate in log if index == link]
        assert [t for t, _ in entries] == sorted(t for t, _ in entries)
        assert entries[-1][1] == 0.0


def test_a_pipeline_of_lone_sends_defers_every_record_until_the_log_is_read():
    plan = [(i, i + 1, 1e9, float(i), 0) for i in range(DEVICES - 1)]  # send i from i s
    sim = run(plan, [0.0] * DEVICES, ring=False, compact=True)
    fabric = sim.fabric
    assert fabric.express_flow_events == 2 * len(plan)
    assert len(fabric._express_ends) == 3 * len(plan)   # nothing expanded during the run
    index, time_s, rate, names = sim.trace().link_columns      # read as arrays, still pending
    assert fabric._express_ends and names[index[0]] == "up0"
    log = fabric.utilisation_log
    assert list(zip(time_s.tolist(), index.tolist(), rate.tolist())) == log
    # Each send: its up-link at 1 GB/s and down-link at 1 GB/s from its start, both 0 at its
    # end (1 s later: 1 GB at the up-link's 1 GB/s).
    assert len(log) == 4 * len(plan) and not fabric._express_ends
    for k in range(len(plan)):
        (t0, _, r0), (t1, _, r1), (t2, _, z0), (t3, _, z1) = log[4 * k: 4 * k + 4]
        assert t0 == t1 == k and t2 == t3 and np.isclose(t2, k + 1.0, rtol=1e-9)
        assert r0 == r1 == 1e9 and z0 == z1 == 0.0


def _units_agree(fabric, pairs):
    """Each one-flow route's express drain unit equals ``Fabric._record_drain``'s, float for
    float; returns how many routes were compared."""
    compared = 0
    for src, dst in pairs:
        routed = fabric._route_now(((src, dst),))
        if routed.num_flows != 1:
            continue
        route = fabric._express_route(routed)
        fabric._record_drain(routed, 1.0)
        assert route.drain_unit.tolist() == fabric._drains[-1][0].tolist()
        assert route.drain_unit.max() > 0
        compared += 1
    return compared


@pytest.mark.parametrize("routing", [None, "ecmp", "spray"])
def test_the_express_drain_unit_is_the_solver_paths_on_nvlink_nics_and_switches(routing):
    import simpy

    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.sim.fabric import Fabric

    network = {} if routing is None else {"network": {
        "kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 4, "oversubscription": 1,
        "routing": routing}}   # spraying routes over bundles of uplinks
    cluster = ClusterConfig(node="DGX-H100", nodes=8, gpus_per_node=8, **network).build()
    fabric = Fabric(simpy.Environment(), cluster.links, cluster.router)
    pairs = [(a, b) for a in range(0, 64, 5) for b in range(1, 64, 7) if a != b]
    assert _units_agree(fabric, pairs) > 100


def test_the_express_drain_unit_is_the_solver_paths_on_a_fabric_of_four_links():
    # A route covers half the links: ``_record_drain``'s per-link branch.
    import simpy

    from clustersim.sim.fabric import Fabric

    class TwoByTwo:
        static = True

        def paths(self, src, dst, fabric):
            return [((src, 2 + dst), 1.0)]

    links = [Link("u0", 1e9), Link("u1", 3e9), Link("d0", 2e9), Link("d1", 5e8)]
    assert _units_agree(Fabric(simpy.Environment(), links, TwoByTwo()), [(0, 1), (1, 0)]) == 2

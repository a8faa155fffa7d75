"""Express sends' link records and drains, kept compactly and expanded on read, equal the
records written eagerly entry for entry, whatever the sends share and whenever the log is read."""

import numpy as np
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


def run(plan, latencies, ring, compact: bool, reads=()):
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

    def reader(at_s):
        yield sim.env.timeout(at_s)
        sim.fabric.utilisation_log, sim.fabric.coflow_drain_s  # expands what is pending

    for at_s in reads:
        sim.env.process(reader(at_s))
    sim.run_program(program)
    return sim


@settings(max_examples=40, deadline=None)
@given(sends, st.lists(st.sampled_from([0.0, 0.1, 0.7]), min_size=DEVICES, max_size=DEVICES),
       st.booleans(), st.lists(st.floats(0.0, 4.0), max_size=3))
def test_compact_express_records_expand_to_the_eager_log_and_drains(plan, latencies, ring, reads):
    eager = run(plan, latencies, ring, compact=False)
    compact = run(plan, latencies, ring, compact=True, reads=reads)
    assert compact.fabric.express_flow_events == eager.fabric.express_flow_events
    assert compact.recorder.spans == eager.recorder.spans
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
    log = fabric.utilisation_log
    # Each send: its up-link at 1 GB/s and down-link at 1 GB/s from its start, both 0 at its
    # end (1 s later: 1 GB at the up-link's 1 GB/s).
    assert len(log) == 4 * len(plan) and not fabric._express_ends
    for k in range(len(plan)):
        (t0, _, r0), (t1, _, r1), (t2, _, z0), (t3, _, z1) = log[4 * k: 4 * k + 4]
        assert t0 == t1 == k and t2 == t3 and np.isclose(t2, k + 1.0, rtol=1e-9)
        assert r0 == r1 == 1e9 and z0 == z1 == 0.0

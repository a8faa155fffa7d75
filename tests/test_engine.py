"""The event engine: streams, dependencies, fluid transfers, collectives, memory, deadlocks."""

import math

import pytest

from clustersim.errors import OutOfMemory
from clustersim.hardware.network.collectives import collective_steps
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.sim.engine import Simulation, simulate
from clustersim.sim.fabric import Link
from clustersim.sim.program import FlowStep, Program

REL = 1e-9


class OneLinkRouter:
    """Every transfer crosses link 0 (a shared bottleneck)."""

    def paths(self, src, dst, fabric):
        return [((0,), 1.0)]


def two_devices():
    program = Program()
    return program, program.device("a"), program.device("b")


def spans_by_name(trace):
    return {row.name: (row.start_s, row.end_s) for row in trace.spans.itertuples()}


def test_streams_run_in_order_and_overlap_each_other():
    program, a, _ = two_devices()
    program.compute(a, "compute", "x", 2.0)
    program.compute(a, "compute", "y", 3.0)
    program.compute(a, "comm", "z", 4.0)
    spans = spans_by_name(simulate(program))
    assert spans == {"x": (0.0, 2.0), "y": (2.0, 5.0), "z": (0.0, 4.0)}


def test_cross_device_dependency_waits():
    program, a, b = two_devices()
    x = program.compute(a, "compute", "x", 2.0)
    program.compute(b, "compute", "early", 1.0)
    program.compute(b, "compute", "y", 1.0, deps=[x])
    spans = spans_by_name(simulate(program))
    assert spans["y"] == (2.0, 3.0)


def test_uncontended_transfer_takes_latency_plus_bytes_over_bandwidth():
    program, a, b = two_devices()
    program.transfer(a, b, 3e9, stream="p2p", name="send")
    trace = simulate(program, links=[Link("l", 100e9, 5e-6)], router=OneLinkRouter())
    start, end = spans_by_name(trace)["send"]
    assert math.isclose(end - start, 5e-6 + 3e9 / 100e9, rel_tol=REL)


def test_two_flows_share_a_link_then_the_survivor_speeds_up():
    # 1 GB and 3 GB start together on a 1 GB/s link: each gets 0.5 GB/s until the small one
    # ends at 2 s; the large one then has 2 GB left at 1 GB/s and ends at 4 s.
    program, a, b = two_devices()
    program.transfer(a, b, 1e9, stream="s1", name="small")
    program.transfer(a, b, 3e9, stream="s2", name="large")
    trace = simulate(program, links=[Link("l", 1e9)], router=OneLinkRouter())
    spans = spans_by_name(trace)
    assert math.isclose(spans["small"][1], 2.0, rel_tol=REL)
    assert math.isclose(spans["large"][1], 4.0, rel_tol=REL)
    rates = trace.links[trace.links["link"] == "l"]["rate_bytes_per_s"].tolist()
    assert rates[0] == pytest.approx(1e9) and rates[-1] == 0.0


def test_max_min_fairness_gives_unused_share_to_the_other_flow():
    # Flow 1 crosses links 0 and 1 (link 1 is slow, 1 GB/s); flow 2 crosses link 0 only (10 GB/s).
    # Max-min: flow 1 gets 1 GB/s (its bottleneck), flow 2 the remaining 9 GB/s of link 0.
    class Router:
        def paths(self, src, dst, fabric):
            return [((0, 1), 1.0)] if dst == 1 else [((0,), 1.0)]

    program = Program()
    a, b, c = program.device("a"), program.device("b"), program.device("c")
    program.transfer(a, b, 1e9, stream="s1", name="slow")
    program.transfer(a, c, 9e9, stream="s2", name="fast")
    spans = spans_by_name(simulate(program, links=[Link("l0", 10e9), Link("l1", 1e9)],
                                   router=Router()))
    assert math.isclose(spans["slow"][1], 1.0, rel_tol=REL)
    assert math.isclose(spans["fast"][1], 1.0, rel_tol=REL)


def test_memory_peak_is_the_largest_sum_of_live_allocations():
    program, a, _ = two_devices()
    program.compute(a, "compute", "x", 1.0, alloc=[("hbm", 10)])            # live 0..
    program.compute(a, "compute", "y", 1.0, alloc=[("hbm", 20)], free=[("hbm", 10)])
    program.compute(a, "compute", "z", 1.0, alloc=[("hbm", 5)], free=[("hbm", 25)])
    sim = Simulation(device_names=program.device_names, memory={"a": {"hbm": 100}},
                     resident={"a": {"hbm": 7}})
    trace = sim.run_program(program)
    # x alloc: 17; y alloc at t=1: 37 (x still live until y ends); y frees x: 27; z: 32 -> 7.
    assert sim.pools["a", "hbm"].peak_bytes == 37
    assert trace.memory["used_bytes"].iloc[-1] == 7
    assert trace.peak_memory_bytes()[("a", "hbm")] == 37


def test_out_of_memory_names_device_tier_time_and_task():
    program, a, _ = two_devices()
    program.compute(a, "compute", "warmup", 2.0)
    program.compute(a, "compute", "huge", 1.0, alloc=[("hbm", 2**31)])
    sim = Simulation(device_names=program.device_names, memory={"a": {"hbm": 2**30}})
    with pytest.raises(OutOfMemory) as info:
        sim.run_program(program)
    message = str(info.value)
    assert "a hbm" in message and "t=2000 ms" in message and "'huge'" in message
    assert info.value.requested_bytes == 2**31


def test_collective_starts_when_the_last_member_arrives():
    program, a, b = two_devices()
    program.compute(a, "compute", "late", 5.0)
    x = program.compute(b, "compute", "early", 1.0)
    program.collective("ar", [(a, "compute", []), (b, "comm", [x])], duration_s=2.0)
    trace = simulate(program)
    rows = trace.spans[trace.spans["name"] == "ar"]
    assert rows["start_s"].tolist() == [5.0, 5.0]
    assert rows["end_s"].tolist() == [7.0, 7.0]


def test_dependencies_must_point_to_earlier_tasks():
    # This is what makes every Program deadlock-free by construction (schedules that would
    # deadlock are refused by the pipeline compiler before a Program is built).
    program, a, b = two_devices()
    program.compute(a, "compute", "x", 1.0)
    with pytest.raises(ValueError, match="not an earlier task"):
        program.compute(b, "compute", "y", 1.0, deps=[5])


def test_ring_all_reduce_on_nvswitch_moves_2_n_minus_1_over_n_of_the_tensor():
    n, size = 8, 1e9
    nodes = NodeFabric(num_nodes=1, gpus_per_node=n, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.0, nic_bandwidth_bytes_per_s=50e9, nic_latency_s=0.0)
    program = Program()
    ids = [program.device(f"gpu{i}") for i in range(n)]
    steps = collective_steps("all_reduce", ids, size)
    program.collective("ar", [(d, "comm", []) for d in ids], steps)
    sim = Simulation(device_names=program.device_names, links=nodes.links(), router=nodes)
    trace = sim.run_program(program)
    sent_per_gpu = sim.fabric.bytes_carried[0]  # gpu0's NVLink uplink
    assert math.isclose(sent_per_gpu, 2 * (n - 1) / n * size, rel_tol=REL)
    assert math.isclose(trace.makespan_s, 2 * (n - 1) / n * size / 450e9, rel_tol=REL)
    # Conservation: every byte that leaves a GPU arrives at one.
    ups = sum(sim.fabric.bytes_carried[2 * i] for i in range(n))
    downs = sum(sim.fabric.bytes_carried[2 * i + 1] for i in range(n))
    assert math.isclose(ups, downs, rel_tol=REL)


def test_collective_steps_wait_their_latency_each_repeat():
    program, a, b = two_devices()
    step = FlowStep(((a, b), (b, a)), 1e6, repeat=3, latency_s=1e-6)

    class Direct:
        def paths(self, src, dst, fabric):
            return [((src,), 1.0)]

    program.collective("c", [(a, "comm", []), (b, "comm", [])], [step])
    trace = simulate(program, links=[Link("a.up", 1e9), Link("b.up", 1e9)], router=Direct())
    assert math.isclose(trace.makespan_s, 3 * (1e-6 + 1e6 / 1e9), rel_tol=REL)


def test_the_chrome_trace_text_is_the_events_as_json(tmp_path):
    import json

    from clustersim.sim.chrome_trace import chrome_trace_events
    from clustersim.sim.fabric import Link

    class Direct:
        static = True

        def paths(self, src, dst, fabric):
            return [((src, 2 + dst), 1.0)]

    program = Program()
    a, b = program.device("a"), program.device("b")
    first = program.compute(a, "compute", "f", 1e-3, alloc=[("hbm", 2**30)])
    program.transfer(a, b, 1e6, stream="send", name="x", deps=[first])
    program.compute(b, "compute", "g", 1e-3)
    links = [Link(f"l{i}", 1e9, 1e-6) for i in range(4)]
    sim = Simulation(device_names=program.device_names, memory={"a": {"hbm": 2**31}},
                     links=links, router=Direct())
    trace = sim.run_program(program)
    path = trace.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    assert events == chrome_trace_events(trace)
    kinds = {event["ph"] for event in events}
    assert {"M", "X", "C", "s", "f"} <= kinds

"""Trace export read straight from a program's task records (Chrome trace JSON, timeline
columns) is the table path's output, byte for byte: the records path is only faster."""

import json

import numpy as np

from clustersim.sim import chrome_trace
from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Link
from clustersim.sim.program import FlowStep, Program


class Direct:
    static = True

    def paths(self, src, dst, fabric):
        return [((src, 3 + dst), 1.0)]


def labelled_run():
    """Labels in different key orders, missing keys, None and NaN values, integral floats,
    numpy scalars; zero-length tasks, ties, a transfer, a collective and memory effects."""
    program = Program()
    a, b, c = (program.device(name) for name in ("gpu10", "gpu2", "gpu1"))
    x = program.compute(a, "compute", "x", 1e-3, alloc=[("hbm", 2**30)],
                        labels={"layer": 3, "phase": "fwd"})
    program.compute(b, "compute", "y", 1e-3, labels={"phase": "bwd", "layer": 2.0,
                                                     "microbatch": np.int64(4)})
    program.compute(c, "compute", "z", 0.0, labels={"note": None, "share": 0.25})
    program.compute(c, "compute", "w", 2e-3, labels={"share": float("nan"), "flag": True})
    send = program.transfer(a, b, 1e6, stream="send", name="x->y", deps=[x],
                            labels={"microbatch": 1})
    program.compute(b, "compute", "after", 1e-3, deps=[send], alloc=[("hbm", 2**29)],
                    free=[("hbm", 2**29)])
    program.collective("ar", [(a, "comm", [x]), (b, "comm", []), (c, "comm", [])],
                       [FlowStep(((0, 1), (1, 2), (2, 0)), 1e5)], labels={"group": "tp"})
    links = [Link(f"l{i}", 1e9, 1e-6) for i in range(6)]
    sim = Simulation(device_names=program.device_names,
                     memory={name: {"hbm": 2**32} for name in program.device_names},
                     links=links, router=Direct())
    return sim.run_program(program)


def test_the_chrome_trace_from_task_records_is_the_tables_text(monkeypatch):
    fast = chrome_trace.chrome_trace_text(labelled_run())
    monkeypatch.setattr(chrome_trace, "_program_spans", lambda trace: None)
    assert fast == chrome_trace.chrome_trace_text(labelled_run())
    events = json.loads(fast)["traceEvents"]
    assert {event["ph"] for event in events} >= {"M", "X", "C", "s", "f"}


def test_span_columns_from_task_records_follow_the_span_table():
    trace = labelled_run()
    columns = trace.span_columns()
    spans = trace.spans  # built after: span_columns read the records
    for name, values in columns.items():
        assert values == spans[name].tolist(), name


def test_counter_numbers_are_written_as_json_writes_them():
    numbers = [0.0, -0.0, 0.1, 0.1, 1e300, 2.5e-7]
    assert list(chrome_trace._reprs(numbers)) == [json.dumps(x) for x in numbers]
    assert list(chrome_trace._reprs([1, 1.0])) == ["1", "1.0"]  # equal keys, different text


def test_the_trace_file_is_written_piece_by_piece_as_the_text(tmp_path, monkeypatch):
    monkeypatch.setattr(chrome_trace, "_EVENTS_PER_PIECE", 2)  # counters cut into many pieces
    trace = labelled_run()
    path = trace.to_chrome_trace(tmp_path / "trace.json")
    assert path.read_text() == chrome_trace.chrome_trace_text(trace)

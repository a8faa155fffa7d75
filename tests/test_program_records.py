"""A Program keeps each task as a plain record, read by field name through ``Program.tasks``."""

import gc

import pytest

from clustersim.sim.program import COLLECTIVE, COMPUTE, TRANSFER, FlowStep, Program


def small_program():
    program = Program()
    a, b = program.device("a"), program.device("b")
    x = program.compute(a, "compute", "x", 2, alloc=[("hbm", 8.0)], labels={"layer": 1})
    y = program.compute(a, "compute", "y", 1.0, deps=[x])            # same stream: no event
    send = program.transfer(a, b, 1e3, stream="send", name="s", deps=[y])
    program.compute(b, "compute", "z", 1.0, deps=[send, x])         # other streams: events
    members = program.collective("ar", [(a, "comm", [x]), (b, "comm", [])],
                                 [FlowStep(((0, 1),), 1.0)])
    return program, (x, y, send, members)


def test_tasks_read_the_records_by_field_name():
    program, (x, y, send, members) = small_program()
    tasks = program.tasks
    assert len(tasks) == len(program) == 6
    assert [task.id for task in tasks] == list(range(6))
    assert tasks[x].name == "x" and tasks[x].type == COMPUTE
    assert tasks[x].duration_s == 2.0 and type(tasks[x].duration_s) is float
    assert tasks[x].alloc == (("hbm", 8.0),) and tasks[x].labels == {"layer": 1}
    assert tasks[y].deps == (x,) and dict(tasks[y].labels) == {}
    assert (tasks[send].type, tasks[send].dst_device, tasks[send].size_bytes) == (TRANSFER, 1, 1e3)
    assert tasks[members[1]].type == COLLECTIVE
    assert tasks[members[1]].collective.members == members
    assert [task.name for task in tasks[-2:]] == ["ar", "ar"]


def test_only_tasks_waited_on_from_another_stream_get_an_event():
    program, (x, y, send, members) = small_program()
    # y waits on x in x's own stream (program order covers it); the send waits on y from its
    # own stream, z and a collective member on x from others, z on the send from another device.
    assert program.waited_on == {x, y, send}


def test_a_dependency_on_a_later_task_is_refused_for_every_task_kind():
    program, _ = small_program()
    with pytest.raises(ValueError, match="not an earlier task"):
        program.transfer(0, 1, 1.0, stream="send", name="t", deps=[99])
    with pytest.raises(ValueError, match="not an earlier task"):
        program.collective("c", [(0, "comm", [-1]), (1, "comm", [])])


def test_records_of_plain_values_leave_the_garbage_collectors_lists():
    # What keeps building a large Program cheap: a record of numbers, strings and tuples leaves
    # the collector's lists over the collections that follow it (a record after its deps tuple).
    program = Program()
    device = program.device("a")
    for index in range(100):
        program.compute(device, "compute", "t", 1.0, deps=[index - 1] if index else ())
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(record) for record in program.records)

"""Pipeline schedules as data: the exact orders each generator produces, and the data model.

Each regression order below was checked by hand against the paper's figure named in the test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from clustersim.errors import ConfigError, ScheduleError
from clustersim.schedules import (
    SCHEDULES,
    Action,
    ActionKind,
    Link,
    make_schedule,
    parse_rows,
    render,
    schedule_from_text,
)


def rows(text: str) -> str:
    return textwrap.dedent(text).strip()


# -- regression: exact orders against the papers' figures --------------------------------------


def test_1f1b_p4_m8_matches_megatron_figure_4_top():
    assert render(make_schedule("1f1b", 4, 8)) == rows("""
        stage 0: f0 f1 f2 f3 b0 f4 b1 f5 b2 f6 b3 f7 b4 b5 b6 b7
        stage 1: f0 f1 f2 b0 f3 b1 f4 b2 f5 b3 f6 b4 f7 b5 b6 b7
        stage 2: f0 f1 b0 f2 b1 f3 b2 f4 b3 f5 b4 f6 b5 f7 b6 b7
        stage 3: f0 b0 f1 b1 f2 b2 f3 b3 f4 b4 f5 b5 f6 b6 f7 b7
    """)


def test_gpipe_p4_m4_matches_gpipe_figure_2c_backward_in_reverse():
    assert render(make_schedule("gpipe", 4, 4)) == rows("""
        stage 0: f0 f1 f2 f3 b3 b2 b1 b0
        stage 1: f0 f1 f2 f3 b3 b2 b1 b0
        stage 2: f0 f1 f2 f3 b3 b2 b1 b0
        stage 3: f0 f1 f2 f3 b3 b2 b1 b0
    """)


def test_interleaved_p4_m8_v2_matches_megatron_figure_4_bottom():
    # Device 1 of the figure: forwards 1-4 of chunk 0, 1-4 of chunk 1, 5 6 (7 with backward 1) ...
    assert render(make_schedule("interleaved", 4, 8, 2)) == rows("""
        stage 0: f0c0 f1c0 f2c0 f3c0 f0c1 f1c1 f2c1 f3c1 f4c0 f5c0 f6c0 b0c1 f7c0 b1c1 f4c1 b2c1 f5c1 b3c1 f6c1 b0c0 f7c1 b1c0 b2c0 b3c0 b4c1 b5c1 b6c1 b7c1 b4c0 b5c0 b6c0 b7c0
        stage 1: f0c0 f1c0 f2c0 f3c0 f0c1 f1c1 f2c1 f3c1 f4c0 b0c1 f5c0 b1c1 f6c0 b2c1 f7c0 b3c1 f4c1 b0c0 f5c1 b1c0 f6c1 b2c0 f7c1 b3c0 b4c1 b5c1 b6c1 b7c1 b4c0 b5c0 b6c0 b7c0
        stage 2: f0c0 f1c0 f2c0 f3c0 f0c1 f1c1 f2c1 b0c1 f3c1 b1c1 f4c0 b2c1 f5c0 b3c1 f6c0 b0c0 f7c0 b1c0 f4c1 b2c0 f5c1 b3c0 f6c1 b4c1 f7c1 b5c1 b6c1 b7c1 b4c0 b5c0 b6c0 b7c0
        stage 3: f0c0 f1c0 f2c0 f3c0 f0c1 b0c1 f1c1 b1c1 f2c1 b2c1 f3c1 b3c1 f4c0 b0c0 f5c0 b1c0 f6c0 b2c0 f7c0 b3c0 f4c1 b4c1 f5c1 b5c1 f6c1 b6c1 f7c1 b7c1 b4c0 b5c0 b6c0 b7c0
    """)


def test_zb_h1_p4_m8_matches_zero_bubble_figure_3_top():
    # Steady state of stage i runs (F x, B x-(p-1-i), W x-(p-1)): W delayed so all hold p in flight.
    assert render(make_schedule("zb-h1", 4, 8)) == rows("""
        stage 0: f0 f1 f2 f3 b0 w0 f4 b1 w1 f5 b2 w2 f6 b3 w3 f7 b4 w4 b5 w5 b6 w6 b7 w7
        stage 1: f0 f1 f2 b0 f3 b1 w0 f4 b2 w1 f5 b3 w2 f6 b4 w3 f7 b5 w4 b6 w5 b7 w6 w7
        stage 2: f0 f1 b0 f2 b1 f3 b2 w0 f4 b3 w1 f5 b4 w2 f6 b5 w3 f7 b6 w4 b7 w5 w6 w7
        stage 3: f0 b0 f1 b1 f2 b2 f3 b3 w0 f4 b4 w1 f5 b5 w2 f6 b6 w3 f7 b7 w4 w5 w6 w7
    """)


def test_bitpipe_p4_m4_matches_the_bitpipe_figure_slot_for_slot():
    # The authors' BitPipe figure (4 devices, micro-batches 1-2 down, 3-4 up), 0-based here.
    assert render(make_schedule("bitpipe", 4, 4)) == rows("""
        stage 0: f0c0 f1c0 f2c2 f2c3 f3c2 f3c3 f0c1 b0c1 f1c1 b1c1 b2c3 b2c2 b3c3 b3c2 b0c0 b1c0
        stage 1: f0c0 f2c2 f1c0 f3c2 f2c3 f0c1 f3c3 f1c1 b0c1 b2c3 b1c1 b3c3 b2c2 b0c0 b3c2 b1c0
        stage 2: f2c2 f0c0 f3c2 f1c0 f0c1 f2c3 f1c1 f3c3 b2c3 b0c1 b3c3 b1c1 b0c0 b2c2 b1c0 b3c2
        stage 3: f2c2 f3c2 f0c0 f0c1 f1c0 f1c1 f2c3 b2c3 f3c3 b3c3 b0c1 b0c0 b1c1 b1c0 b2c2 b3c2
    """)


def test_bitpipe_p4_m4_reproduces_the_figure_timing_too():
    from clustersim.schedules import simulate

    # In the figure F takes 1 slot, B 2 slots, and every device ends at slot 28.
    timeline = simulate(make_schedule("bitpipe", 4, 4), {ActionKind.F: 2.0, ActionKind.BW: 4.0})
    assert timeline.makespan == pytest.approx(28.0, rel=1e-9)


def test_vocab_1f1b_algorithms_place_output_passes_between_forward_and_backward():
    assert render(make_schedule("vocab-1f1b", 2, 3, algorithm=2)) == rows("""
        stage 0: if0 if1 f0 if2 f1 s0 f2 s1 t0 b0 s2 ib0 t1 b1 t2 ib1 b2 ib2
        stage 1: if0 if1 if2 f0 s0 f1 s1 b0 t0 f2 s2 b1 ib0 t1 b2 t2 ib1 ib2
    """)
    assert render(make_schedule("vocab-1f1b", 2, 3, algorithm=1)) == rows("""
        stage 0: if0 if1 f0 if2 f1 s0 f2 s1 t0 s2 t1 t2 b0 ib0 b1 ib1 b2 ib2
        stage 1: if0 if1 if2 f0 s0 f1 s1 t0 f2 s2 b0 t1 t2 b1 ib0 b2 ib1 ib2
    """)


def test_vocab_v_half_p2_m2_runs_output_passes_on_both_stages_between_the_v_turns():
    assert render(make_schedule("vocab-v-half", 2, 2)) == rows("""
        stage 0: if0 if1 f0c0 f1c0 f0c1 s0 b0c1 t0 f1c1 s1 w0c1 b0c0 ib0 b1c1 t1 w1c1 w0c0 b1c0 ib1 w1c0
        stage 1: if0 if1 f0c0 f0c1 f1c0 s0 f1c1 t0 b0c1 s1 w0c1 b0c0 w0c0 ib0 t1 b1c1 w1c1 b1c0 w1c0 ib1
    """)


def test_package_docstring_example_runs():
    import doctest

    import clustersim.schedules

    assert doctest.testmod(clustersim.schedules).failed == 0


@pytest.mark.parametrize("module, name, p, m, options", [
    ("gpipe", "gpipe", 3, 4, {}),
    ("one_f_one_b", "1f1b", 4, 8, {}),
    ("interleaved", "interleaved", 2, 4, {}),
    ("zero_bubble", "zb-h1", 4, 6, {}),
    ("v_shape", "v-half", 2, 3, {}),
    ("bitpipe", "bitpipe", 4, 4, {}),
    ("vocab_parallel", "vocab-1f1b", 2, 3, {}),
])
def test_docstring_examples_show_the_true_order(module, name, p, m, options):
    doc = importlib.import_module(f"clustersim.schedules.{module}").__doc__
    rendered = textwrap.indent(render(make_schedule(name, p, m, **options)), "    ")
    assert rendered in doc


# -- the data model ---------------------------------------------------------------------------


def test_actions_are_frozen_and_render_compactly():
    action = Action(2, ActionKind.F, 3, 1)
    with pytest.raises(AttributeError):
        action.stage = 0  # type: ignore[misc]
    assert str(action) == "f3c1" and action.describe() == "stage 2 f3c1"
    assert str(Action(0, ActionKind.BW, 4)) == "b4"
    assert ActionKind.BW.is_backward and ActionKind.BW.is_input_grad and ActionKind.BW.is_weight_grad
    assert ActionKind.W.is_backward and not ActionKind.W.is_input_grad
    assert ActionKind.S.is_forward and ActionKind.S.is_vocabulary and not ActionKind.F.is_vocabulary


def test_text_round_trips_and_b_means_split_only_with_its_w():
    for name in ("1f1b", "zb-h1", "interleaved", "bitpipe", "vocab-v-half"):
        schedule = make_schedule(name, 4, 8)
        assert parse_rows(render(schedule)) == schedule.actions
    (row,) = parse_rows(["f0 b0 w0 f1 b1"])
    assert [a.kind for a in row] == [ActionKind.F, ActionKind.B, ActionKind.W, ActionKind.F,
                                     ActionKind.BW]


def test_placements_follow_the_papers():
    interleaved = make_schedule("interleaved", 4, 8, 2)
    assert interleaved.placement == (0, 1, 2, 3, 0, 1, 2, 3)  # chunk c of stage s is c*p + s
    v = make_schedule("v-half", 4, 8)
    assert v.placement == (0, 1, 2, 3, 3, 2, 1, 0)  # stage 0 holds the first and the last chunk
    bit = make_schedule("bitpipe", 4, 8)
    assert bit.pipelines == (tuple(range(8)), tuple(range(8, 16)))
    assert [bit.layout.location(k)[0] for k in bit.pipelines[1]] == [3, 2, 1, 0, 0, 1, 2, 3]
    assert bit.microbatch_pipeline == (0, 0, 1, 1, 0, 0, 1, 1)


def test_dependencies_are_derived_and_cross_stage_edges_are_sends():
    s = make_schedule("interleaved", 2, 2, 2)
    f = Action(0, ActionKind.F, 1, 1)  # virtual stage 2 needs virtual stage 1 (stage 1, chunk 0)
    (dep,) = s.dependencies(f)
    assert dep.action == Action(1, ActionKind.F, 1, 0) and dep.link is Link.ACTIVATION
    b = Action(0, ActionKind.BW, 1, 0)  # virtual stage 0 needs its own F and virtual stage 1's BW
    assert [(d.action, d.link) for d in s.dependencies(b)] == [
        (Action(0, ActionKind.F, 1, 0), Link.LOCAL), (Action(1, ActionKind.BW, 1, 0), Link.GRADIENT)]
    links = {link for _, _, link in s.transfers()}
    assert links == {Link.ACTIVATION, Link.GRADIENT}


def test_vocabulary_dependencies_are_collectives_over_every_stage():
    s = make_schedule("vocab-1f1b", 3, 3, algorithm=2)
    last_backward = Action(2, ActionKind.BW, 1)
    deps = s.dependencies(last_backward)
    assert {d.action for d in deps if d.link is Link.OUTPUT_REDUCE} == {
        Action(st, ActionKind.S, 1) for st in range(3)}
    assert {d.link for d in s.dependencies(Action(0, ActionKind.T, 1))} == {Link.SOFTMAX_ALLREDUCE}
    assert {d.link for d in s.dependencies(Action(0, ActionKind.F, 1))} == {Link.EMBEDDING_REDUCE}
    assert s.dependencies(Action(1, ActionKind.S, 0))[0].action == Action(2, ActionKind.F, 0)


def test_registry_names_every_generator_and_rejects_unknown_names_helpfully():
    assert set(SCHEDULES) >= {"gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "v-min",
                              "v-half", "v-zb", "bitpipe", "vocab-1f1b", "vocab-v-half"}
    with pytest.raises(ScheduleError, match=r"unknown schedule 'vhalf'; did you mean 'v-half'\?"
                       r" Valid names: 1f1b, bitpipe, gpipe"):
        make_schedule("vhalf", 4, 8)


@pytest.mark.parametrize("call, message", [
    (lambda: make_schedule("interleaved", 4, 6), "multiple of the number of stages p = 4, got 6"),
    (lambda: make_schedule("interleaved", 4, 8, 1), "needs v >= 2 model chunks per stage, got 1"),
    (lambda: make_schedule("bitpipe", 3, 6), "needs an even number of stages, got 3"),
    (lambda: make_schedule("v-half", 4, 8, 3), "needs v = 2 model chunks per stage, got 3"),
    (lambda: make_schedule("1f1b", 4, 0), "needs num_microbatches >= 1, got 0"),
    (lambda: make_schedule("vocab-1f1b", 4, 8, algorithm=3), "algorithm = 1 or 2"),
    (lambda: make_schedule("1f1b", 4, 8, chunks=2), "does not take chunks; it takes: extra_warmup"),
])
def test_bad_arguments_say_what_was_expected_and_what_was_given(call, message):
    with pytest.raises(ConfigError, match=message) as caught:
        call()
    assert isinstance(caught.value, ScheduleError) and caught.value.key == "schedule"


def test_from_text_builds_a_schedule_with_the_default_layout():
    s = schedule_from_text("tiny", ["f0 f1 b0 b1", "f0 b0 f1 b1"])
    assert (s.num_stages, s.num_microbatches, s.num_chunks) == (2, 2, 1)
    assert str(s) == "stage 0: f0 f1 b0 b1\nstage 1: f0 b0 f1 b1"


def test_schedules_are_pure_data_and_import_no_engine_hardware_torch_or_plotting():
    code = ("import sys, clustersim.schedules as s; s.make_schedule('v-half', 4, 8); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('simpy', 'torch', 'matplotlib') "
            "or m.startswith(('clustersim.sim', 'clustersim.hardware'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

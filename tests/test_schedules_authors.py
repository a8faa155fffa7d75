"""Schedules exactly as their authors' schedulers produce them, and the papers' claims as properties.

Golden orders (``tests/data/authors_schedules.json``) come from running the zero-bubble authors'
own schedulers (``zb.py`` for ZB-H2 at a memory of 2p-1, ``zbv.py`` for V-ZB, ``zbv_greedy.py``
for V-Half and V-Min) with unit costs; the file records the commit. BitPipe's golden index lists
are the ones printed in the comments of the authors' ``bitpipe_schedule.py`` (p = 4, m = 8).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.schedules import (
    ActionKind,
    ScheduleArgumentError,
    make_schedule,
    peak_activations,
    simulate,
)

AUTHORS = json.loads((Path(__file__).parent / "data" / "authors_schedules.json").read_text())
CASES = [(name, key) for key, case in AUTHORS["cases"].items() for name in case]
FAST = settings(max_examples=25, deadline=None)


def tokens(schedule) -> list[str]:
    """Each stage's order as the fixture spells it: kind, micro-batch and (V-shapes) c + chunk."""
    v_shape = schedule.num_chunks == 2
    return [" ".join(f"{a.kind.value}{a.microbatch}" + (f"c{a.chunk}" if v_shape else "")
                     for a in row) for row in schedule.actions]


@pytest.mark.parametrize("name, key", CASES)
def test_order_is_the_authors_schedulers_order(name, key):
    p, m = map(int, key.split(","))
    assert tokens(make_schedule(name, p, m)) == AUTHORS["cases"][key][name]


def test_v_zb_reaches_zero_bubble_where_the_issue_saw_0_054():
    timeline = simulate(make_schedule("v-zb", 8, 32))
    assert timeline.span_bubble_fraction == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p, m, bubble", [(8, 16, 0.150), (4, 8, 0.094)])
def test_v_half_bubble_is_the_authors(p, m, bubble):
    # zbv_greedy.py prints its bubble rate to 4 digits: 0.1504 and 0.0943 here.
    assert simulate(make_schedule("v-half", p, m)).span_bubble_fraction == pytest.approx(bubble, abs=6e-4)


def test_zb_h2_matches_zb_h1_at_p8_m8_where_the_slots_took_34():
    h1 = simulate(make_schedule("zb-h1", 8, 8)).makespan
    h2 = simulate(make_schedule("zb-h2", 8, 8)).makespan
    assert h2 == pytest.approx(31.0, rel=1e-9) and h1 == pytest.approx(31.0, rel=1e-9)


# BitPipe, p = 4, m = 8: the authors' forward and backward index lists per rank (comments of
# get_microbatch_idx / get_bkmicrobatch_idx). Index i is micro-batch i % 8; i < 8 is the first
# half of its pipeline, i >= 8 the second.
BITPIPE_FORWARD = [
    [0, 1, 2, 10, 3, 11, 8, 9, 4, 5, 6, 14, 7, 15, 12, 13],
    [0, 2, 1, 3, 10, 8, 11, 9, 4, 6, 5, 7, 14, 12, 15, 13],
    [2, 0, 3, 1, 8, 10, 9, 11, 6, 4, 7, 5, 12, 14, 13, 15],
    [2, 3, 0, 8, 1, 9, 10, 11, 6, 7, 4, 12, 5, 13, 14, 15],
]
BITPIPE_BACKWARD = [
    [8, 9, 10, 2, 11, 3, 0, 1, 12, 13, 14, 6, 15, 7, 4, 5],
    [8, 10, 9, 11, 2, 0, 3, 1, 12, 14, 13, 15, 6, 4, 7, 5],
    [10, 8, 11, 9, 0, 2, 1, 3, 14, 12, 15, 13, 4, 6, 5, 7],
    [10, 11, 8, 0, 9, 1, 2, 3, 14, 15, 12, 4, 13, 5, 6, 7],
]


def _index(action) -> int:
    second = action.chunk in (1, 3)  # local chunks: down-first, down-second, up-first, up-second
    return action.microbatch + 8 * second


def test_bitpipe_p4_m8_runs_the_authors_index_lists_in_their_loop():
    schedule = make_schedule("bitpipe", 4, 8)
    for stage, row in enumerate(schedule.actions):
        assert [_index(a) for a in row if a.kind is ActionKind.F] == BITPIPE_FORWARD[stage]
        assert [_index(a) for a in row if a.kind is ActionKind.BW] == BITPIPE_BACKWARD[stage]
        # num_warmup_microbatches = p + p/2 + min(rank, p-1-rank) forwards, then F B pairs
        first_backward = next(i for i, a in enumerate(row) if a.kind is ActionKind.BW)
        assert first_backward == 6 + min(stage, 3 - stage) + 1


@pytest.mark.parametrize("call, message", [
    (lambda: make_schedule("v-half", 4, 8, extra_lifespan=-1), "extra_lifespan >= 0 (an int), got -1"),
    (lambda: make_schedule("v-half", 4, 8, extra_lifespan=True), "extra_lifespan >= 0 (an int), got True"),
    (lambda: make_schedule("v-zb", 4, 8, memory_limit=float("nan")), "memory_limit to be a finite number >= 1, got nan"),
    (lambda: make_schedule("v-zb", 4, 8, memory_limit=True), "finite number >= 1, got True"),
    (lambda: make_schedule("v-zb", 4, 8, memory_limit=0.5), "finite number >= 1, got 0.5"),
    (lambda: make_schedule("1f1b", 4, True), "num_microbatches >= 1, got True"),
])
def test_bad_options_are_value_errors_naming_the_option(call, message):
    with pytest.raises(ScheduleArgumentError, match=re.escape(message)) as error:
        call()
    assert isinstance(error.value, ValueError)


# -- the papers' claims, as properties ---------------------------------------------------------

@FAST
@given(st.integers(2, 8), st.integers(2, 4))
def test_v_zb_has_zero_span_bubble_at_peak_p_once_m_reaches_2p(p, multiple):
    # Controllable memory (NeurIPS 2024), Table 2: V-ZB, memory p, bubble 0 for m >= 2p.
    schedule = make_schedule("v-zb", p, multiple * p)
    assert simulate(schedule).span_bubble_fraction == pytest.approx(0.0, abs=1e-12)
    assert max(peak_activations(schedule)) == pytest.approx(p, rel=1e-9)


@FAST
@given(st.integers(2, 8), st.integers(0, 12))
def test_zb_h2_is_never_slower_than_zb_h1_and_holds_2p_minus_1(p, extra):
    m = 1 + extra
    h1 = simulate(make_schedule("zb-h1", p, m)).makespan
    h2_schedule = make_schedule("zb-h2", p, m)
    assert simulate(h2_schedule).makespan <= h1 * (1 + 1e-9)
    assert max(peak_activations(h2_schedule)) <= 2 * p - 1
    if m >= 2 * p - 1:  # the paper's parallelogram: no bubble inside any stage
        assert simulate(h2_schedule).span_bubble_fraction == pytest.approx(0.0, abs=1e-12)


@FAST
@given(st.integers(2, 8), st.integers(2, 4))
def test_v_half_and_v_min_hold_the_papers_memory_and_beat_1f1b_bubble(p, multiple):
    # Controllable memory, Section 3: V-Half about p/2 + 1, V-Min about p/3 + 4/3 (in micro-batches
    # of a full stage); bubbles below 1F1B's (p-1)/(m+p-1) share at m >= 2p.
    m = multiple * p
    half, small = make_schedule("v-half", p, m), make_schedule("v-min", p, m)
    assert max(peak_activations(half)) <= math.ceil((p + 2) / 2)
    assert max(peak_activations(small)) <= math.ceil((p + 4) / 3)
    one_f_one_b = simulate(make_schedule("1f1b", p, m)).span_bubble_fraction
    assert simulate(half).span_bubble_fraction < one_f_one_b

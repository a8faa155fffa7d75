"""Properties of every generator over random sizes and stage-time ratios (hypothesis).

Closed forms are checked exactly (relative tolerance 1e-9) in the idealised case they hold for:
uniform stages, zero communication cost.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.schedules import (
    SCHEDULES,
    ActionKind,
    activation_levels,
    critical_path,
    peak_activations,
    simulate,
)
from clustersim.schedules import make_schedule as make_validated


def make_schedule(*args, **options):
    """Generators without re-validating: one property test proves every generator validates."""
    return make_validated(*args, validate=False, **options)

K = ActionKind
FAST = settings(max_examples=60, deadline=None)

stages = st.integers(2, 8)
times = st.floats(0.1, 3.0, allow_nan=False, allow_infinity=False)


@st.composite
def sizes(draw, name: str):
    """(p, m, v) a generator accepts: BitPipe wants an even p, interleaved and BitPipe m % p == 0."""
    p = draw(st.sampled_from([2, 4, 6, 8]) if name == "bitpipe" else stages)
    if name in ("interleaved", "bitpipe"):
        m = p * draw(st.integers(1, 3))
    else:
        m = draw(st.integers(1, 3 * p))
    v = draw(st.integers(2, 4)) if name == "interleaved" else None
    return p, m, v


@st.composite
def any_schedule(draw):
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    p, m, v = draw(sizes(name))
    options = {"algorithm": draw(st.sampled_from([1, 2]))} if name.startswith("vocab") else {}
    return make_schedule(name, p, m, v, **options)


@st.composite
def uniform_durations(draw, weight: bool = True):
    """The same F, B, W on every stage (W may be 0 when ``weight`` is False)."""
    w = draw(times) if weight else draw(st.sampled_from([0.0, 0.5, 1.0]))
    return {K.F: draw(times), K.B: draw(times), K.W: w}


@st.composite
def per_stage_durations(draw, p: int):
    """Random stage-time ratios: each stage its own F, B, W."""
    return {kind: [draw(times) for _ in range(p)] for kind in (K.F, K.B, K.W)}


@FAST
@given(any_schedule())
def test_every_generated_schedule_validates(schedule):
    from clustersim.schedules import validate

    assert validate(schedule) is schedule


@FAST
@given(any_schedule(), st.data())
def test_makespan_is_never_below_the_critical_path_or_the_busiest_stage(schedule, data):
    durations = data.draw(per_stage_durations(schedule.num_stages))
    timeline = simulate(schedule, durations)
    assert timeline.makespan >= critical_path(schedule, durations) * (1 - 1e-12)
    busiest = max(timeline.busy(s) for s in range(schedule.num_stages))
    assert timeline.makespan >= busiest * (1 - 1e-12)
    assert 0.0 <= timeline.bubble_fraction < 1.0


@FAST
@given(any_schedule())
def test_every_activation_is_freed_and_never_exceeds_all_micro_batches(schedule):
    for trace in activation_levels(schedule):
        assert trace[-1] == pytest.approx(0.0, abs=1e-12)
        assert min(trace) >= -1e-12
        assert max(trace) <= schedule.num_microbatches + 1e-12


@FAST
@given(stages, st.integers(1, 24), uniform_durations(weight=False))
def test_1f1b_and_gpipe_bubble_is_the_closed_form(p, m, durations):
    expected = (p - 1) / (m + p - 1)
    for name in ("1f1b", "gpipe"):
        assert simulate(make_schedule(name, p, m), durations).bubble_fraction == pytest.approx(
            expected, rel=1e-9)


@FAST
@given(stages, st.integers(1, 24))
def test_gpipe_holds_all_micro_batches_and_1f1b_at_most_p(p, m):
    assert peak_activations(make_schedule("gpipe", p, m)) == (float(m),) * p
    peaks = peak_activations(make_schedule("1f1b", p, m))
    assert max(peaks) <= p
    assert peaks[0] == min(p, m)  # exactly p on stage 0 once m >= p


@FAST
@given(stages, st.integers(1, 3), st.integers(2, 4), uniform_durations(weight=False))
def test_interleaving_shrinks_the_bubble_by_the_factor_v(p, groups, v, durations):
    m = p * groups
    bubble = simulate(make_schedule("interleaved", p, m, v), durations).bubble_fraction
    assert bubble == pytest.approx((p - 1) / (v * m + p - 1), rel=1e-9)


@FAST
@given(stages, st.integers(1, 24))
def test_v_shapes_control_memory(p, m):
    one_f_one_b = max(peak_activations(make_schedule("1f1b", p, m)))
    v_half = max(peak_activations(make_schedule("v-half", p, m)))
    v_min = max(peak_activations(make_schedule("v-min", p, m)))
    v_zb = max(peak_activations(make_schedule("v-zb", p, m)))
    assert v_half <= math.ceil((p + 2) / 2)  # about half of 1F1B's p
    assert v_min <= math.ceil((p + 4) / 3)  # about a third
    assert v_zb <= p
    assert v_min <= v_half <= max(one_f_one_b, 1)


@FAST
@given(stages, st.integers(1, 24), uniform_durations(weight=True))
def test_zero_bubble_beats_1f1b_when_weight_gradients_take_time(p, m, durations):
    baseline = simulate(make_schedule("1f1b", p, m), durations).bubble_fraction
    h1 = simulate(make_schedule("zb-h1", p, m), durations).bubble_fraction
    assert h1 < baseline
    assert max(peak_activations(make_schedule("zb-h1", p, m))) == min(p, m)  # 1F1B's memory


@FAST
@given(stages, st.integers(0, 16), times, times, st.floats(0.05, 1.0))
def test_zb_h1_bubble_is_the_papers_closed_form(p, extra, f, b, w_share):
    # Zero Bubble (ICLR 2024), Section 2.1: each stage idles (p-1)(T_F + T_B - T_W), for T_W
    # no longer than T_F and T_B, once there are at least p micro-batches.
    m, w = p + extra, w_share * min(f, b)
    timeline = simulate(make_schedule("zb-h1", p, m), {K.F: f, K.B: b, K.W: w})
    idle = timeline.makespan - m * (f + b + w)
    assert idle == pytest.approx((p - 1) * (f + b - w), rel=1e-9)


@FAST
@given(stages, st.integers(2, 6))
def test_zb_h2_has_no_bubble_inside_stages_and_vanishing_bubble_overall(p, multiple):
    m = multiple * p
    timeline = simulate(make_schedule("zb-h2", p, m))  # T_F = T_B = T_W = 1
    assert timeline.span_bubble_fraction == pytest.approx(0.0, abs=1e-12)
    assert timeline.bubble_fraction == pytest.approx((p - 1) / (3 * m + p - 1), rel=1e-9)
    assert max(peak_activations(make_schedule("zb-h2", p, m))) == 2 * p - 1


@FAST
@given(stages, st.integers(2, 6))
def test_v_zb_beats_1f1b_at_the_same_memory(p, multiple):
    m = multiple * p
    baseline = simulate(make_schedule("1f1b", p, m)).bubble_fraction
    assert simulate(make_schedule("v-zb", p, m)).bubble_fraction < baseline


@FAST
@given(stages, st.integers(1, 24), st.sampled_from([1, 2]))
def test_vocabulary_parallel_1f1b_holds_p_plus_one_or_two_micro_batches(p, m, algorithm):
    peaks = peak_activations(make_schedule("vocab-1f1b", p, m, algorithm=algorithm))
    assert peaks[0] == min(p + 3 - algorithm, m)  # the paper: p+2 (Algorithm 1), p+1 (Algorithm 2)


@FAST
@given(st.integers(3, 8), st.integers(2, 4), st.sampled_from([1, 2]))
def test_vocabulary_parallel_v_half_balances_memory_over_stages(p, multiple, algorithm):
    peaks = peak_activations(make_schedule("vocab-v-half", p, multiple * p, algorithm=algorithm))
    assert max(peaks) - min(peaks) <= 0.5

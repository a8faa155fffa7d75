"""Broken schedules get the right error, naming stage, action and the rule they break."""

from __future__ import annotations

import pytest

from clustersim.errors import DeadlockError, ScheduleError
from clustersim.schedules import Action, ActionKind, make_schedule, schedule_from_text, validate
from clustersim.schedules.text import parse_rows
from clustersim.schedules.validate import check_communication, replay


def broken(name: str, p: int, m: int, rows: list[str]):
    """``name``'s layout with hand-written (broken) per-stage rows."""
    return make_schedule(name, p, m).with_actions(parse_rows(rows), name=f"broken {name}")


def test_a_sound_schedule_passes_every_pass_and_comes_back():
    schedule = make_schedule("zb-h1", 4, 8)
    assert validate(schedule) is schedule


def test_swapped_order_deadlocks_and_the_error_lists_every_stuck_head():
    # Stage 0 starts its backward after one forward, stage 1 wants both forwards first.
    schedule = schedule_from_text("too little warm-up", ["f0 b0 f1 b1", "f0 f1 b0 b1"])
    with pytest.raises(DeadlockError) as caught:
        validate(schedule)
    message = str(caught.value)
    assert "deadlocks after 2 of 8 actions" in message
    assert "stage 0 stuck at b0 (position 1) waiting for stage 1 b0" in message
    assert "stage 1 stuck at f1 (position 1) waiting for stage 0 f1" in message
    assert caught.value.stuck == (Action(0, ActionKind.BW, 0), Action(1, ActionKind.F, 1))


def test_a_deadlock_in_an_interleaved_schedule_names_chunks():
    schedule = make_schedule("interleaved", 2, 2, 2)
    rows = [list(row) for row in schedule.actions]
    # Stage 1 now wants chunk 1 of micro-batch 0 before it has run chunk 0 of micro-batch 1.
    rows[1] = [Action(1, ActionKind.F, 0, 0), Action(1, ActionKind.F, 0, 1)] + [
        a for a in rows[1] if a not in (Action(1, ActionKind.F, 0, 0), Action(1, ActionKind.F, 0, 1))]
    rows[0] = [Action(0, ActionKind.F, 0, 0), Action(0, ActionKind.BW, 0, 0)] + [
        a for a in rows[0] if a not in (Action(0, ActionKind.F, 0, 0), Action(0, ActionKind.BW, 0, 0))]
    with pytest.raises(DeadlockError, match=r"stage 0 stuck at b0c0 .* waiting for stage 1 b0c0"):
        validate(schedule.with_actions(rows))


def test_missing_action_is_named_with_its_stage():
    schedule = make_schedule("zb-h1", 4, 4)
    rows = [list(row) for row in schedule.actions]
    rows[2].remove(Action(2, ActionKind.W, 3))  # a deferred W never drained before the step
    with pytest.raises(ScheduleError, match=r"stage 2: w3: missing \(rule: every \(micro-batch, "
                                            r"chunk\) action exactly once") as caught:
        validate(schedule.with_actions(rows))
    assert caught.value.stage == 2 and caught.value.action == Action(2, ActionKind.W, 3)
    assert caught.value.rule.startswith("every (micro-batch")


def test_w_before_b_breaks_the_local_order_rule():
    schedule = broken("zb-h1", 2, 2, ["f0 f1 b0 w0 b1 w1", "f0 w0 b0 f1 b1 w1"])
    with pytest.raises(ScheduleError, match=r"stage 1: w0: comes before b0 \(rule: W after B\)"):
        validate(schedule)


def test_backward_before_its_forward_breaks_the_local_order_rule():
    schedule = broken("1f1b", 2, 2, ["f0 f1 b0 b1", "b0 f0 f1 b1"])
    with pytest.raises(ScheduleError, match=r"stage 1: b0: comes before f0 \(rule: B after F\)"):
        validate(schedule)


def test_duplicates_and_foreign_chunks_are_rejected():
    with pytest.raises(ScheduleError, match=r"stage 0: f1: appears 2 times"):
        validate(broken("1f1b", 2, 2, ["f0 f1 f1 b0 b1", "f0 b0 f1 b1"]))
    with pytest.raises(ScheduleError, match=r"stage 0: f0c1: micro-batch 0 does not visit chunk 1"):
        validate(broken("1f1b", 2, 2, ["f0c1 f1 b0 b1", "f0 b0 f1 b1"]))
    with pytest.raises(ScheduleError, match=r"vocabulary pass in a schedule without vocabulary"):
        validate(broken("1f1b", 2, 2, ["s0 f0 f1 b0 b1", "f0 b0 f1 b1"]))


def test_fused_and_split_backward_of_one_chunk_cannot_mix():
    with pytest.raises(ScheduleError, match=r"stage 0: b0: fused backward together with a separate w"):
        validate(broken("zb-h1", 2, 1, ["f0 bw0 w0", "f0 b0 w0"]))


def test_communication_pass_matches_sends_and_receives():
    # Stage 1 never runs f1: stage 0's activation send has no receive.
    no_receive = broken("1f1b", 2, 2, ["f0 f1 b0 b1", "f0 b0 b1"])
    with pytest.raises(ScheduleError, match=r"stage 0: f1: sends activation to stage 1 f1, which "
                                            r"stage 1 never runs \(rule: every send has a matching receive\)"):
        check_communication(no_receive)
    # Stage 0 never runs f1: stage 1's receive has no send.
    no_send = broken("1f1b", 2, 2, ["f0 b0 b1", "f0 b0 f1 b1"])
    with pytest.raises(ScheduleError, match=r"stage 1: f1: waits for stage 0 f1 \(activation\), "
                                            r"which stage 0 never runs"):
        check_communication(no_send)


def test_validate_runs_only_the_named_passes_and_knows_their_names():
    deadlocked = schedule_from_text("x", ["f0 b0 f1 b1", "f0 f1 b0 b1"])
    assert validate(deadlocked, passes=["structure", "exactly once", "local order"]) is deadlocked
    with pytest.raises(ScheduleError, match=r"unknown validation pass\(es\) \['typo'\]"):
        validate(deadlocked, passes=["typo"])


def test_replay_visits_every_action_once_in_a_dependency_respecting_order():
    schedule = make_schedule("bitpipe", 4, 8)
    seen: list[Action] = []
    replay(schedule, seen.append)
    assert sorted(map(str, seen)) == sorted(map(str, schedule)) and len(seen) == len(schedule)
    position = {a: i for i, a in enumerate(seen)}
    assert all(position[d.action] < position[a] for a, d in schedule.edges())

"""Zero-bubble handcrafted schedules ZB-H1 and ZB-H2: backward split into ``B`` and ``W``.

Qi, Wan, Huang and Lin, "Zero Bubble Pipeline Parallelism", ICLR 2024, Section 2 and Figure 3.
``B`` (input gradient) stays on the critical path; ``W`` (weight gradient) only needs its own
``B``, so it is deferred to fill bubbles.

Both are written as slots: in slot ``x`` stage ``i`` runs ``F x``, ``B x-b``, ``W x-w`` (each when
it exists), which reproduces the warm-up, steady state and cool-down of the paper's figure:

- ZB-H1 (``b = p-1-i``, ``w = p-1``): 1F1B's order with every stage's ``W`` delayed so that all
  stages hold p micro-batches in flight. Peak memory equals 1F1B's (p on stage 0); the bubble is
  about a third of 1F1B's when ``T_F = T_B = T_W``.
- ZB-H2: more warm-up forwards fill the bubble before the first ``B``, and the tail ``W``
  passes turn the trapezoid into a parallelogram: zero bubble inside each stage's span at the
  cost of 2p-1 micro-batches of activations. The paper draws it by hand for m >= 2p-1; its
  slots (``b = 2(p-1-i)``, ``w = 2(p-1)``) are slower than ZB-H1 for 3 <= m < 2p-1. We follow
  the authors' code instead: their heuristic scheduler (:mod:`.zero_bubble_heuristic`) at a
  memory limit of 2p-1 micro-batches, which gives the parallelogram when m is large enough
  and is never slower than ZB-H1 (p = 8, m = 8: makespan 31 against the slots' 34).

ZB-H1, p = 4, m = 6::

    stage 0: f0 f1 f2 f3 b0 w0 f4 b1 w1 f5 b2 w2 b3 w3 b4 w4 b5 w5
    stage 1: f0 f1 f2 b0 f3 b1 w0 f4 b2 w1 f5 b3 w2 b4 w3 b5 w4 w5
    stage 2: f0 f1 b0 f2 b1 f3 b2 w0 f4 b3 w1 f5 b4 w2 b5 w3 w4 w5
    stage 3: f0 b0 f1 b1 f2 b2 f3 b3 w0 f4 b4 w1 f5 b5 w2 w3 w4 w5
"""

from __future__ import annotations

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import ScheduleArgumentError, require_chunks, require_positive
from clustersim.schedules.layout import interleaved_placement
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.zero_bubble_heuristic import zero_bubble_orders


def slot_order(stage: int, m: int, b_lag: int, w_lag: int) -> list[Action]:
    """Slot x runs F x, B x-b_lag, W x-w_lag (each if 0 <= index < m)."""
    order: list[Action] = []
    for x in range(m + max(b_lag, w_lag)):
        for kind, lag in ((ActionKind.F, 0), (ActionKind.B, b_lag), (ActionKind.W, w_lag)):
            if 0 <= x - lag < m:
                order.append(Action(stage, kind, x - lag))
    return order


def zb_h1(p: int, m: int, v: int = 1) -> Schedule:
    """ZB-H1: 1F1B memory, about a third of its bubble."""
    require_positive("ZB-H1", num_stages=p, num_microbatches=m)
    require_chunks("ZB-H1", v, (1,))
    actions = tuple(tuple(slot_order(i, m, p - 1 - i, p - 1)) for i in range(p))
    return Schedule("zb-h1", p, m, 1, interleaved_placement(p, 1), actions)


def zb_h2(p: int, m: int, v: int = 1) -> Schedule:
    """ZB-H2: 2p-1 micro-batches of activations, no bubble inside a stage's span (m >= 2p-1)."""
    require_positive("ZB-H2", num_stages=p, num_microbatches=m)
    require_chunks("ZB-H2", v, (1,))
    actions = zero_bubble_orders(p, m, 2 * p - 1)
    if actions is None:  # never at 2p-1 >= p: 1F1B's order fits in p
        raise ScheduleArgumentError(f"ZB-H2 found no order for p = {p}, m = {m} within 2p-1 "
                                    f"micro-batches of activations")
    return Schedule("zb-h2", p, m, 1, interleaved_placement(p, 1), actions)

"""1F1B (PipeDream-Flush): warm up with forwards, then alternate one forward and one backward.

Narayanan et al., "Memory-Efficient Pipeline-Parallel DNN Training", ICML 2021 (PipeDream-2BW's
flush variant), and Narayanan et al., "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", SC 2021, Figure 4 (top): Megatron's non-interleaved schedule.

Stage ``s`` runs ``min(p - s - 1, m)`` warm-up forwards, then pairs (``F`` of the next
micro-batch, ``BW`` of the oldest), then the remaining backwards. Written as slots: in slot ``x``
stage ``s`` runs ``F x`` then ``BW x-(p-1-s)`` (each when it exists). Stage ``s`` holds at most
``p - s`` micro-batches of activations; the bubble is (p-1)/(m+p-1) with uniform stages.

``extra_warmup`` adds forwards before the first backward on every stage (one more micro-batch in
flight each); vocabulary parallelism uses it to hide its output-layer round trip.

p = 4, m = 8::

    stage 0: f0 f1 f2 f3 b0 f4 b1 f5 b2 f6 b3 f7 b4 b5 b6 b7
    stage 1: f0 f1 f2 b0 f3 b1 f4 b2 f5 b3 f6 b4 f7 b5 b6 b7
    stage 2: f0 f1 b0 f2 b1 f3 b2 f4 b3 f5 b4 f6 b5 f7 b6 b7
    stage 3: f0 b0 f1 b1 f2 b2 f3 b3 f4 b4 f5 b5 f6 b6 f7 b7
"""

from __future__ import annotations

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import ScheduleArgumentError, require_chunks, require_positive
from clustersim.schedules.layout import interleaved_placement
from clustersim.schedules.schedule import Schedule


def one_f_one_b_order(p: int, m: int, stage: int, extra_warmup: int = 0) -> list[Action]:
    """Stage ``stage``'s 1F1B order, slot by slot."""
    lag = p - 1 - stage + extra_warmup
    order: list[Action] = []
    for x in range(m + lag):
        if x < m:
            order.append(Action(stage, ActionKind.F, x))
        if 0 <= x - lag < m:
            order.append(Action(stage, ActionKind.BW, x - lag))
    return order


def one_f_one_b(p: int, m: int, v: int = 1, *, extra_warmup: int = 0) -> Schedule:
    """1F1B with ``p`` stages and ``m`` micro-batches (one chunk per stage)."""
    require_positive("1F1B", num_stages=p, num_microbatches=m)
    require_chunks("1F1B", v, (1,))
    if not isinstance(extra_warmup, int) or extra_warmup < 0:
        raise ScheduleArgumentError(f"1F1B needs extra_warmup >= 0, got {extra_warmup!r}")
    actions = tuple(tuple(one_f_one_b_order(p, m, s, extra_warmup)) for s in range(p))
    return Schedule("1f1b", p, m, 1, interleaved_placement(p, 1), actions)

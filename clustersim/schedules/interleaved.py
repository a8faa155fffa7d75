"""Interleaved 1F1B: each stage holds ``v`` model chunks, cutting the bubble by a factor ``v``.

Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", SC 2021, Section 2.2.2 and Figure 4 (bottom). Chunk ``c`` of stage ``s`` is
virtual stage ``c*p + s`` (looping placement).

Megatron's order, per stage: the k-th forward runs chunk ``(k // p) % v`` of micro-batch
``(k // (p*v)) * p + k % p`` (micro-batches advance in groups of p, one chunk at a time); the
k-th backward walks the chunks in reverse. Stage ``s`` warms up with
``(p - s - 1) * 2 + (v - 1) * p`` forwards, then alternates forward and backward, then drains.
Like Megatron, it needs the number of micro-batches to be a multiple of p. With uniform stages
(each chunk pass taking 1/v of the stage's time) the bubble is (p-1)/(v*m + p - 1).

p = 2, m = 4, v = 2::

    stage 0: f0c0 f1c0 f0c1 f1c1 f2c0 b0c1 f3c0 b1c1 f2c1 b0c0 f3c1 b1c0 b2c1 b3c1 b2c0 b3c0
    stage 1: f0c0 f1c0 f0c1 b0c1 f1c1 b1c1 f2c0 b0c0 f3c0 b1c0 f2c1 b2c1 f3c1 b3c1 b2c0 b3c0
"""

from __future__ import annotations

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import (
    ScheduleArgumentError,
    require_multiple,
    require_positive,
)
from clustersim.schedules.layout import interleaved_placement
from clustersim.schedules.schedule import Schedule


def _megatron_slot(k: int, p: int, v: int, forward: bool) -> tuple[int, int]:
    """(micro-batch, chunk) of the k-th forward (or backward) on a stage."""
    chunk = (k // p) % v
    if not forward:
        chunk = v - 1 - chunk
    return (k // (p * v)) * p + k % p, chunk


def interleaved_order(p: int, m: int, v: int, stage: int) -> list[Action]:
    total = m * v
    warmup = min((p - stage - 1) * 2 + (v - 1) * p, total)

    def forward(k: int) -> Action:
        mb, chunk = _megatron_slot(k, p, v, True)
        return Action(stage, ActionKind.F, mb, chunk)

    def backward(k: int) -> Action:
        mb, chunk = _megatron_slot(k, p, v, False)
        return Action(stage, ActionKind.BW, mb, chunk)

    order = [forward(k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [forward(warmup + k), backward(k)]
    order += [backward(k) for k in range(total - warmup, total)]
    return order


def interleaved(p: int, m: int, v: int = 2) -> Schedule:
    """Megatron interleaved 1F1B with ``v`` chunks per stage (``m`` a multiple of ``p``)."""
    require_positive("Interleaved 1F1B", num_stages=p, num_microbatches=m, num_chunks=v)
    if v < 2:
        raise ScheduleArgumentError(
            f"Interleaved 1F1B needs v >= 2 model chunks per stage, got {v} (use '1f1b' for v = 1)")
    require_multiple("Interleaved 1F1B (as in Megatron)", m, p, "the number of stages p")
    actions = tuple(tuple(interleaved_order(p, m, v, s)) for s in range(p))
    return Schedule("interleaved", p, m, v, interleaved_placement(p, v), actions)

"""V-shape schedules with controllable memory: V-Min, V-Half and V-ZB.

Qi, Wan, Amar and Lin, "Pipeline Parallelism with Controllable Memory", NeurIPS 2024. Each stage
holds two chunks placed in a V (stage ``s`` holds virtual stages ``s`` and ``2p-1-s``, so stage
0 holds the first and the last chunk), with the backward split into ``B`` and ``W``. In units of
one micro-batch on one full stage, with ``T_F = T_B = T_W``:

=======  =====================  ====================
name     peak activations       bubble (paper)
=======  =====================  ====================
V-Min    about (p + 4) / 3      about 2p / 3m
V-Half   about (p + 2) / 2      about p / 2m
V-ZB     p (as 1F1B)            about 0
=======  =====================  ====================

V-Min and V-Half repeat the paper's building blocks (Figure 3; offsets as in the authors'
open-source implementation), period 6 slots (two ``F``, two ``B``, two ``W`` per stage), with the
offsets below; see :mod:`clustersim.schedules.building_block` for the repetition and the squeeze
of warm-up and cool-down. Stage ``i``'s slots for (F chunk 0, F chunk 1, B chunk 1, B chunk 0):

- V-Min: ``i``, ``2p-1-i``, ``2p+g+i``, ``4p+g-1-i`` with ``g = 2`` when 3 divides p, else 0;
- V-Half: ``2i``, ``3p-2-i``, ``3p+g-1+2i``, ``6p+g-2-i`` with ``g = 3`` when p is even, else 0
  (the gap ``g`` keeps the four passes in distinct slots modulo the period).

V-ZB comes from the zero-bubble authors' greedy search rather than a block: here an event loop
with unit-cost passes where an idle stage runs, in priority order, a ready ``B``, a ready ``F`` of
chunk 1, an ``F`` of chunk 0 if admitting a new micro-batch keeps its reserved activations within
``memory_limit`` (default p), and otherwise a pending ``W`` (so ``W`` fills bubbles).

V-Half, p = 2, m = 3::

    stage 0: f0c0 f1c0 f2c0 f0c1 b0c1 w0c1 f1c1 b1c1 b0c0 w0c0 w1c1 f2c1 b2c1 w2c1 b1c0 w1c0 b2c0 w2c0
    stage 1: f0c0 f0c1 f1c0 f1c1 b0c1 w0c1 b0c0 w0c0 f2c0 f2c1 b1c1 w1c1 b1c0 w1c0 b2c1 w2c1 b2c0 w2c0
"""

from __future__ import annotations

from collections import deque

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import ScheduleArgumentError, require_chunks, require_positive
from clustersim.schedules.building_block import BuildingBlock, orders_from_block
from clustersim.schedules.greedy import Ready, greedy_orders
from clustersim.schedules.layout import Layout, v_shape_placement
from clustersim.schedules.schedule import Schedule

V_PASSES = ((ActionKind.F, 0), (ActionKind.F, 1), (ActionKind.B, 1), (ActionKind.B, 0))


def v_min_block(p: int) -> BuildingBlock:
    g = 2 if p % 3 == 0 else 0
    return BuildingBlock(6, V_PASSES, tuple(
        (i, 2 * p - 1 - i, 2 * p + g + i, 4 * p + g - 1 - i) for i in range(p)))


def v_half_block(p: int) -> BuildingBlock:
    g = 3 if p % 2 == 0 else 0
    return BuildingBlock(6, V_PASSES, tuple(
        (2 * i, 3 * p - 2 - i, 3 * p + g - 1 + 2 * i, 6 * p + g - 2 - i) for i in range(p)))


def _check(name: str, p: int, m: int, v: int) -> None:
    require_positive(name, num_stages=p, num_microbatches=m)
    require_chunks(name, v, (2,))


def v_min(p: int, m: int, v: int = 2) -> Schedule:
    """V-Min: about a third of 1F1B's activation memory."""
    _check("V-Min", p, m, v)
    layout = Layout.single(p, m, v_shape_placement(p))
    return Schedule("v-min", p, m, 2, layout.placement, orders_from_block(v_min_block(p), layout))


def v_half(p: int, m: int, v: int = 2, *, extra_lifespan: int = 0) -> Schedule:
    """V-Half: about half of 1F1B's activation memory, at 1F1B-like throughput or better.

    ``extra_lifespan`` delays every backward by that many block periods (one more micro-batch of
    activations per period); vocabulary parallelism uses it to make room for its output passes.
    """
    _check("V-Half", p, m, v)
    layout = Layout.single(p, m, v_shape_placement(p))
    block = v_half_block(p).delayed(extra_lifespan)
    return Schedule("v-half", p, m, 2, layout.placement, orders_from_block(block, layout))


class _VZeroBubble:
    """The V-ZB greedy policy (see the module docstring)."""

    def __init__(self, p: int, m: int, memory_limit: float) -> None:
        self.m = m
        self.cap = 2 * memory_limit  # in chunk units: one chunk holds half a stage's activations
        self.next_f = [[0, 0] for _ in range(p)]
        self.next_b = [[0, 0] for _ in range(p)]
        self.weights: list[deque[Action]] = [deque() for _ in range(p)]
        self.reserved = [0] * p
        self.remaining = 6 * p * m

    def choose(self, stage: int, ready: Ready) -> Action | None:
        backward = [Action(stage, ActionKind.B, mb, c)
                    for c, mb in enumerate(self.next_b[stage]) if mb < self.m]
        backward = [a for a in backward if ready(a)]
        if backward:
            return min(backward, key=lambda a: a.microbatch)
        for chunk in (1, 0):
            mb = self.next_f[stage][chunk]
            if mb >= self.m:
                continue
            if chunk == 0 and self.reserved[stage] + 2 > self.cap:
                continue
            action = Action(stage, ActionKind.F, mb, chunk)
            if ready(action):
                return action
        return self.weights[stage][0] if self.weights[stage] else None

    def commit(self, action: Action) -> None:
        s, c = action.stage, action.chunk
        self.remaining -= 1
        if action.kind is ActionKind.F:
            self.next_f[s][c] += 1
            self.reserved[s] += 2 if c == 0 else 0
        elif action.kind is ActionKind.B:
            self.next_b[s][c] += 1
            self.weights[s].append(Action(s, ActionKind.W, action.microbatch, c))
        else:
            self.weights[s].popleft()
            self.reserved[s] -= 1

    def finished(self) -> bool:
        return self.remaining == 0


def v_zb(p: int, m: int, v: int = 2, *, memory_limit: float | None = None) -> Schedule:
    """V-ZB: V-shape zero-bubble schedule within ``memory_limit`` (default p, as 1F1B)."""
    _check("V-ZB", p, m, v)
    limit = p if memory_limit is None else memory_limit
    if limit < 1:
        raise ScheduleArgumentError(f"V-ZB needs memory_limit >= 1 micro-batch of activations, "
                                    f"got {limit}")
    layout = Layout.single(p, m, v_shape_placement(p))
    orders = greedy_orders(layout, _VZeroBubble(p, m, limit), lambda action: 1.0)
    return Schedule("v-zb", p, m, 2, layout.placement, orders)

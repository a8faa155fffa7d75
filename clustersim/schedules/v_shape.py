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

Both follow the authors' ``zbv_greedy.py`` order exactly (squeezed twice; see the building-block
module for where that code and the paper differ). V-ZB comes from the authors' greedy heuristic
rather than a block (``zbv.py``; :mod:`clustersim.schedules.v_zero_bubble`), within
``memory_limit`` micro-batches of activations (default p): zero bubble inside each stage's span
for m >= 2p.

V-Half, p = 2, m = 3::

    stage 0: f0c0 f1c0 f2c0 f0c1 b0c1 w0c1 f1c1 b0c0 b1c1 w1c1 f2c1 b2c1 b1c0 w2c1 b2c0 w0c0 w1c0 w2c0
    stage 1: f0c0 f0c1 f1c0 f1c1 b0c1 w0c1 b0c0 w0c0 f2c0 f2c1 b1c1 b1c0 b2c1 b2c0 w1c1 w2c1 w1c0 w2c0
"""

from __future__ import annotations

import math

from clustersim.schedules.arguments import (
    ScheduleArgumentError,
    require_chunks,
    require_count,
    require_positive,
    require_real,
)
from clustersim.schedules.building_block import V_PASSES, BuildingBlock, orders_from_block
from clustersim.schedules.layout import Layout, v_shape_placement
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.v_zero_bubble import v_zero_bubble_orders


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
    require_count("V-Half", "extra_lifespan", extra_lifespan, 0)
    layout = Layout.single(p, m, v_shape_placement(p))
    block = v_half_block(p).delayed(extra_lifespan)
    return Schedule("v-half", p, m, 2, layout.placement, orders_from_block(block, layout))


def v_zb(p: int, m: int, v: int = 2, *, memory_limit: float | None = None) -> Schedule:
    """V-ZB: V-shape zero-bubble schedule within ``memory_limit`` (default p, as 1F1B)."""
    _check("V-ZB", p, m, v)
    limit = p if memory_limit is None else require_real("V-ZB", "memory_limit", memory_limit, 1)
    try:
        orders = v_zero_bubble_orders(p, m, math.floor(2 * limit))
    except (IndexError, KeyError) as error:  # the heuristic ran out of W passes to free memory
        raise ScheduleArgumentError(
            f"V-ZB cannot schedule p = {p}, m = {m} within memory_limit = {limit} micro-batches "
            f"of activations; raise memory_limit (p = {p} always fits)") from error
    return Schedule("v-zb", p, m, 2, v_shape_placement(p), orders)

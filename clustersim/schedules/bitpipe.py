"""BitPipe: two V-shaped interleaved pipelines running in opposite directions.

Wu, Chen and Yu, "BitPipe: Bidirectional Interleaved Pipeline Parallelism for Accelerating Large
Models Training", 2024 (arXiv:2410.19367), Figure "BitPipe" (the ``BitPipe-v.svg`` figure of the
authors' repository). The model is replicated: the *down* pipeline walks its 2p chunks from stage
0 to stage p-1 and back (V-shape), the *up* pipeline walks its own 2p chunks from stage p-1 to
stage 0 and back. Each stage therefore holds four chunks: down-first (chunk 0), down-second
(chunk 1), up-first (chunk 2), up-second (chunk 3); a micro-batch visits two of them, each half
of a stage's layers. Backward is fused (``BW``).

Micro-batches come in units of p: in unit ``u``, micro-batches ``u*p .. u*p + p/2 - 1`` go down
and the next p/2 go up. Within a unit, the k-th micro-batch of a direction enters at time 2k and
each pass takes one unit of time (``F``) or two (``B``), which gives every stage a forward order
and a backward order: forward at position i of the path at ``2k + i``, backward at
``2p + 4k + 2(2p-1-i)`` (this reproduces the paper's figure exactly for p = 4, m = 4). Units are
concatenated, and each stage interleaves its two lists greedily: a ready backward first, else the
next forward while at most 2p forwards (one unit) are in flight. Needs an even p and m a multiple
of p, as the authors' implementation does.

p = 4, m = 4 (the paper's figure, 0-based micro-batches)::

    stage 0: f0c0 f1c0 f2c2 f2c3 f3c2 f3c3 f0c1 b0c1 f1c1 b1c1 b2c3 b2c2 b3c3 b3c2 b0c0 b1c0
    stage 1: f0c0 f2c2 f1c0 f3c2 f2c3 f0c1 f3c3 f1c1 b0c1 b2c3 b1c1 b3c3 b2c2 b0c0 b3c2 b1c0
    stage 2: f2c2 f0c0 f3c2 f1c0 f0c1 f2c3 f1c1 f3c3 b2c3 b0c1 b3c3 b1c1 b0c0 b2c2 b1c0 b3c2
    stage 3: f2c2 f3c2 f0c0 f0c1 f1c0 f1c1 f2c3 b2c3 f3c3 b3c3 b0c1 b0c0 b1c1 b1c0 b2c2 b3c2
"""

from __future__ import annotations

from collections import deque

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import (
    require_chunks,
    require_even_stages,
    require_multiple,
    require_positive,
)
from clustersim.schedules.greedy import Ready, greedy_orders
from clustersim.schedules.layout import Layout, bidirectional_v_placement
from clustersim.schedules.schedule import Schedule


def bitpipe_routing(p: int, m: int) -> tuple[int, ...]:
    """Pipeline (0 down, 1 up) of each micro-batch: the first half of each unit of p goes down."""
    return tuple(0 if mb % p < p // 2 else 1 for mb in range(m))


def _unit_lists(layout: Layout, p: int, m: int) -> tuple[list[list[Action]], list[list[Action]]]:
    """Per stage, the forward list and the backward list, unit after unit."""
    forwards: list[list[Action]] = [[] for _ in range(p)]
    backwards: list[list[Action]] = [[] for _ in range(p)]
    for unit in range(m // p):
        timed_f: list[list[tuple[int, Action]]] = [[] for _ in range(p)]
        timed_b: list[list[tuple[int, Action]]] = [[] for _ in range(p)]
        for mb in range(unit * p, (unit + 1) * p):
            k = mb % (p // 2)
            for i, vs in enumerate(layout.path(mb)):
                stage = layout.location(vs)[0]
                timed_f[stage].append((2 * k + i, layout.action(ActionKind.F, mb, vs)))
                timed_b[stage].append((2 * p + 4 * k + 2 * (2 * p - 1 - i),
                                       layout.action(ActionKind.BW, mb, vs)))
        for stage in range(p):
            forwards[stage] += [a for _, a in sorted(timed_f[stage], key=lambda x: x[0])]
            backwards[stage] += [a for _, a in sorted(timed_b[stage], key=lambda x: x[0])]
    return forwards, backwards


class _Interleave:
    """Backward first when ready, else the next forward within the in-flight limit."""

    def __init__(self, forwards: list[list[Action]], backwards: list[list[Action]], limit: int):
        self.forwards = [deque(row) for row in forwards]
        self.backwards = [deque(row) for row in backwards]
        self.in_flight = [0] * len(forwards)
        self.limit = limit

    def choose(self, stage: int, ready: Ready) -> Action | None:
        if self.backwards[stage] and ready(self.backwards[stage][0]):
            return self.backwards[stage][0]
        if self.forwards[stage] and self.in_flight[stage] < self.limit and ready(self.forwards[stage][0]):
            return self.forwards[stage][0]
        return None

    def commit(self, action: Action) -> None:
        if action.kind is ActionKind.F:
            self.forwards[action.stage].popleft()
            self.in_flight[action.stage] += 1
        else:
            self.backwards[action.stage].popleft()
            self.in_flight[action.stage] -= 1

    def finished(self) -> bool:
        return not any(self.forwards) and not any(self.backwards)


def bitpipe(p: int, m: int, v: int = 4) -> Schedule:
    """BitPipe with ``p`` stages (even) and ``m`` micro-batches (a multiple of p)."""
    require_positive("BitPipe", num_stages=p, num_microbatches=m)
    require_even_stages("BitPipe", p)
    require_chunks("BitPipe", v, (4,))
    require_multiple("BitPipe", m, p, "the number of stages p (p/2 micro-batches per direction)")
    placement, pipelines = bidirectional_v_placement(p)
    routing = bitpipe_routing(p, m)
    layout = Layout(p, m, 4, placement, pipelines, routing)
    forwards, backwards = _unit_lists(layout, p, m)
    orders = greedy_orders(layout, _Interleave(forwards, backwards, 2 * p),
                           lambda a: 1.0 if a.kind is ActionKind.F else 2.0, ActionKind.BW)
    return Schedule("bitpipe", p, m, 4, placement, orders, pipelines, routing)

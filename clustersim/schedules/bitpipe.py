"""BitPipe: two V-shaped interleaved pipelines running in opposite directions.

Wu, Chen and Yu, "BitPipe: Bidirectional Interleaved Pipeline Parallelism for Accelerating Large
Models Training", 2024 (arXiv:2410.19367), Figure "BitPipe" (the ``BitPipe-v.svg`` figure of the
authors' repository). The model is replicated: the *down* pipeline walks its 2p chunks from stage
0 to stage p-1 and back (V-shape), the *up* pipeline walks its own 2p chunks from stage p-1 to
stage 0 and back. Each stage therefore holds four chunks: down-first (chunk 0), down-second
(chunk 1), up-first (chunk 2), up-second (chunk 3); a micro-batch visits two of them, each half
of a stage's layers. Backward is fused (``BW``).

Micro-batches come in units of p: in unit ``u``, micro-batches ``u*p .. u*p + p/2 - 1`` go down
and the next p/2 go up. The order of each stage follows the authors' training loop
(``megatron/core/pipeline_parallel/bitpipe_schedule.py`` of wuhouming/BitPipe): a forward list and
a backward list per stage (``get_microbatch_idx`` / ``get_bkmicrobatch_idx``: the pipeline that
starts at the stage's end of the line leads with ``p/2 - s`` passes on stage ``s`` of the first
half, the two pipelines then alternate), run as ``3p/2 + min(s, p-1-s)`` warm-up forwards, one
forward and one backward at a time, and per further unit a run of backwards then of forwards,
then the cool-down backwards. For m = p this is the paper's figure slot for slot (the figure
shows m = p only); for larger m the paper's text and the code agree only on the unit, and we
follow the code (the second unit's forwards start after the first unit's backwards drain to
the warm-up depth). Needs an even p and m a multiple of p, as the authors' implementation does.

p = 4, m = 4 (the paper's figure, 0-based micro-batches)::

    stage 0: f0c0 f1c0 f2c2 f2c3 f3c2 f3c3 f0c1 b0c1 f1c1 b1c1 b2c3 b2c2 b3c3 b3c2 b0c0 b1c0
    stage 1: f0c0 f2c2 f1c0 f3c2 f2c3 f0c1 f3c3 f1c1 b0c1 b2c3 b1c1 b3c3 b2c2 b0c0 b3c2 b1c0
    stage 2: f2c2 f0c0 f3c2 f1c0 f0c1 f2c3 f1c1 f3c3 b2c3 b0c1 b3c3 b1c1 b0c0 b2c2 b1c0 b3c2
    stage 3: f2c2 f3c2 f0c0 f0c1 f1c0 f1c1 f2c3 b2c3 f3c3 b3c3 b0c1 b0c0 b1c1 b1c0 b2c2 b3c2
"""

from __future__ import annotations

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import (
    require_chunks,
    require_even_stages,
    require_multiple,
    require_positive,
)
from clustersim.schedules.layout import Layout, bidirectional_v_placement
from clustersim.schedules.schedule import Schedule


def bitpipe_routing(p: int, m: int) -> tuple[int, ...]:
    """Pipeline (0 down, 1 up) of each micro-batch: the first half of each unit of p goes down."""
    return tuple(0 if mb % p < p // 2 else 1 for mb in range(m))


def _unit(own_first: list[Action], other_first: list[Action], own_second: list[Action],
          other_second: list[Action], lead: int) -> list[Action]:
    """One unit's order of one kind of pass on one stage, after the authors' index lists: ``lead``
    passes of the stage's own pipeline, then the other pipeline's passes interleaved with the
    own, the same again for the second halves (``own``: the pipeline that starts at this end
    of the stage line, in the pass's direction)."""
    half = len(own_first)
    order = own_first[:lead]
    for i in range(half - lead):
        order += [other_first[i], own_first[i + lead]]
    for i in range(lead):
        order += [other_first[i + half - lead], other_second[i]]
    for i in range(half - lead):
        order += [own_second[i], other_second[i + lead]]
    order += own_second[half - lead:]
    return order


def _pass_lists(layout: Layout, stage: int, p: int, m: int) -> tuple[list[Action], list[Action]]:
    """The stage's forward list and backward list, unit after unit."""
    half = p // 2
    own = 0 if stage < half else 1  # the down pipeline starts at stage 0, the up one at p-1
    lead = half - stage if stage < half else stage - half + 1
    forwards: list[Action] = []
    backwards: list[Action] = []
    for unit in range(m // p):
        passes = {}
        for pipeline in (0, 1):
            mbs = [unit * p + pipeline * half + t for t in range(half)]
            for second in (0, 1):
                chunk = 2 * pipeline + second  # local chunks: down-first, down-second, up-first, up-second
                passes[(pipeline, second, ActionKind.F)] = [Action(stage, ActionKind.F, mb, chunk)
                                                            for mb in mbs]
                passes[(pipeline, second, ActionKind.BW)] = [Action(stage, ActionKind.BW, mb, chunk)
                                                             for mb in mbs]
        f = ActionKind.F
        forwards += _unit(passes[(own, 0, f)], passes[(1 - own, 0, f)], passes[(own, 1, f)],
                          passes[(1 - own, 1, f)], lead)
        b = ActionKind.BW  # backward walks the second halves first
        backwards += _unit(passes[(own, 1, b)], passes[(1 - own, 1, b)], passes[(own, 0, b)],
                           passes[(1 - own, 0, b)], lead)
    return forwards, backwards


def _interleave(forwards: list[Action], backwards: list[Action], stage: int, p: int,
                m: int) -> list[Action]:
    """The authors' per-rank loop: warm-up forwards, one-forward-one-backward runs, cool-down."""
    warm_up = 3 * p // 2 + min(stage, p - 1 - stage)
    steady = 2 * p - warm_up
    f, b = iter(forwards), iter(backwards)
    order = [next(f) for _ in range(warm_up)]

    def pairs(n: int) -> None:
        for _ in range(n):
            order.extend((next(f), next(b)))

    for _ in range(m // p - 1):  # each further unit: 1F1B, backwards, 1F1B, forwards
        pairs(steady)
        order.extend(next(b) for _ in range(warm_up - steady + 1))
        pairs(steady - 1)
        order.extend(next(f) for _ in range(warm_up - steady + 1))
    pairs(steady)
    order.extend(b)
    return order


def bitpipe(p: int, m: int, v: int = 4) -> Schedule:
    """BitPipe with ``p`` stages (even) and ``m`` micro-batches (a multiple of p)."""
    require_positive("BitPipe", num_stages=p, num_microbatches=m)
    require_even_stages("BitPipe", p)
    require_chunks("BitPipe", v, (4,))
    require_multiple("BitPipe", m, p, "the number of stages p (p/2 micro-batches per direction)")
    placement, pipelines = bidirectional_v_placement(p)
    routing = bitpipe_routing(p, m)
    layout = Layout(p, m, 4, placement, pipelines, routing)
    orders = tuple(tuple(_interleave(*_pass_lists(layout, stage, p, m), stage, p, m))
                   for stage in range(p))
    return Schedule("bitpipe", p, m, 4, placement, orders, pipelines, routing)

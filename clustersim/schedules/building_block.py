"""Schedules built by repeating a building block, as the controllable-memory authors build them.

Qi, Wan, Amar and Lin, "Pipeline Parallelism with Controllable Memory" (NeurIPS 2024), Section 3,
and the authors' open-source scheduler (``zbv_greedy.py`` of sail-sg/zero-bubble-pipeline-
parallelism: ``put_w``, ``mem_of_stage``, ``reorder`` and ``eager_execution_time``). Where the
paper's prose and the code differ we follow the code; the differences are noted below.

A building block gives, per stage, the slot (unit time, every pass one slot) of each of the four
V passes of one micro-batch (``F`` chunk 0, ``F`` chunk 1, ``B`` chunk 1, ``B`` chunk 0);
repeating it every ``period`` = 6 slots gives micro-batch ``j`` its passes at ``offset + 6j``.
Then, per stage:

1. *W filling*: every free slot takes a pending ``W`` (one per finished ``B``); leftovers go after
   the last slot. With one ``W`` list the oldest ``B`` comes first; in the final, *split* form
   the ``W`` of a chunk-1 ``B`` goes before the ``W`` of a chunk-0 ``B``.
2. *Squeeze, twice* (the paper says once; the code squeezes a second time without ``W``): walk
   every pass in slot order; outside the steady state (from stage 0's first chunk-0 ``B`` to the
   first forward of the last micro-batch) move it to the earliest slot after its dependencies that
   is not taken by an already-walked pass and keeps the stage's peak memory within the repeated
   block's. Round 1 walks the block with its ``W`` (warm-up and cool-down); the slots are then
   re-timed by eager execution, the ``W`` dropped, and round 2 squeezes the cool-down alone
   (with implicit ``W`` in free slots when it counts memory).
3. The ``W`` are put back in split form, and the passes run in slot order (ties: lower pass type,
   then micro-batch): that order is the schedule.

Memory is counted per stage in chunk units: ``F`` +1, ``W`` -1.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.layout import Layout

V_PASSES = ((ActionKind.F, 0), (ActionKind.F, 1), (ActionKind.B, 1), (ActionKind.B, 0))
"""Pass types 0-3 of a V block; types 4 and 5 are the ``W`` of type 2 and of type 3."""
_W_PASSES = ((ActionKind.W, 1), (ActionKind.W, 0))
_MEMORY = (1, 1, 0, 0, -1)

Slots = list[list[int]]
"""One stage: per pass type, the slot of each micro-batch (its k-th entry is micro-batch k)."""


@dataclass(frozen=True)
class BuildingBlock:
    """Slot offsets of each pass of one micro-batch, per stage, repeated every ``period`` slots.

    ``passes[t]`` is (kind, chunk) of pass type ``t``; ``offsets[s][t]`` its slot on stage ``s``.
    ``W`` passes are not listed: they fill free slots.
    """

    period: int
    passes: tuple[tuple[ActionKind, int], ...]
    offsets: tuple[tuple[int, ...], ...]

    def delayed(self, extra_periods: int) -> "BuildingBlock":
        """The same block with every backward ``extra_periods`` periods later (longer lifespan)."""
        shift = self.period * extra_periods
        offsets = tuple(tuple(o + (shift if kind.is_backward else 0)
                              for o, (kind, _) in zip(row, self.passes)) for row in self.offsets)
        return BuildingBlock(self.period, self.passes, offsets)


def _with_weights(stage: Slots, split: bool) -> Slots:
    """The stage's four pass lists plus W list(s): each free slot takes a pending W."""
    lists = [list(row) for row in stage[:4]] + ([[], []] if split else [[]])
    bound = max(row[-1] for row in lists[:4])
    pointer = [0, 0, 0, 0]
    pending = [0, 0]
    slot = 0
    for slot in range(bound + 1):
        first, kind = min((lists[t][pointer[t]] if pointer[t] < len(lists[t]) else bound + 1, t)
                          for t in range(4))
        if first == slot:
            pointer[kind] += 1
            if kind >= 2:
                pending[kind - 2 if split else 0] += 1
            continue
        for lane in (0, 1):  # a free slot (or one the walk has passed): the next W
            if pending[lane]:
                lists[4 + lane].append(slot)
                pending[lane] -= 1
                break
    for lane in (0, 1):
        for _ in range(pending[lane]):
            slot += 1
            lists[4 + lane].append(slot)
    return lists


def _peak_memory(stage: Slots) -> int:
    """Peak chunk units held; without a W list, a W runs in each free slot (as the authors).

    The authors walk the slots one by one, taking the earliest pass when it sits in the current
    slot: a second pass in an occupied slot is never reached (nor anything after it), and every
    later slot counts as free. Walking the sorted passes gives the same levels.
    """
    has_w = len(stage) > 4
    events = sorted((slot, t) for t, row in enumerate(stage) for slot in row)
    level = peak = pending = 0
    previous = -1
    for slot, t in events:
        if slot <= previous:
            break
        if not has_w and pending:  # free slots since the previous pass each run a W
            freed = min(pending, slot - previous - 1)
            level -= freed
            pending -= freed
        level += _MEMORY[t]
        pending += 2 <= t < 4
        peak = max(peak, level)
        previous = slot
    return peak


def _slot_order(stages: list[Slots]):
    """(slot, stage, type, micro-batch) of every pass, in slot order; reads slots lazily so a
    pass may be moved after it is yielded (the squeeze moves only the pass just yielded)."""
    heap = [(row[0], s, t, 0) for s, stage in enumerate(stages) for t, row in enumerate(stage) if row]
    heapq.heapify(heap)
    while heap:
        item = heapq.heappop(heap)
        yield item
        _, s, t, mb = item
        if mb + 1 < len(stages[s][t]):
            heapq.heappush(heap, (stages[s][t][mb + 1], s, t, mb + 1))


def _eager(stages: list[Slots]) -> tuple[list[Slots], list[list[tuple[int, int]]]]:
    """Run every pass (one slot each) in slot order as soon as its inputs and its stage allow:
    the start slots and each stage's order of (type, micro-batch)."""
    p = len(stages)
    end: dict[tuple[int, int, int], int] = {}
    order: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    for _, s, t, mb in _slot_order(stages):
        ready = 0
        if t in (0, 2) and s > 0:
            ready = end[(s - 1, t, mb)]
        if t in (1, 3) and s + 1 < p:
            ready = max(ready, end[(s + 1, t, mb)])
        if 0 < t < 4:
            ready = max(ready, end[(s, t - 1, mb)])
        if mb > 0:
            ready = max(ready, end[(s, t, mb - 1)])
        if order[s]:
            ready = max(ready, end[(s, *order[s][-1])])
        end[(s, t, mb)] = ready + 1
        order[s].append((t, mb))
    starts = [[[end[(s, t, mb)] - 1 for mb in range(len(row))] for t, row in enumerate(stage)]
              for s, stage in enumerate(stages)]
    return starts, order


def _levels(stage: Slots) -> list[int]:
    """Memory level after each slot of a stage with its W list (no two passes share a slot)."""
    delta = [0] * (max(row[-1] for row in stage) + 1)
    for t, row in enumerate(stage):
        if _MEMORY[t]:
            for slot in row:
                delta[slot] += _MEMORY[t]
    level, levels = 0, []
    for change in delta:
        level += change
        levels.append(level)
    return levels


def _first_fit(levels: list[int], taken: set[int], change: int, earliest: int, slot: int,
               bound: int) -> int:
    """The authors' search (first free slot after ``earliest`` where the stage's peak stays
    within ``bound``) in one pass: moving a pass from ``slot`` to ``c`` shifts the levels of
    [c, slot) by its memory ``change``, and no other level. Updates ``levels``."""
    chosen = slot
    if change <= 0:  # the peak cannot grow
        chosen = next((c for c in range(earliest + 1, slot) if c not in taken), slot)
    else:
        highest = None
        for c in range(slot - 1, earliest, -1):
            highest = levels[c] if highest is None else max(highest, levels[c])
            if highest + change > bound:
                break
            if c not in taken:
                chosen = c
    if change and chosen != slot:
        for c in range(chosen, slot):
            levels[c] += change
    return chosen


class _Walk:
    """The authors' slot walk of one stage without a W list (a pending W runs in each free
    slot), with the state before every slot kept, so the peak after moving one pass earlier
    is re-walked only from its new slot: the second squeeze moves cool-down passes, near the
    end. Same peaks as ``_peak_memory`` (no two passes share a slot here)."""

    def __init__(self, stage: Slots) -> None:
        self.occupied = {slot: t for t, row in enumerate(stage) for slot in row}
        self._rebuild()

    def _rebuild(self, start: int = 0) -> None:
        """The states before each slot, re-walked from ``start`` (those before it stand)."""
        self.bound = max(self.occupied)
        if start == 0:
            self.before: list[tuple[int, int, int]] = []
            level = pending = peak = 0
        else:
            level, pending, peak = self.before[start]
            del self.before[start:]
        for slot in range(start, self.bound + 1):
            self.before.append((level, pending, peak))
            level, pending, peak = self._step(slot, level, pending, peak)

    def _step(self, slot: int, level: int, pending: int, peak: int) -> tuple[int, int, int]:
        t = self.occupied.get(slot)
        if t is not None:
            level += _MEMORY[t]
            pending += 2 <= t < 4
        elif pending:
            level -= 1
            pending -= 1
        return level, pending, max(peak, level)

    def peak_if_moved(self, t: int, old: int, new: int) -> int:
        occupied = self.occupied
        del occupied[old]
        occupied[new] = t
        try:
            level, pending, peak = self.before[new]
            for slot in range(new, max(occupied) if old == self.bound else self.bound + 1):
                level, pending, peak = self._step(slot, level, pending, peak)
            if old == self.bound:
                level, pending, peak = self._step(max(occupied), level, pending, peak)
            return peak
        finally:
            del occupied[new]
            occupied[old] = t

    def move(self, t: int, old: int, new: int) -> None:
        del self.occupied[old]
        self.occupied[new] = t
        self._rebuild(new)


def _squeeze(stages: list[Slots], consider_w: bool) -> list[Slots]:
    """One round of the authors' ``reorder``; returns the eagerly re-timed slots."""
    if consider_w:
        stages = [_with_weights(stage, split=False) for stage in stages]
    else:
        stages = [[list(row) for row in stage] for stage in stages]
    bound = max(_peak_memory(stage) for stage in stages)
    p, m = len(stages), len(stages[0][0])
    taken: list[set[int]] = [set() for _ in range(p)]
    levels = [_levels(stage) for stage in stages] if consider_w else []
    walks: list[_Walk | None] = [None] * p  # built when a stage's first pass may move
    phase = 0  # 0 warm-up, 1 steady state (kept as is), 2 cool-down
    for slot, s, t, mb in _slot_order(stages):
        if phase == 0 and t == 3 and s == 0:
            phase = 1
        if phase == 1 or (phase == 0 and not consider_w):
            if phase == 1 and t == 0 and mb == m - 1:
                phase = 2
            taken[s].add(slot)
            continue
        stage = stages[s]
        earliest = -1
        if t in (0, 2) and s > 0:
            earliest = stages[s - 1][t][mb]
        if t in (1, 3) and s + 1 < p:
            earliest = max(earliest, stages[s + 1][t][mb])
        if 0 < t < 4:
            earliest = max(earliest, stage[t - 1][mb])
        if t == 4:  # the mb-th W follows the mb-th B of either chunk
            earliest = max(earliest, sorted(stage[2] + stage[3])[mb])
        if mb > 0:
            earliest = max(earliest, stage[t][mb - 1])
        if consider_w:
            stage[t][mb] = _first_fit(levels[s], taken[s], _MEMORY[t], earliest, slot, bound)
        else:
            walk = walks[s]
            if walk is None:
                walk = walks[s] = _Walk(stage)
            chosen = next((c for c in range(earliest + 1, slot)
                           if c not in taken[s] and walk.peak_if_moved(t, slot, c) <= bound), slot)
            if chosen != slot:
                walk.move(t, slot, chosen)
            stage[t][mb] = chosen
        taken[s].add(stage[t][mb])
    if not consider_w:
        stages = [_with_weights(stage, split=False) for stage in stages]
    return _eager(stages)[0]


def orders_from_block(block: BuildingBlock, layout: Layout, *, squeeze: bool = True) -> tuple[tuple[Action, ...], ...]:
    """Per-stage orders from repeating ``block`` over the layout's micro-batches."""
    if len(block.offsets) != layout.num_stages:
        raise ScheduleError(f"building block has {len(block.offsets)} stage rows, the layout "
                            f"{layout.num_stages} stages")
    if block.passes != V_PASSES or block.period != 6:
        raise ScheduleError(f"building blocks are V blocks of period 6 with passes {V_PASSES}, "
                            f"got period {block.period} and {block.passes}")
    m = layout.num_microbatches
    stages = [[list(range(offset, offset + 6 * m, 6)) for offset in row] for row in block.offsets]
    _check_distinct(stages)
    if squeeze:
        stages = [stage[:4] for stage in _squeeze(stages, consider_w=True)]
        stages = [stage[:4] for stage in _squeeze(stages, consider_w=False)]
    _, order = _eager([_with_weights(stage, split=True) for stage in stages])
    kinds = V_PASSES + _W_PASSES
    return tuple(tuple(Action(s, kinds[t][0], mb, kinds[t][1]) for t, mb in row)
                 for s, row in enumerate(order))


def _check_distinct(stages: list[Slots]) -> None:
    for s, stage in enumerate(stages):
        seen: dict[int, tuple[int, int]] = {}
        for t, row in enumerate(stage):
            for mb, slot in enumerate(row):
                if slot in seen:
                    raise ScheduleError(f"building block puts two passes ({seen[slot]} and "
                                        f"{(t, mb)}, as (type, micro-batch)) in slot {slot} of "
                                        f"stage {s}")
                seen[slot] = (t, mb)

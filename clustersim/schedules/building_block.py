"""Schedules built by repeating a building block, after Qi et al., "Pipeline Parallelism with
Controllable Memory" (NeurIPS 2024), Section 3.

A building block gives, for each stage, the slot (unit time, every pass one slot) of each of the
micro-batch's passes. Repeating it every ``period`` slots gives micro-batch ``j`` its passes at
``offset + period * j``; the block's lifespan fixes the peak activation memory. Then:

1. ``W`` passes go greedily into the free slots, oldest ``B`` first (a ``W`` becomes available
   when its ``B`` has run); leftovers go at the end.
2. *Squeeze*: warm-up and cool-down passes (before stage 0 finishes micro-batch 0, and after
   stage 0 starts the last micro-batch) move to the earliest free slot their dependencies allow,
   as long as the stage's peak memory does not grow beyond the repeated block's. The steady
   state keeps the block's pattern.

Ordering each stage's passes by slot gives the schedule. Every dependency sits in an earlier
slot than its consumer, so the orders are deadlock-free by construction. This is our reading of
the paper's construction (its open-source code squeezes in two rounds, with and without ``W``);
the steady-state pattern is the block's, warm-up and cool-down may differ in detail.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.layout import Layout


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


def _place_block(block: BuildingBlock, layout: Layout) -> list[dict[int, Action]]:
    grids: list[dict[int, Action]] = [{} for _ in range(layout.num_stages)]
    for stage, row in enumerate(block.offsets):
        for mb in range(layout.num_microbatches):
            for (kind, chunk), offset in zip(block.passes, row):
                slot = offset + block.period * mb
                if slot in grids[stage]:
                    raise ScheduleError(f"building block puts {grids[stage][slot]} and "
                                        f"{kind.token}{mb}c{chunk} in slot {slot} of stage {stage}")
                grids[stage][slot] = Action(stage, kind, mb, chunk)
    return grids


def _fill_weight_passes(grid: dict[int, Action]) -> None:
    pending: deque[Action] = deque()
    slot, last = 0, max(grid)
    while slot <= last or pending:
        action = grid.get(slot)
        if action is not None and action.kind is ActionKind.B:
            pending.append(Action(action.stage, ActionKind.W, action.microbatch, action.chunk))
        elif action is None and pending:
            grid[slot] = pending.popleft()
        slot += 1


def _peak(grid: dict[int, Action]) -> int:
    level = peak = 0
    for slot in sorted(grid):
        kind = grid[slot].kind
        level += (kind is ActionKind.F) - (kind is ActionKind.W)
        peak = max(peak, level)
    return peak


def _local_dependencies(action: Action, layout: Layout) -> list[Action]:
    """Dependencies plus the same-kind predecessor on this stage (keeps per-chunk FIFO order)."""
    backward = (lambda mb, k: ActionKind.B)
    deps = [d.action for d in layout.dependencies(action, backward)]
    if action.microbatch > 0:
        deps.append(Action(action.stage, action.kind, action.microbatch - 1, action.chunk))
    return deps


def _earliest_slot(grid: dict[int, Action], action: Action, slot: int, earliest: int,
                   bound: int) -> int | None:
    """The first free slot in [earliest, slot) where ``action`` keeps the stage within ``bound``.

    Moving a ``B`` or ``W`` earlier never raises the peak; moving an ``F`` from ``slot`` to ``c``
    adds one to the level after every slot in [c, slot).
    """
    free = [c for c in range(earliest, slot) if c not in grid]
    if not free or action.kind is not ActionKind.F:
        return free[0] if free else None
    level, after = 0, {}
    occupied = iter(sorted(grid))
    current = next(occupied, None)
    for t in range(min(min(grid), earliest), slot):
        while current is not None and current <= t:
            kind = grid[current].kind
            level += (kind is ActionKind.F) - (kind is ActionKind.W)
            current = next(occupied, None)
        after[t] = level
    highest, best = -1, None
    for t in range(slot - 1, earliest - 1, -1):
        highest = max(highest, after[t])
        if t not in grid and highest + 1 <= bound:
            best = t
    return best


def _squeeze(grids: list[dict[int, Action]], layout: Layout, bound: int) -> None:
    slot_of = {action: slot for grid in grids for slot, action in grid.items()}
    stage0 = grids[0]
    last_b = max(slot for slot, a in stage0.items() if a.microbatch == 0 and a.kind is ActionKind.B)
    first_f_last = min(slot for slot, a in stage0.items()
                       if a.microbatch == layout.num_microbatches - 1 and a.kind is ActionKind.F)
    for action, slot in sorted(slot_of.items(), key=lambda item: (item[1], item[0].stage)):
        if last_b <= slot <= first_f_last:
            continue
        grid = grids[action.stage]
        earliest = 1 + max((slot_of[d] for d in _local_dependencies(action, layout)), default=-1)
        target = _earliest_slot(grid, action, slot, earliest, bound)
        if target is not None:
            del grid[slot]
            grid[target] = action
            slot_of[action] = target


def orders_from_block(block: BuildingBlock, layout: Layout, *, squeeze: bool = True) -> tuple[tuple[Action, ...], ...]:
    """Per-stage orders from repeating ``block`` over the layout's micro-batches."""
    if len(block.offsets) != layout.num_stages:
        raise ScheduleError(f"building block has {len(block.offsets)} stage rows, the layout "
                            f"{layout.num_stages} stages")
    grids = _place_block(block, layout)
    for grid in grids:
        _fill_weight_passes(grid)
    _check_slots_respect_dependencies(grids, layout)
    if squeeze:
        _squeeze(grids, layout, max(_peak(grid) for grid in grids))
    return tuple(tuple(grid[slot] for slot in sorted(grid)) for grid in grids)


def _check_slots_respect_dependencies(grids: Sequence[dict[int, Action]], layout: Layout) -> None:
    slot_of = {action: slot for grid in grids for slot, action in grid.items()}
    for action, slot in slot_of.items():
        for dep in _local_dependencies(action, layout):
            if slot_of[dep] >= slot:
                raise ScheduleError(f"building block puts stage {action.stage} {action} in slot "
                                    f"{slot}, not after stage {dep.stage} {dep} in slot {slot_of[dep]}")

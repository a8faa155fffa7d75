"""The zero-bubble authors' heuristic scheduler for one chunk per stage under a memory limit.

Qi, Wan, Huang and Lin, "Zero Bubble Pipeline Parallelism", ICLR 2024, Section 3.1 (the
heuristic that seeds their ILP), as implemented in the authors' ``zb.py`` (``Graph.manual_order``
and ``initial_solution``, sail-sg/zero-bubble-pipeline-parallelism). Unit costs (``F = B = W =
1``, no communication cost); memory in micro-batches: ``F`` +1, ``B`` 0, ``W`` -1, at most
``memory_limit`` per stage. Each pass ends at ``max(stage clock, its input's end) + 1``; a stage's
order is its passes by end time. Per micro-batch ``i``:

- ``i = 0``: one ``F`` per stage; then, from the last stage back, each stage adds the forwards
  that fit (memory) before the first ``B`` can reach it (``allow_bubble_before_first_b``: also the
  one that overruns it), trimmed so each stage has fewer than the one before; then ``B`` from the
  last stage back.
- ``i > 0``: every stage not done with forwards runs one more ``F`` (with ``prioritize_b``, a
  stage two or more forwards ahead of the next one skips it when that would delay the next
  stage's ``F`` + ``B``), a stage only when the next one does too; before each ``F``, ``W``
  passes free memory and fill the wait for the input, plus one more when the wait exceeds the
  largest bubble so far (``no_bubble_greedy`` decides whether a wait within it takes one too).
  Then a ``B`` per stage, last stage first, with the same ``W`` filling.
- At the end the remaining ``W``. Of the eight flag settings, the one with the shortest longest
  stage span wins (first found on ties); a setting that runs out of ``W`` to free memory is
  skipped (the authors' code raises there).

Where the paper's hand-drawn ZB-H2 and the code differ (m < 2p - 1: the drawing's extra warm-up
forwards cannot all be taken), this follows the code: at memory 2p - 1 it is never slower than
ZB-H1.
"""

from __future__ import annotations

from itertools import product

from clustersim.schedules.actions import Action, ActionKind

_F, _B, _W = 0, 1, 2
_KINDS = (ActionKind.F, ActionKind.B, ActionKind.W)


class _OutOfWeights(Exception):
    """Memory is full and no ``W`` is pending to free it."""


class _Heuristic:
    def __init__(self, p: int, m: int, memory: int) -> None:
        self.p, self.m, self.memory_limit = p, m, memory
        self.done = [[0] * p for _ in range(3)]  # passes run per kind and stage
        self.clock = [0] * p
        self.memory = [0] * p
        self.bubble = [0] * p
        self.end: dict[tuple[int, int, int], int] = {}  # unset reads as 0, as the authors' array

    def end_of(self, kind: int, stage: int, mb: int) -> int:
        return self.end.get((kind, stage, mb), 0)

    def put(self, stage: int, kind: int) -> None:
        mb = self.done[kind][stage]
        finish = no_wait = self.clock[stage] + 1
        if kind == _F and stage > 0:
            finish = max(finish, self.end_of(_F, stage - 1, mb) + 1)
        if kind == _B and stage < self.p - 1:
            finish = max(finish, self.end_of(_B, stage + 1, mb) + 1)
        if self.done[_F][stage] > 0:
            self.bubble[stage] += finish - no_wait
        self.clock[stage] = self.end[(kind, stage, mb)] = finish
        self.memory[stage] += (1, 0, -1)[kind]
        self.done[kind][stage] += 1

    def weights_pending(self, stage: int) -> bool:
        return self.done[_W][stage] < self.done[_B][stage]

    def free_memory(self, stage: int, need: int) -> None:
        while self.memory[stage] + need > self.memory_limit:
            if not self.weights_pending(stage):
                raise _OutOfWeights
            self.put(stage, _W)

    def fill_wait(self, stage: int, arrival: int, greedy: bool) -> None:
        while self.weights_pending(stage) and self.clock[stage] + 1 <= arrival:
            self.put(stage, _W)
        if self.weights_pending(stage) and self.clock[stage] < arrival:
            within = arrival - self.clock[stage] <= max(self.bubble) - self.bubble[stage]
            if greedy or not within:
                self.put(stage, _W)

    def first_microbatch(self, allow_bubble: bool) -> None:
        p, m = self.p, self.m
        for j in range(p):
            self.put(j, _F)
        extra = [0] * p
        first_b = 0
        for j in range(p - 1, -1, -1):
            if j == p - 1:
                first_b = self.end_of(_F, j, 0) + 1
                continue
            memory, clock = self.memory[j], self.clock[j]
            while self.done[_F][j] + extra[j] < m and memory + 1 <= self.memory_limit:
                if (clock + 1 > first_b) if allow_bubble else (clock >= first_b):
                    break
                memory, clock, extra[j] = memory + 1, clock + 1, extra[j] + 1
            first_b = max(clock, first_b) + 1
        for j in range(1, p):
            while extra[j] > 0 and extra[j] >= extra[j - 1] and self.done[_F][j] + extra[j] < m:
                extra[j] -= 1
        for j in range(p):
            for _ in range(extra[j]):
                self.put(j, _F)
        for j in range(p - 1, -1, -1):
            self.put(j, _B)

    def wants_forward(self, j: int, prioritize_b: bool) -> bool:
        if self.done[_F][j] >= self.m:
            return False
        if not (prioritize_b and j + 1 < self.p and self.done[_F][j] >= self.done[_F][j + 1] + 2):
            return True
        next_f_and_b = self.clock[j + 1] + 2
        if self.clock[j] >= next_f_and_b:
            return False
        weights = max(0, self.memory[j] + 1 - self.memory_limit)
        weights = min(weights, self.done[_B][j] - self.done[_W][j])
        if self.clock[j] + 1 + weights <= next_f_and_b:
            return True
        return next_f_and_b - self.clock[j] > max(self.bubble) - self.bubble[j]

    def next_microbatch(self, i: int, prioritize_b: bool, greedy: bool) -> None:
        p = self.p
        forward = [self.wants_forward(j, prioritize_b) for j in range(p)]
        for j in range(p - 2, -1, -1):
            forward[j] = forward[j] and forward[j + 1]
        for j in range(p):
            if not forward[j]:
                continue
            self.free_memory(j, 1)
            if j > 0:
                self.fill_wait(j, self.end_of(_F, j - 1, self.done[_F][j]), greedy)
            self.put(j, _F)
        for j in range(p - 1, -1, -1):
            self.free_memory(j, 0)
            if j + 1 < p:
                self.fill_wait(j, self.end_of(_B, j + 1, i), greedy)
            if j == 0 and self.done[_F][j] == self.m:
                while self.weights_pending(j):
                    self.put(j, _W)
            self.put(j, _B)

    def run(self, allow_bubble: bool, prioritize_b: bool, greedy: bool) -> int:
        """Schedules every pass; returns the longest stage span."""
        self.first_microbatch(allow_bubble)
        for i in range(1, self.m):
            self.next_microbatch(i, prioritize_b, greedy)
        for j in range(self.p):
            while self.done[_W][j] < self.m:
                self.put(j, _W)
        return max(self.end[(_W, j, self.m - 1)] - self.end[(_F, j, 0)] + 1 for j in range(self.p))

    def orders(self) -> tuple[tuple[Action, ...], ...]:
        rows: list[list[tuple[int, Action]]] = [[] for _ in range(self.p)]
        for (kind, stage, mb), finish in self.end.items():
            rows[stage].append((finish, Action(stage, _KINDS[kind], mb)))
        return tuple(tuple(a for _, a in sorted(row, key=lambda item: item[0])) for row in rows)


def zero_bubble_orders(p: int, m: int, memory_limit: int) -> tuple[tuple[Action, ...], ...] | None:
    """Per-stage orders of the authors' best setting, or ``None`` when none fits the memory."""
    best: tuple[int, _Heuristic] | None = None
    for allow_bubble, prioritize_b, greedy in product((True, False), repeat=3):
        heuristic = _Heuristic(p, m, memory_limit)
        try:
            span = heuristic.run(allow_bubble, prioritize_b, greedy)
        except _OutOfWeights:
            continue
        if best is None or span < best[0]:
            best = (span, heuristic)
    return None if best is None else best[1].orders()

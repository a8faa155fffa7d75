"""V-ZB: the zero-bubble V-shape schedule, built by the authors' greedy heuristic.

Qi, Wan, Amar and Lin, "Pipeline Parallelism with Controllable Memory", NeurIPS 2024, Section 4
(V-ZB); the order follows the authors' open-source scheduler (``zbv.py``, ``PipelineGraph.
try_v_schedule`` and ``create_schedule`` of sail-sg/zero-bubble-pipeline-parallelism), which the
paper describes only in outline. Where they differ we follow the code. Unit costs (every chunk
pass one slot, no communication cost); memory in chunk units: ``F`` +1, ``B`` 0, ``W`` -1, with a
budget of ``2 * memory_limit`` chunks (``memory_limit`` in micro-batches of a full stage, p by
default: 1F1B's peak).

The heuristic, per stage ``i`` (``F``/``B`` "down" passes move from stage i-1, "up" ones from i+1):

1. Warm-up: one chunk-0 ``F`` on every stage; then from the last stage back, chunk-0 forwards on
   stages ``0..i`` while they fit before stage ``i``'s first chunk-1 ``F`` arrives, then that
   chunk-1 ``F``; then forwards alternate chunks, from the last stage down, until each stage has
   done as many forwards as the one before it.
2. Steady state, ``2m`` rounds: ``W`` as memory requires; every stage puts a ``B`` (chunk 0 when
   its chunk-1 backward has caught up or is not ready, chunk-1 ``B`` first from the highest
   stage), then an ``F``; before each pass, pending ``W`` fill the wait for the pass's input, and
   one more when the wait would exceed the largest bubble any stage has so far (``fill_b`` /
   ``fill_f`` choose whether that extra ``W`` is taken before a chunk-0 ``B`` / an ``F``).
3. Remaining ``W``. A second run with each stage's bubble from the first as its allowance is kept
   when it lowers the largest bubble; of the four (fill_b, fill_f) settings the lowest wins.

With m >= 2p this gives no bubble inside any stage's span at peak p (the paper's Table 2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from clustersim.schedules.actions import Action, ActionKind

_F, _B, _W = 0, 1, 2
_KINDS = (ActionKind.F, ActionKind.B, ActionKind.W)


def _model_chunk(cat: int, lane: int) -> int:
    """The scheduler's lane 0 is the pass that moves down the stages: chunk 0 forward, chunk 1
    backward (the V turns at the last stage); lane 1 moves up."""
    return lane if cat == _F else 1 - lane


@dataclass
class _Run:
    """One run of the heuristic: per-stage clocks, counters, memory and the orders so far."""

    p: int
    m: int
    memory_chunks: int
    approved: list[float] | None = None
    count: list[list[int]] = field(init=False)
    end: dict[tuple[int, int, int, int], float] = field(init=False, default_factory=dict)
    clock: list[float] = field(init=False)
    memory: list[int] = field(init=False)
    bubble: list[float] = field(init=False)
    pending_w: list[deque[tuple[int, int]]] = field(init=False)
    order: list[list[tuple[int, int, int]]] = field(init=False)

    def __post_init__(self) -> None:
        p = self.p
        self.count = [[0] * 6 for _ in range(p)]
        self.clock = [0.0] * p
        self.memory = [0] * p
        self.bubble = [0.0] * p
        self.pending_w = [deque() for _ in range(p)]
        self.order = [[] for _ in range(p)]
        self.max_approved = max(self.approved) if self.approved else -1.0

    # -- bookkeeping -------------------------------------------------------------------------

    def done(self, cat: int, lane: int, stage: int, mb: int) -> float:
        return self.end.get((cat, lane, stage, mb), -1.0)

    def largest_bubble(self, stage: int = -1) -> float:
        largest = max(self.bubble)
        if stage >= 0 and self.approved:
            largest = max(largest, self.max_approved - self.approved[stage])
        return largest

    def put(self, cat: int, lane: int, stage: int) -> None:
        mb = self.count[stage][cat * 2 + lane]
        ready = no_wait = self.clock[stage] + 1
        if cat < 2:
            source = stage + 1 if lane == 1 else stage - 1
            if 0 <= source < self.p:
                ready = max(ready, self.end[(cat, lane, source, mb)] + 1)
        if self.count[stage][0] > 0:
            self.bubble[stage] += ready - no_wait
        self.end[(cat, lane, stage, mb)] = self.clock[stage] = ready
        self.memory[stage] += (1, 0, -1)[cat]
        self.order[stage].append((cat, lane, mb))
        if cat == _B:
            self.pending_w[stage].append((lane, mb))
        self.count[stage][cat * 2 + lane] += 1

    def put_w(self, stage: int) -> None:
        lane, _ = self.pending_w[stage].popleft()
        self.put(_W, lane, stage)

    def fill_wait(self, stage: int, input_id: tuple[int, int, int, int] | None, extra: bool) -> None:
        """W passes while they fit before the input arrives; one more if the wait would exceed
        the largest bubble (and ``extra`` allows it)."""
        if input_id is None:
            # The authors index their end times with -1 here: the last pass (W of the last
            # micro-batch, lane 1, last stage), not yet run except at the very end.
            arrival = self.done(_W, 1, self.p - 1, self.m - 1)
        else:
            arrival = self.done(*input_id)
            while self.pending_w[stage] and arrival >= self.clock[stage] + 1:
                self.put_w(stage)
        if (self.pending_w[stage] and extra
                and arrival - self.clock[stage] > self.largest_bubble(stage) - self.bubble[stage]):
            self.put_w(stage)

    # -- the three phases ------------------------------------------------------------------

    def warm_up(self) -> None:
        p, m = self.p, self.m
        for i in range(p):
            self.put(_F, 0, i)
        for i in range(p - 1, -1, -1):
            if i < p - 1:
                arrival = self.end[(_F, 1, i + 1, 0)]
                while (self.memory[i] + 2 + 2 * i <= self.memory_chunks
                       and self.clock[i] + 1 <= arrival and self.count[i][0] < m):
                    for j in range(i + 1):
                        self.put(_F, 0, j)
            self.put(_F, 1, i)
        lane = 0
        for i in range(1, p):
            ahead = self.count[i - 1]
            while (self.count[i][0] + self.count[i][1] < ahead[0] + ahead[1]
                   or self.count[i][1] <= ahead[1] < m):
                for j in range(p - 1, i - 1, -1):
                    if self.count[j][lane] < m:
                        self.put(_F, lane, j)
                lane = 1 - lane

    def backward_lanes(self) -> list[tuple[int, int]]:
        """(stage, lane) of this round's B: lane 1 (chunk 0), highest stage first, where the chunk-1 backward is ahead and its input is ready, else lane 0."""
        lane1, lane0 = [], []
        for i in range(self.p):
            c = self.count[i]
            if c[3] >= c[2]:
                lane0.append(i)
            elif i == self.p - 1 or self.done(_B, 1, i + 1, c[3]) >= 0 or c[2] >= self.m:
                lane1.append(i)
            else:
                lane0.append(i)
        return [(i, 1) for i in reversed(lane1)] + [(i, 0) for i in lane0]

    def steady(self, fill_f: bool, fill_b: bool) -> None:
        p, m = self.p, self.m
        for _ in range(2 * m):
            for i in range(p):
                while self.memory[i] > self.memory_chunks:
                    self.put_w(i)
            for i, lane in self.backward_lanes():
                mb = self.count[i][2 + lane]
                source = i + 1 if lane == 1 else i - 1
                input_id = (_B, lane, source, mb) if 0 <= source < p else None
                self.fill_wait(i, input_id, lane == 1 or fill_b)
                self.put(_B, lane, i)
            for i in range(p):
                lane = self.forward_lane(i)
                if lane is None:
                    continue
                while self.memory[i] + 1 > self.memory_chunks:
                    self.put_w(i)
                source = i + 1 if lane == 1 else i - 1
                input_id = (_F, lane, source, self.count[i][lane]) if 0 <= source < p else None
                self.fill_wait(i, input_id, fill_f)
                self.put(_F, lane, i)

    def forward_lane(self, i: int) -> int | None:
        c, m = self.count[i], self.m
        if c[1] >= m:
            return None
        if c[1] >= c[0]:
            return 0
        if i == self.p - 1 or self.done(_F, 1, i + 1, c[1]) >= 0:
            return 1
        if c[0] < m and (i == 0 or self.done(_F, 0, i - 1, c[0]) >= 0):
            return 0
        return None

    def drain(self) -> None:
        for i in range(self.p):
            while self.pending_w[i]:
                self.put_w(i)


def _try(p: int, m: int, memory_chunks: int, fill_f: bool, fill_b: bool,
         approved: list[float] | None = None) -> tuple[list[list[tuple[int, int, int]]], float]:
    run = _Run(p, m, memory_chunks, approved)
    run.warm_up()
    run.steady(fill_f, fill_b)
    run.drain()
    largest = run.largest_bubble()
    if approved is None or largest < max(approved):
        retry, retry_largest = _try(p, m, memory_chunks, fill_f, fill_b, list(run.bubble))
        if retry_largest < largest:
            return retry, retry_largest
    return run.order, largest


def v_zero_bubble_orders(p: int, m: int, memory_chunks: int) -> tuple[tuple[Action, ...], ...]:
    """Per-stage orders of the best of the authors' four settings (see the module docstring)."""
    best: tuple[list[list[tuple[int, int, int]]], float] | None = None
    for fill_b in (True, False):
        for fill_f in (True, False):
            order, largest = _try(p, m, memory_chunks, fill_f, fill_b)
            if best is None or largest < best[1]:
                best = (order, largest)
    assert best is not None
    return tuple(tuple(Action(stage, _KINDS[cat], mb, _model_chunk(cat, lane))
                       for cat, lane, mb in row) for stage, row in enumerate(best[0]))

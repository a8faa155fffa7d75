"""Idealised analysis of a schedule: list-scheduled times, bubble, critical path, activation memory.

This is the closed-form-checking companion of the simulator, not a model of hardware: each
stage runs its actions in order, each starting at ``max(stage free, dependencies done)``
(plus an optional uniform ``link_latency`` on cross-stage dependencies, zero by default).

Durations are per *full stage*: ``F = B = W = 1`` by default (the zero-bubble papers' ``T_F =
T_B = T_W``), and a fused ``BW`` takes ``B + W`` (so ``BW = 2 F``, the classic 1F1B ratio). A
transformer pass of one chunk takes its share of the stage (1/v for interleaved, 1/2 for V-shape
and BitPipe). Vocabulary passes default to ``S = T = 0.25`` and ``IF = IB = 0.05`` of a stage's forward
(illustrative: a 1/p vocabulary shard is a fraction of a stage's transformer layers).
Give a mapping (a number, or one number per stage, per :class:`ActionKind`) or a callable
``Action -> seconds`` (used as is, no chunk scaling).

Activation memory is counted in units of one micro-batch's activations for one full stage: ``F``
of a chunk adds the chunk's share, ``W`` or ``BW`` releases it. With a split backward the
controllable-memory paper (Qi et al. 2024) keeps everything until ``W``, which is the default;
the zero-bubble paper's accounting frees part of it at ``B`` (``M_B - M_W``), set ``b_frees`` to
that fraction. Vocabulary-parallel output activations (held from ``S`` to ``T``) count
``output_layer`` units each (0 by default: only transformer activations are counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence, Union

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.validate import replay

DEFAULT_DURATIONS: dict[ActionKind, float] = {
    ActionKind.F: 1.0, ActionKind.B: 1.0, ActionKind.W: 1.0,
    ActionKind.S: 0.25, ActionKind.T: 0.25, ActionKind.IF: 0.05, ActionKind.IB: 0.05,
}
"""Per full stage. ``BW`` defaults to ``B + W``."""

Durations = Union[Mapping[ActionKind, Union[float, Sequence[float]]], Callable[[Action], float], None]


def duration_function(schedule: Schedule, durations: Durations = None) -> Callable[[Action], float]:
    """Seconds (or units) for each action of ``schedule``; see the module docstring."""
    if callable(durations):
        return durations
    given = dict(durations or {})
    p = schedule.num_stages
    table: dict[ActionKind, tuple[float, ...]] = {}
    for kind in ActionKind:
        if kind is ActionKind.BW:
            continue
        table[kind] = _per_stage(kind, given.get(kind, DEFAULT_DURATIONS[kind]), p)
    if ActionKind.BW in given:
        table[ActionKind.BW] = _per_stage(ActionKind.BW, given[ActionKind.BW], p)
    else:
        table[ActionKind.BW] = tuple(b + w for b, w in zip(table[ActionKind.B], table[ActionKind.W]))
    layout = schedule.layout

    def duration(action: Action) -> float:
        base = table[action.kind][action.stage]
        if action.kind.is_transformer:
            return base * layout.chunk_fraction(action.microbatch)
        return base

    return duration


def _per_stage(kind: ActionKind, value: float | Sequence[float], p: int) -> tuple[float, ...]:
    values = (value,) * p if isinstance(value, (int, float)) else tuple(value)
    if len(values) != p or any(not isinstance(x, (int, float)) or x < 0 for x in values):
        raise ScheduleError(f"duration of {kind.name} must be a number >= 0 or {p} of them "
                            f"(one per stage), got {value!r}")
    return tuple(float(x) for x in values)


@dataclass(frozen=True)
class Timeline:
    """Start and end of every action of a list-scheduled schedule."""

    schedule: Schedule
    start: Mapping[Action, float]
    end: Mapping[Action, float]

    @property
    def makespan(self) -> float:
        return max(self.end.values(), default=0.0)

    def busy(self, stage: int) -> float:
        return sum(self.end[a] - self.start[a] for a in self.schedule.actions[stage])

    @property
    def bubble_fraction(self) -> float:
        """Idle time over total time, summed over stages, within [0, makespan]."""
        total = self.makespan * self.schedule.num_stages
        if total == 0:
            return 0.0
        busy = sum(self.busy(s) for s in range(self.schedule.num_stages))
        return (total - busy) / total

    def stage_span(self, stage: int) -> float:
        """From the stage's first start to its last end (the papers' per-stage time)."""
        row = self.schedule.actions[stage]
        return max(self.end[a] for a in row) - min(self.start[a] for a in row) if row else 0.0

    @property
    def span_bubble_fraction(self) -> float:
        """The zero-bubble papers' rate: idle inside the longest stage span, over that span.

        Counts only bubbles inside a stage's own span, as when the optimizer step is not
        synchronised across stages (their post-validation), so ZB-H2's parallelogram scores 0.
        """
        spans = [self.stage_span(s) for s in range(self.schedule.num_stages)]
        longest = max(spans, default=0.0)
        if longest == 0:
            return 0.0
        busy = max(self.busy(s) for s in range(self.schedule.num_stages))
        return (longest - busy) / longest

    def rows(self) -> list[tuple[int, str, int, int, float, float]]:
        """(stage, kind, microbatch, chunk, start, end) per action, in stage order."""
        return [(a.stage, a.kind.name, a.microbatch, a.chunk, self.start[a], self.end[a])
                for row in self.schedule.actions for a in row]

    def to_dataframe(self):
        """The rows as a pandas DataFrame (one row per span), for notebooks."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["stage", "kind", "microbatch", "chunk",
                                                  "start", "end"])


def simulate(schedule: Schedule, durations: Durations = None, *, link_latency: float = 0.0) -> Timeline:
    """List-schedule every stage's actions in order (raises DeadlockError if it cannot finish)."""
    duration = duration_function(schedule, durations)
    start: dict[Action, float] = {}
    end: dict[Action, float] = {}
    free = [0.0] * schedule.num_stages

    def run(action: Action) -> None:
        ready = free[action.stage]
        for dep in schedule.dependencies(action):
            arrival = end[dep.action] + (link_latency if dep.action.stage != action.stage else 0.0)
            ready = max(ready, arrival)
        start[action] = ready
        end[action] = free[action.stage] = ready + duration(action)

    replay(schedule, run)
    return Timeline(schedule, start, end)


def critical_path(schedule: Schedule, durations: Durations = None, *, link_latency: float = 0.0) -> float:
    """Longest chain of data dependencies (ignoring that a stage runs one action at a time)."""
    duration = duration_function(schedule, durations)
    finish: dict[Action, float] = {}

    def run(action: Action) -> None:
        ready = 0.0
        for dep in schedule.dependencies(action):
            ready = max(ready, finish[dep.action] + (
                link_latency if dep.action.stage != action.stage else 0.0))
        finish[action] = ready + duration(action)

    replay(schedule, run)
    return max(finish.values(), default=0.0)


def memory_deltas(schedule: Schedule, *, b_frees: float = 0.0,
                  output_layer: float = 0.0) -> Callable[[Action], Fraction]:
    """Change of activation memory (stage units) when each action runs."""
    if not 0.0 <= b_frees <= 1.0:
        raise ScheduleError(f"b_frees must be a fraction in [0, 1], got {b_frees!r}")
    freed_at_b = Fraction(b_frees).limit_denominator(1 << 20)
    out = Fraction(output_layer).limit_denominator(1 << 20)
    layout = schedule.layout

    def delta(action: Action) -> Fraction:
        share = Fraction(schedule.num_stages, len(layout.path(action.microbatch)))
        kind = action.kind
        if kind is ActionKind.F:
            return share
        if kind is ActionKind.BW:
            return -share
        if kind is ActionKind.B:
            return -share * freed_at_b
        if kind is ActionKind.W:
            return -share * (1 - freed_at_b)
        if kind is ActionKind.S:
            return out
        if kind is ActionKind.T:
            return -out
        return Fraction(0)

    return delta


def activation_levels(schedule: Schedule, **memory: float) -> tuple[tuple[float, ...], ...]:
    """Per stage, activation memory after each of its actions (stage units, from the order)."""
    delta = memory_deltas(schedule, **memory)
    levels = []
    for row in schedule.actions:
        level, trace = Fraction(0), []
        for action in row:
            level += delta(action)
            trace.append(float(level))
        levels.append(tuple(trace))
    return tuple(levels)


def peak_activations(schedule: Schedule, **memory: float) -> tuple[float, ...]:
    """Per stage, the peak activation memory in units of one micro-batch on one full stage."""
    return tuple(max(trace, default=0.0) for trace in activation_levels(schedule, **memory))


def memory_over_time(timeline: Timeline, **memory: float) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Per stage, (time, level) steps: activations allocated at a pass's start, freed at its end."""
    schedule = timeline.schedule
    delta = memory_deltas(schedule, **memory)
    steps = []
    for row in schedule.actions:
        events: list[tuple[float, Fraction]] = []
        for action in row:
            change = delta(action)
            events.append((timeline.start[action] if change > 0 else timeline.end[action], change))
        net: dict[float, Fraction] = {}
        for time, change in events:  # changes at the same instant net out (no zero-width spikes)
            net[time] = net.get(time, Fraction(0)) + change
        level, trace = Fraction(0), [(0.0, 0.0)]
        for time in sorted(net):
            level += net[time]
            trace.append((time, float(level)))
        steps.append(tuple(trace))
    return tuple(steps)


@dataclass(frozen=True)
class Summary:
    """The headline numbers of one schedule under one set of durations."""

    name: str
    makespan: float
    bubble_fraction: float
    span_bubble_fraction: float
    critical_path: float
    peak_activations: tuple[float, ...]


def summarize(schedule: Schedule, durations: Durations = None, **memory: float) -> Summary:
    timeline = simulate(schedule, durations)
    return Summary(schedule.name, timeline.makespan, timeline.bubble_fraction,
                   timeline.span_bubble_fraction, critical_path(schedule, durations),
                   peak_activations(schedule, **memory))

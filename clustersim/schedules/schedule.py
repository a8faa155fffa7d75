"""A pipeline schedule as pure data: one ordered tuple of actions per stage, plus its layout."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.layout import Dependency, Layout, Link


@dataclass(frozen=True)
class Schedule:
    """Per-stage ordered lists of frozen actions, and the layout that gives them dependencies.

    ``actions[s]`` is everything stage ``s`` runs, in the order it runs it. ``placement[k]`` is
    the stage holding virtual stage ``k`` (see :mod:`clustersim.schedules.layout`);
    ``pipelines`` and ``microbatch_pipeline`` default to one pipeline through every virtual stage
    in order. ``vocab_algorithm`` is ``None`` when the input embedding and the output layer live
    inside the first and last virtual stage's passes (Megatron's default), or 1 / 2 when they are
    vocabulary-parallel across all stages with the paper's Algorithm 1 / 2 (``S``/``T``/``IF``/
    ``IB`` actions appear on every stage).

    Construction checks only the shape; :func:`clustersim.schedules.validate.validate` proves
    the schedule (completeness, order rules, matching sends and receives, deadlock-freedom).
    """

    name: str
    num_stages: int
    num_microbatches: int
    num_chunks: int
    placement: tuple[int, ...]
    actions: tuple[tuple[Action, ...], ...]
    pipelines: tuple[tuple[int, ...], ...] | None = None
    microbatch_pipeline: tuple[int, ...] | None = None
    vocab_algorithm: int | None = None
    layout: Layout = field(init=False, repr=False, compare=False)
    _input_grad_kind: dict[tuple[int, int], ActionKind] = field(
        init=False, repr=False, compare=False)
    _dependencies: dict[Action, tuple[Dependency, ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", tuple(self.placement))
        pipelines = self.pipelines
        if pipelines is None:
            pipelines = (tuple(range(len(self.placement))),)
        object.__setattr__(self, "pipelines", tuple(tuple(path) for path in pipelines))
        routing = self.microbatch_pipeline
        if routing is None:
            routing = (0,) * self.num_microbatches
        object.__setattr__(self, "microbatch_pipeline", tuple(routing))
        object.__setattr__(self, "actions", tuple(tuple(row) for row in self.actions))
        layout = Layout(self.num_stages, self.num_microbatches, self.num_chunks, self.placement,
                        self.pipelines, self.microbatch_pipeline, self.vocab_algorithm)
        object.__setattr__(self, "layout", layout)
        if len(self.actions) != self.num_stages:
            raise ScheduleError(f"schedule {self.name!r} needs one action list per stage: "
                                f"expected {self.num_stages}, got {len(self.actions)}")
        kinds: dict[tuple[int, int], ActionKind] = {}
        for stage, row in enumerate(self.actions):
            for action in row:
                if not isinstance(action, Action):
                    raise ScheduleError(f"schedule {self.name!r} stage {stage}: expected Action, "
                                        f"got {action!r}")
                k = layout.lookup(action.stage, action.chunk)
                if action.kind is ActionKind.B and k is not None:
                    kinds[(action.microbatch, k)] = ActionKind.B
                if action.kind.is_vocabulary:
                    layout.intern(action, None)
                elif k is not None:
                    layout.intern(action, k)
        object.__setattr__(self, "_input_grad_kind", kinds)
        object.__setattr__(self, "_dependencies", {})

    # -- reading the data --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Action]:
        """Every action, stage by stage, in each stage's order."""
        for row in self.actions:
            yield from row

    def __len__(self) -> int:
        return sum(len(row) for row in self.actions)

    @property
    def split_backward(self) -> bool:
        """Whether backward is split into ``B`` and ``W`` (zero-bubble style) anywhere."""
        return any(a.kind is ActionKind.W for a in self)

    def input_grad_kind(self, microbatch: int, virtual_stage: int) -> ActionKind:
        """``B`` when this (micro-batch, virtual stage) has a split backward, else ``BW``."""
        return self._input_grad_kind.get((microbatch, virtual_stage), ActionKind.BW)

    def virtual_stage(self, action: Action) -> int | None:
        """The virtual stage a transformer action runs (``None`` for vocabulary passes)."""
        if action.kind.is_vocabulary:
            return None
        return self.layout.virtual_stage(action.stage, action.chunk)

    def model_slice(self, action: Action) -> tuple[int, int] | None:
        """(i, n): a transformer action covers slice i of n equal slices of the model (of its
        replica, for BitPipe); ``None`` for vocabulary passes."""
        if action.kind.is_vocabulary:
            return None
        k = self.layout.virtual_stage(action.stage, action.chunk)
        return self.layout.position(action.microbatch, k), len(self.layout.path(action.microbatch))

    def dependencies(self, action: Action) -> tuple[Dependency, ...]:
        """Actions ``action`` waits for, and how each reaches it (local, p2p, collective)."""
        deps = self._dependencies.get(action)
        if deps is None:
            deps = self._dependencies[action] = self.layout.dependencies(action, self.input_grad_kind)
        return deps

    def edges(self) -> Iterator[tuple[Action, Dependency]]:
        """(consumer, dependency) for every dependency of every action in the schedule."""
        for action in self:
            for dep in self.dependencies(action):
                yield action, dep

    def transfers(self) -> Iterator[tuple[Action, Action, Link]]:
        """(producer, consumer, link) for every dependency that crosses stages."""
        for consumer, dep in self.edges():
            if dep.action.stage != consumer.stage:
                yield dep.action, consumer, dep.link

    # -- building variants ---------------------------------------------------------------------

    def with_actions(self, actions: Sequence[Sequence[Action]], *, name: str | None = None) -> "Schedule":
        """The same layout with other per-stage orders (e.g. a deliberately broken copy)."""
        return replace(self, actions=tuple(tuple(row) for row in actions),
                       name=self.name if name is None else name)

    def __str__(self) -> str:
        from clustersim.schedules.text import render

        return render(self)

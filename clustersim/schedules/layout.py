"""Where model chunks live and which passes wait for which: the dependency graph of a schedule.

A *virtual stage* is one model chunk: a contiguous slice of layers. ``placement[k]`` is the stage
(device) that holds virtual stage ``k``; the *local chunk index* of ``k`` on its stage is its rank
among the virtual stages that stage holds, in increasing ``k``. A *pipeline* is the sequence of
virtual stages a micro-batch walks in forward order; single-direction schedules have one pipeline
``(0, 1, ..., v*p - 1)``, bidirectional ones (BitPipe) have two, over two model replicas.

Dependencies are derived from this layout alone (nothing is stored per action):

- ``F`` of (mb, position i) needs ``F`` of (mb, i-1): an activation send when they are on
  different stages. With vocabulary parallelism, ``F`` at position 0 needs ``IF`` of every stage.
- ``B``/``BW`` of (mb, i) needs ``F`` of (mb, i) on its own stage and the input-gradient pass
  (``B`` or ``BW``) of (mb, i+1): a gradient send. The last position needs the vocabulary output
  passes instead (``S`` of every stage with Algorithm 2, ``T`` of every stage with Algorithm 1).
- ``W`` of (mb, i) needs ``B`` of (mb, i) on its own stage.
- ``S`` (every stage) needs ``F`` of the last position (the hidden state is broadcast);
  ``T`` (every stage) needs ``S`` of every stage (the softmax statistics all-reduce);
  ``IB`` (every stage) needs the input-gradient pass of position 0 (gradient broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Sequence

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind

_TRANSFORMER_KINDS = frozenset({ActionKind.F, ActionKind.B, ActionKind.W, ActionKind.BW})

BackwardKind = Callable[[int, int], ActionKind]
"""Which input-gradient kind (``B`` or ``BW``) a schedule uses for (microbatch, virtual stage)."""


class Link(Enum):
    """How a dependency reaches its consumer."""

    LOCAL = "local"  # same stage, same device: no communication
    ACTIVATION = "activation"  # p2p: forward output to the next virtual stage's stage
    GRADIENT = "gradient"  # p2p: input gradient to the previous virtual stage's stage
    EMBEDDING_REDUCE = "embedding_reduce"  # IF partial embeddings reduced to the first stage
    OUTPUT_BROADCAST = "output_broadcast"  # last hidden state broadcast to every stage for S
    OUTPUT_REDUCE = "output_reduce"  # input-gradient partials reduced to the last stage
    SOFTMAX_ALLREDUCE = "softmax_allreduce"  # softmax statistics all-reduced before T
    EMBEDDING_GRAD_BROADCAST = "embedding_grad_broadcast"  # first-stage input grad sent to all

    __hash__ = object.__hash__  # identity, in C (see ActionKind)

    @property
    def is_p2p(self) -> bool:
        return self in (Link.ACTIVATION, Link.GRADIENT)

    @property
    def is_collective(self) -> bool:
        """All dependencies of one action that share a collective link form one collective."""
        return self not in (Link.LOCAL, Link.ACTIVATION, Link.GRADIENT)


@dataclass(frozen=True, slots=True)
class Dependency:
    """``action`` (the producer) must finish before the consumer starts; ``link`` says how."""

    action: Action
    link: Link


def interleaved_placement(num_stages: int, num_chunks: int) -> tuple[int, ...]:
    """Megatron's looping placement: virtual stage ``c*p + s`` is chunk ``c`` of stage ``s``."""
    return tuple(k % num_stages for k in range(num_stages * num_chunks))


def v_shape_placement(num_stages: int) -> tuple[int, ...]:
    """V-shape: down the stages then back up, so stage 0 holds the first and the last chunk."""
    p = num_stages
    return tuple(k if k < p else 2 * p - 1 - k for k in range(2 * p))


def bidirectional_v_placement(num_stages: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """BitPipe: two V-shaped pipelines over two model replicas, in opposite directions.

    Returns ``(placement, pipelines)``. Pipeline 0 ("down") walks virtual stages ``0..2p-1``
    from stage 0 to stage p-1 and back; pipeline 1 ("up") walks ``2p..4p-1`` from stage p-1 to
    stage 0 and back. Each stage holds four chunks: down-first, down-second, up-first, up-second.
    """
    p = num_stages
    down = v_shape_placement(p)
    up = tuple(p - 1 - s for s in down)
    pipelines = (tuple(range(2 * p)), tuple(range(2 * p, 4 * p)))
    return down + up, pipelines


@dataclass(frozen=True)
class Layout:
    """The static structure a schedule orders: stages, micro-batches, chunks and their placement."""

    num_stages: int
    num_microbatches: int
    num_chunks: int
    placement: tuple[int, ...]
    pipelines: tuple[tuple[int, ...], ...]
    microbatch_pipeline: tuple[int, ...]
    vocab_algorithm: int | None = None
    _location: dict[int, tuple[int, int]] = field(init=False, repr=False, compare=False)
    _virtual: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)
    _position: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)
    _actions: dict[tuple, Action] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p, m, v = self.num_stages, self.num_microbatches, self.num_chunks
        for name, value in (("num_stages", p), ("num_microbatches", m), ("num_chunks", v)):
            if not isinstance(value, int) or value < 1:
                raise ScheduleError(f"{name} must be a positive int, got {value!r}")
        if len(self.placement) != v * p:
            raise ScheduleError(
                f"placement must list {v} x {p} = {v * p} virtual stages, got {len(self.placement)}")
        location: dict[int, tuple[int, int]] = {}
        held = [0] * p
        for k, stage in enumerate(self.placement):
            if not 0 <= stage < p:
                raise ScheduleError(f"placement puts virtual stage {k} on stage {stage}, "
                                    f"expected a stage in 0..{p - 1}")
            location[k] = (stage, held[stage])
            held[stage] += 1
        if any(count != v for count in held):
            raise ScheduleError(f"every stage must hold {v} chunks, placement gives {held}")
        position: dict[tuple[int, int], int] = {}
        for index, path in enumerate(self.pipelines):
            for i, k in enumerate(path):
                if k not in location or (index, k) in position:
                    raise ScheduleError(f"pipeline {index} path {path} repeats or leaves the "
                                        f"placement's virtual stages 0..{v * p - 1} at {k}")
                position[(index, k)] = i
        if len(self.microbatch_pipeline) != m or any(
                not 0 <= q < len(self.pipelines) for q in self.microbatch_pipeline):
            raise ScheduleError(f"microbatch_pipeline must give one of {len(self.pipelines)} "
                                f"pipelines for each of {m} micro-batches, got {self.microbatch_pipeline}")
        if self.vocab_algorithm not in (None, 1, 2):
            raise ScheduleError(f"vocab_algorithm must be None, 1 or 2, got {self.vocab_algorithm!r}")
        object.__setattr__(self, "_location", location)
        object.__setattr__(self, "_virtual", {loc: k for k, loc in location.items()})
        object.__setattr__(self, "_position", position)
        object.__setattr__(self, "_actions", {})

    @classmethod
    def single(cls, num_stages: int, num_microbatches: int, placement: Sequence[int],
               vocab_algorithm: int | None = None) -> "Layout":
        """One pipeline through every virtual stage in order (all but bidirectional schedules)."""
        placement = tuple(placement)
        return cls(num_stages, num_microbatches, len(placement) // num_stages, placement,
                   (tuple(range(len(placement))),), (0,) * num_microbatches, vocab_algorithm)

    # -- locating chunks -------------------------------------------------------------------

    def location(self, virtual_stage: int) -> tuple[int, int]:
        """(stage, local chunk) of a virtual stage."""
        return self._location[virtual_stage]

    def virtual_stage(self, stage: int, chunk: int) -> int:
        """The virtual stage that is chunk ``chunk`` of ``stage``."""
        try:
            return self._virtual[(stage, chunk)]
        except KeyError:
            raise ScheduleError(f"stage {stage} has no chunk {chunk} "
                                f"(it holds chunks 0..{self.num_chunks - 1})") from None

    def lookup(self, stage: int, chunk: int) -> int | None:
        """The virtual stage at (stage, chunk), or ``None`` when there is none."""
        return self._virtual.get((stage, chunk))

    def path(self, microbatch: int) -> tuple[int, ...]:
        """Virtual stages micro-batch ``microbatch`` walks, in forward order."""
        return self.pipelines[self.microbatch_pipeline[microbatch]]

    def on_path(self, microbatch: int, stage: int, chunk: int) -> bool:
        """Whether (stage, chunk) is a virtual stage this micro-batch passes through."""
        k = self._virtual.get((stage, chunk))
        return k is not None and (self.microbatch_pipeline[microbatch], k) in self._position

    def position(self, microbatch: int, virtual_stage: int) -> int:
        """Which slice of the model (0 .. len(path)-1, in forward order) this virtual stage is
        for this micro-batch: the layers a compiler should charge the pass with."""
        try:
            return self._position[(self.microbatch_pipeline[microbatch], virtual_stage)]
        except (KeyError, IndexError):
            raise ScheduleError(f"micro-batch {microbatch} does not visit virtual stage "
                                f"{virtual_stage}") from None

    def chunk_fraction(self, microbatch: int) -> float:
        """Share of a stage's layers in one chunk this micro-batch visits (1/v, or 1/2 for BitPipe)."""
        return self.num_stages / len(self.path(microbatch))

    def action(self, kind: ActionKind, microbatch: int, virtual_stage: int) -> Action:
        key = (kind, microbatch, virtual_stage)
        action = self._actions.get(key)
        if action is None:  # each action once: deriving dependencies asks for them repeatedly
            stage, chunk = self.location(virtual_stage)
            action = self._actions[key] = Action(stage, kind, microbatch, chunk)
        return action

    def intern(self, action: Action, virtual_stage: int | None) -> None:
        """Make ``action`` the object ``action()`` returns for its (kind, micro-batch, virtual
        stage): a schedule registers its own actions, so the dependencies derived here are the
        very objects its lists hold (dict lookups then hit by identity). Equal values: nothing
        else changes."""
        if virtual_stage is None:
            self._actions.setdefault((action.kind, action.microbatch, "stage", action.stage), action)
        else:
            self._actions.setdefault((action.kind, action.microbatch, virtual_stage), action)

    def _vocab_action(self, stage: int, kind: ActionKind, microbatch: int) -> Action:
        key = (kind, microbatch, "stage", stage)
        action = self._actions.get(key)
        if action is None:
            action = self._actions[key] = Action(stage, kind, microbatch)
        return action

    # -- dependencies ----------------------------------------------------------------------

    def dependencies(self, action: Action, backward_kind: BackwardKind) -> tuple[Dependency, ...]:
        """What ``action`` waits for, derived from the layout (see the module docstring)."""
        kind, mb = action.kind, action.microbatch
        if kind not in _TRANSFORMER_KINDS:
            return self._vocab_dependencies(action, backward_kind)
        # The lookups of virtual_stage(), path() and position() inlined (this runs once per
        # action of schedules with hundreds of thousands); they raise the same errors.
        k = self._virtual.get((action.stage, action.chunk))
        if k is None:
            k = self.virtual_stage(action.stage, action.chunk)
        pipeline = self.microbatch_pipeline[mb]
        path = self.pipelines[pipeline]
        i = self._position.get((pipeline, k))
        if i is None:
            i = self.position(mb, k)
        actions = self._actions
        if kind is ActionKind.F:
            if i > 0:
                previous = path[i - 1]
                producer = actions.get((ActionKind.F, mb, previous)) \
                    or self.action(ActionKind.F, mb, previous)
                return (Dependency(producer, Link.LOCAL if producer.stage == action.stage
                                   else Link.ACTIVATION),)
            return self._everywhere(ActionKind.IF, mb, Link.EMBEDDING_REDUCE)
        if kind is ActionKind.W:
            return (Dependency(actions.get((ActionKind.B, mb, k)) or self.action(ActionKind.B, mb, k),
                               Link.LOCAL),)
        own_forward = Dependency(actions.get((ActionKind.F, mb, k))
                                 or self.action(ActionKind.F, mb, k), Link.LOCAL)
        if i + 1 < len(path):
            nxt = path[i + 1]
            grad_kind = backward_kind(mb, nxt)
            grad = actions.get((grad_kind, mb, nxt)) or self.action(grad_kind, mb, nxt)
            return own_forward, Dependency(grad, Link.LOCAL if grad.stage == action.stage
                                           else Link.GRADIENT)
        if self.vocab_algorithm == 2:
            return (own_forward,) + self._everywhere(ActionKind.S, mb, Link.OUTPUT_REDUCE)
        if self.vocab_algorithm == 1:
            return (own_forward,) + self._everywhere(ActionKind.T, mb, Link.OUTPUT_REDUCE)
        return (own_forward,)

    def _vocab_dependencies(self, action: Action, backward_kind: BackwardKind) -> tuple[Dependency, ...]:
        mb, path = action.microbatch, self.path(action.microbatch)
        if action.kind is ActionKind.IF:
            return ()
        if action.kind is ActionKind.S:
            return (Dependency(self.action(ActionKind.F, mb, path[-1]), Link.OUTPUT_BROADCAST),)
        if action.kind is ActionKind.T:
            return self._everywhere(ActionKind.S, mb, Link.SOFTMAX_ALLREDUCE)
        first = path[0]
        return (Dependency(self.action(backward_kind(mb, first), mb, first),
                           Link.EMBEDDING_GRAD_BROADCAST),)

    def _everywhere(self, kind: ActionKind, microbatch: int, link: Link) -> tuple[Dependency, ...]:
        if self.vocab_algorithm is None:
            return ()
        return tuple(Dependency(self._vocab_action(s, kind, microbatch), link)
                     for s in range(self.num_stages))

"""The atoms of a pipeline schedule: one pass of one micro-batch through one model chunk.

An :class:`Action` says *what* a stage does, never *when* or *how long*: the engine (or
:mod:`clustersim.schedules.analysis`) decides time. Kinds are one enum with predicates, so code
asks ``kind.is_backward`` instead of comparing strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ActionKind(Enum):
    """What a stage computes for one micro-batch.

    Transformer passes of one model chunk:

    - ``F``: forward.
    - ``B``: backward for the *inputs* only (activation gradient), the critical-path half of a
      split backward (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024).
    - ``W``: backward for the *weights* only, the deferrable half of a split backward.
    - ``BW``: full backward, ``B`` and ``W`` fused, as in GPipe, 1F1B and interleaved 1F1B.

    Vocabulary-parallel passes (Yeung et al., "Balancing Pipeline Parallelism with Vocabulary
    Parallelism", 2024), run by *every* stage on its 1/p shard of the vocabulary:

    - ``S``: output layer, first pass: logits of the local vocabulary shard and the local softmax
      statistics (max, sum of exponentials; with the paper's Algorithm 2 also the local
      contribution to the input gradient).
    - ``T``: output layer, second pass, after the statistics all-reduce: the softmax rescale and
      the gradient of the local output-weight shard (Algorithm 1 also computes the input gradient
      partials here).
    - ``IF``: input embedding forward of the local vocabulary shard (partial embeddings).
    - ``IB``: input embedding backward: gradient of the local embedding shard.
    """

    F = "f"
    B = "b"
    W = "w"
    BW = "bw"
    S = "s"
    T = "t"
    IF = "if"
    IB = "ib"

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's
    # default hashes the name in Python, and kinds key the validator's and compiler's dicts).
    __hash__ = object.__hash__

    @property
    def is_forward(self) -> bool:
        """A forward computation (transformer ``F``, or the forward-side vocabulary passes)."""
        return self in (ActionKind.F, ActionKind.S, ActionKind.IF)

    @property
    def is_backward(self) -> bool:
        """Any backward computation, including weight-gradient passes."""
        return not self.is_forward

    @property
    def is_input_grad(self) -> bool:
        """Produces the gradient that flows to the previous virtual stage (``B`` or ``BW``)."""
        return self in (ActionKind.B, ActionKind.BW)

    @property
    def is_weight_grad(self) -> bool:
        """Accumulates parameter gradients (``W``, ``BW``, ``T``, ``IB``)."""
        return self in (ActionKind.W, ActionKind.BW, ActionKind.T, ActionKind.IB)

    @property
    def is_transformer(self) -> bool:
        """A pass of one model chunk (``F``, ``B``, ``W``, ``BW``), located by its chunk."""
        return self in (ActionKind.F, ActionKind.B, ActionKind.W, ActionKind.BW)

    @property
    def is_vocabulary(self) -> bool:
        """A vocabulary-parallel pass (``S``, ``T``, ``IF``, ``IB``), run by every stage."""
        return not self.is_transformer

    @property
    def frees_activations(self) -> bool:
        """Releases the chunk's stored activations (``W`` or ``BW``; ``B`` keeps what ``W`` needs)."""
        return self in (ActionKind.W, ActionKind.BW)

    @property
    def token(self) -> str:
        """Lower-case letters used by the text renderer (``BW`` renders as ``b``)."""
        return "b" if self is ActionKind.BW else self.value


@dataclass(frozen=True, slots=True)
class Action:
    """One pass of one micro-batch on one stage.

    ``chunk`` is the *local* model-chunk index on ``stage`` (0 for single-chunk schedules and for
    vocabulary passes); the schedule's placement maps (stage, chunk) to a virtual stage.
    ``str(action)`` is the compact token used by the text renderer, e.g. ``f3``, ``b2c1``, ``w0``.
    """

    stage: int
    kind: ActionKind
    microbatch: int
    chunk: int = 0
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ActionKind):
            raise TypeError(f"Action.kind must be an ActionKind, got {self.kind!r}")
        stage, microbatch, chunk = self.stage, self.microbatch, self.chunk
        if not (type(stage) is int and type(microbatch) is int and type(chunk) is int
                and stage >= 0 and microbatch >= 0 and chunk >= 0):
            raise ValueError(f"Action stage, microbatch and chunk must be non-negative ints, "
                             f"got {stage!r}, {microbatch!r}, {chunk!r}")
        # Actions key every dict of the validator and the compiler: hash once, not per lookup
        # (an Enum member hashes through a Python-level __hash__).
        object.__setattr__(self, "_hash", hash((stage, self.kind._value_, microbatch, chunk)))

    def __hash__(self) -> int:
        return self._hash

    def token(self, *, show_chunk: bool = True) -> str:
        """``f3``, or ``f3c1`` with ``show_chunk`` (vocabulary passes never show a chunk)."""
        suffix = f"c{self.chunk}" if show_chunk and self.kind.is_transformer else ""
        return f"{self.kind.token}{self.microbatch}{suffix}"

    def __str__(self) -> str:
        return self.token(show_chunk=self.chunk != 0)

    def describe(self) -> str:
        """``stage 2 f3c1``: the form used in error messages."""
        return f"stage {self.stage} {self}"

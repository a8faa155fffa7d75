"""Vocabulary parallelism: input and output layers split over all stages, as extra passes.

Yeung, Qi, Lin and Wan, "Balancing Pipeline Parallelism with Vocabulary Parallelism", MLSys 2025
(arXiv:2411.05288). Instead of the first stage owning the input embedding and the last stage the
output layer (imbalancing compute and memory), every stage owns 1/p of the vocabulary of both and
runs, per micro-batch:

- ``IF``: its partial input embeddings, reduced to the first virtual stage before its ``F``;
- ``S``: logits of its vocabulary shard from the broadcast last hidden state, with the local
  softmax statistics (and, in Algorithm 2, the local input-gradient contribution);
- ``T``: after the statistics all-reduce, the rescale and its output-weight gradient (in
  Algorithm 1 also the input-gradient partials);
- ``IB``: its embedding-shard gradient, from the broadcast input gradient of the first stage.

Algorithm 1 has two barriers: the last virtual stage's backward waits for ``T`` of every stage.
Algorithm 2 has one: it waits for ``S`` only, and ``T`` is deferred like a ``W``. The paper
integrates the passes into existing schedules; on 1F1B the activation memory grows to p+2
(Algorithm 1) or p+1 (Algorithm 2) micro-batches, and V-Half keeps its balance.

Our construction ("the generalizable method" of the paper, in our words):

1. Take the base schedule with every backward delayed to make room for the output passes: 1F1B
   with 2 (Algorithm 1) or 1 (Algorithm 2) extra warm-up forwards, or V-Half with its block's
   backwards delayed by as many periods.
2. List-schedule the base with the default durations and give every vocabulary pass a target
   time: ``S`` when the last chunk's ``F`` ends; ``T`` halfway between that and the start of the
   last chunk's backward (Algorithm 1) or when that backward ends (Algorithm 2); ``IF`` one micro-batch ahead, when the first
   chunk's ``F`` of the previous micro-batch starts; ``IB`` when the first chunk's backward ends.
3. Insert each pass into every stage's list before the first base action that starts after its
   target. Every dependency then points to an earlier target, so the merged lists are
   deadlock-free by construction.

Vocabulary 1F1B, Algorithm 2, p = 2, m = 3::

    stage 0: if0 if1 f0 if2 f1 s0 f2 s1 t0 b0 s2 ib0 t1 b1 t2 ib1 b2 ib2
    stage 1: if0 if1 if2 f0 s0 f1 s1 b0 t0 f2 s2 b1 ib0 t1 b2 t2 ib1 ib2
"""

from __future__ import annotations

from dataclasses import replace

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.analysis import simulate
from clustersim.schedules.arguments import ScheduleArgumentError
from clustersim.schedules.one_f_one_b import one_f_one_b
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.v_shape import v_half

Key = tuple[float, int, int]


def _check_algorithm(name: str, algorithm: int) -> None:
    if algorithm not in (1, 2):
        raise ScheduleArgumentError(f"{name} needs algorithm = 1 or 2 (the paper's Algorithm 1 "
                                    f"with two barriers, Algorithm 2 with one), got {algorithm!r}")


def add_vocabulary_passes(base: Schedule, algorithm: int, name: str) -> Schedule:
    """Insert ``IF``/``S``/``T``/``IB`` for every micro-batch on every stage of ``base``."""
    _check_algorithm(name, algorithm)
    timeline = simulate(base)
    layout = base.layout
    vocab: list[tuple[Key, ActionKind, int]] = []
    for mb in range(base.num_microbatches):
        path = layout.path(mb)
        last_forward = layout.action(ActionKind.F, mb, path[-1])
        last_backward = layout.action(base.input_grad_kind(mb, path[-1]), mb, path[-1])
        first_backward = layout.action(base.input_grad_kind(mb, path[0]), mb, path[0])
        earlier_forward = layout.action(ActionKind.F, max(mb - 1, 0), path[0])
        s_time = timeline.end[last_forward]
        if algorithm == 1:  # halfway between S and the backward that needs T
            t_time = (s_time + timeline.start[last_backward]) / 2
        else:  # deferred like a W
            t_time = timeline.end[last_backward]
        vocab += [
            ((timeline.start[earlier_forward], 0, 0), ActionKind.IF, mb),
            ((s_time, 0, 1), ActionKind.S, mb),
            ((t_time, 0, 2), ActionKind.T, mb),
            ((timeline.end[first_backward], 0, 3), ActionKind.IB, mb),
        ]
    merged = []
    for stage, row in enumerate(base.actions):
        keyed: list[tuple[Key, Action]] = [((timeline.start[a], 1, i), a) for i, a in enumerate(row)]
        keyed += [(key, Action(stage, kind, mb)) for key, kind, mb in vocab]
        keyed.sort(key=lambda item: item[0])
        merged.append(tuple(action for _, action in keyed))
    return replace(base, name=name, actions=tuple(merged), vocab_algorithm=algorithm)


def vocab_1f1b(p: int, m: int, v: int = 1, *, algorithm: int = 2) -> Schedule:
    """1F1B with vocabulary parallelism (the paper's Figure 10)."""
    _check_algorithm("Vocabulary 1F1B", algorithm)
    base = one_f_one_b(p, m, v, extra_warmup=3 - algorithm)
    return add_vocabulary_passes(base, algorithm, "vocab-1f1b")


def vocab_v_half(p: int, m: int, v: int = 2, *, algorithm: int = 2) -> Schedule:
    """V-Half with vocabulary parallelism: balanced compute and memory on every stage."""
    _check_algorithm("Vocabulary V-Half", algorithm)
    base = v_half(p, m, v, extra_lifespan=3 - algorithm)
    return add_vocabulary_passes(base, algorithm, "vocab-v-half")

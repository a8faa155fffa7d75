"""GPipe: all forwards, then all backwards.

Huang et al., "GPipe: Efficient Training of Giant Neural Networks using Pipeline Parallelism",
NeurIPS 2019 (Figure 2c). Every stage runs ``F`` for micro-batches 0..m-1, then the fused
backward ``BW`` in reverse order m-1..0, as autograd would for one concatenated batch. Peak
activations: all m micro-batches on every stage; bubble (p-1)/(m+p-1) with uniform stages.

p = 3, m = 4::

    stage 0: f0 f1 f2 f3 b3 b2 b1 b0
    stage 1: f0 f1 f2 f3 b3 b2 b1 b0
    stage 2: f0 f1 f2 f3 b3 b2 b1 b0
"""

from __future__ import annotations

from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.arguments import require_chunks, require_positive
from clustersim.schedules.layout import interleaved_placement
from clustersim.schedules.schedule import Schedule


def gpipe(p: int, m: int, v: int = 1) -> Schedule:
    """GPipe with ``p`` stages and ``m`` micro-batches (one chunk per stage)."""
    require_positive("GPipe", num_stages=p, num_microbatches=m)
    require_chunks("GPipe", v, (1,))
    actions = tuple(
        tuple(Action(s, ActionKind.F, mb) for mb in range(m))
        + tuple(Action(s, ActionKind.BW, mb) for mb in reversed(range(m)))
        for s in range(p))
    return Schedule("gpipe", p, m, 1, interleaved_placement(p, 1), actions)

"""Collective algorithms decomposed into flow steps (coflows) over a group of endpoints.

Fidelity: flow-level, like NCCL's algorithms without its protocol details. Each step is a set
of equal flows that start together; a step costs its per-step latency (``step_latency_s``, the
algorithm's alpha) plus the time the fabric takes to drain the step's flows. On an idle
non-blocking fabric with link bandwidth B this reproduces the textbook alpha-beta costs, e.g.
ring all-reduce: 2(n-1) * (alpha + path latency) + 2(n-1)/n * S/B (Patarasuk & Yuan, 2009;
Thakur, Rabenseifner & Gropp, 2005).

Sizes follow NCCL's conventions: ``size_bytes`` is the per-rank buffer: the all-reduce buffer,
the all-gather *output*, the reduce-scatter *input*, the all-to-all send buffer.
"""

from __future__ import annotations

from typing import Callable, Sequence

from clustersim.sim.program import FlowStep

ALGORITHMS: dict[str, dict[str, Callable]] = {}


def _register(collective: str, algorithm: str):
    def wrap(function):
        ALGORITHMS.setdefault(collective, {})[algorithm] = function
        return function
    return wrap


def _ring_pairs(group: Sequence[int]) -> tuple[tuple[int, int], ...]:
    n = len(group)
    return tuple((group[i], group[(i + 1) % n]) for i in range(n))


@_register("all_reduce", "ring")
def ring_all_reduce(group, size_bytes, step_latency_s=0.0):
    """Reduce-scatter then all-gather around a ring: 2(n-1) steps of S/n per rank."""
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, 2 * (n - 1), step_latency_s),)


@_register("all_gather", "ring")
def ring_all_gather(group, size_bytes, step_latency_s=0.0):
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, n - 1, step_latency_s),)


@_register("reduce_scatter", "ring")
def ring_reduce_scatter(group, size_bytes, step_latency_s=0.0):
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, n - 1, step_latency_s),)


@_register("all_to_all", "pairwise")
def pairwise_all_to_all(group, size_bytes, step_latency_s=0.0):
    """n-1 steps; in step k rank i sends its S/n block for rank i+k (mod n)."""
    n = len(group)
    return tuple(FlowStep(tuple((group[i], group[(i + k) % n]) for i in range(n)), size_bytes / n,
                          1, step_latency_s) for k in range(1, n))


@_register("broadcast", "ring")
def ring_broadcast(group, size_bytes, step_latency_s=0.0, chunks: int = 8):
    """Pipelined chain from group[0]: ``chunks`` pieces, n-2+chunks steps of one hop each."""
    n = len(group)
    chain = tuple((group[i], group[i + 1]) for i in range(n - 1))
    return (FlowStep(chain, size_bytes / chunks, n - 2 + chunks, step_latency_s),)


def collective_steps(collective: str, group: Sequence[int], size_bytes: float, *,
                     algorithm: str | None = None, step_latency_s: float = 0.0) -> tuple[FlowStep, ...]:
    """Flow steps of ``collective`` over ``group`` with the named (or default) algorithm."""
    if collective not in ALGORITHMS:
        raise ValueError(f"unknown collective {collective!r}; expected one of {sorted(ALGORITHMS)}")
    choices = ALGORITHMS[collective]
    algorithm = algorithm or next(iter(choices))
    if algorithm not in choices:
        raise ValueError(f"unknown algorithm {algorithm!r} for {collective}; expected one of "
                         f"{sorted(choices)}")
    if len(group) != len(set(group)):
        raise ValueError(f"{collective}: group {list(group)} names a member twice")
    if size_bytes < 0:
        raise ValueError(f"{collective}: size_bytes must be >= 0, got {size_bytes}")
    if len(group) < 2:
        return ()
    return choices[algorithm](list(group), size_bytes, step_latency_s)


def bus_bandwidth_factor(collective: str, n: int) -> float:
    """NCCL's busbw / algbw factor (nccl-tests doc/PERFORMANCE.md)."""
    return {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n,
            "reduce_scatter": (n - 1) / n, "all_to_all": (n - 1) / n,
            "broadcast": 1.0}.get(collective, 1.0)

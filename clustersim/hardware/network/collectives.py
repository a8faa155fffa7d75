"""Collective algorithms decomposed into flow steps (coflows) over a group of endpoints.

Fidelity: flow-level, like NCCL's algorithms without its protocol details. Each step is a set
of equal flows that start together; a step costs its per-step latency (``step_latency_s``, the
algorithm's alpha) plus the time the fabric takes to drain the step's flows. On an idle
non-blocking fabric with link bandwidth B this reproduces the textbook alpha-beta costs, e.g.
ring all-reduce: 2(n-1) * (alpha + path latency) + 2(n-1)/n * S/B (Patarasuk & Yuan, 2009;
Thakur, Rabenseifner & Gropp, 2005).

Sizes follow NCCL's conventions: ``size_bytes`` is the per-rank buffer: the all-reduce buffer,
the all-gather *output*, the reduce-scatter *input*, the all-to-all send buffer.

Algorithms (``ALGORITHMS[collective][name]``):

* ``ring``: all-reduce (reduce-scatter + all-gather, 2(n-1) steps of S/n), all-gather and
  reduce-scatter (n-1 steps of S/n), broadcast (a pipelined chain).
* ``tree``: all-reduce over NCCL's double binary tree (two in-order binary trees, the second
  shifted by one rank so most leaves of one are inner nodes of the other; each carries half the
  data, pipelined in chunks, reduce up and broadcast down overlapped): 2D + c - 1 steps of
  S/(2c) per edge for depth D and c chunks. Broadcast: one pipelined binary tree.
* ``halving_doubling``: Rabenseifner's all-reduce (recursive-halving reduce-scatter, then
  recursive-doubling all-gather: 2 log2 n steps); a non-power-of-two group first folds its
  extra ranks into partners. ``halving`` / ``doubling``: the reduce-scatter / all-gather halves.
* ``pairwise``: all-to-all in n-1 steps, rank i sending its block for rank i+k in step k.
* ``hierarchical`` (see ``hierarchical.py``): intra-node phases over NVLink, and the inter-node
  phase on rails (GPU j of every node with GPU j of the others, so each NIC carries one flow),
  the form NCCL's ring/tree take on multi-GPU nodes. ``hierarchical_tree`` and
  ``hierarchical_halving_doubling`` use those algorithms across nodes.

Repeated identical steps are one ``FlowStep`` with ``repeat``; the fabric replays such repeats
when they run alone (``sim/fabric.py``), so a ring over thousands of nodes is a handful of solves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from clustersim.sim.fabric import PairArray
from clustersim.sim.program import FlowStep

ALGORITHMS: dict[str, dict[str, Callable]] = {}

# Pipeline chunk of tree and broadcast algorithms: NCCL's 4 MiB buffer (NCCL_BUFFSIZE) in
# NCCL_STEPS = 8 slots (NCCL src/include/collectives.h, docs env NCCL_BUFFSIZE).
DEFAULT_CHUNK_BYTES = 512 * 1024
MAX_CHUNKS = 4096


@dataclass(frozen=True)
class Context:
    """What an algorithm may need besides the group and size."""

    step_latency_s: float = 0.0                 # alpha of steps across nodes (or of all steps)
    intra_node_step_latency_s: float | None = None
    gpus_per_node: int | None = None
    chunk_bytes: float = DEFAULT_CHUNK_BYTES

    @property
    def intra_latency_s(self) -> float:
        return self.step_latency_s if self.intra_node_step_latency_s is None \
            else self.intra_node_step_latency_s


def register(collective: str, algorithm: str):
    def wrap(function):
        ALGORITHMS.setdefault(collective, {})[algorithm] = function
        return function
    return wrap


def _ring_pairs(group: Sequence[int]) -> PairArray:
    ranks = np.asarray(group, dtype=np.int64)
    return PairArray(ranks, np.roll(ranks, -1))


# -- ring ------------------------------------------------------------------------------------
@register("all_reduce", "ring")
def ring_all_reduce(group, size_bytes, ctx: Context):
    """Reduce-scatter then all-gather around a ring: 2(n-1) steps of S/n per rank."""
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, 2 * (n - 1), ctx.step_latency_s),)


@register("all_gather", "ring")
def ring_all_gather(group, size_bytes, ctx: Context):
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, n - 1, ctx.step_latency_s),)


@register("reduce_scatter", "ring")
def ring_reduce_scatter(group, size_bytes, ctx: Context):
    n = len(group)
    return (FlowStep(_ring_pairs(group), size_bytes / n, n - 1, ctx.step_latency_s),)


@register("all_to_all", "pairwise")
def pairwise_all_to_all(group, size_bytes, ctx: Context):
    """n-1 steps; in step k rank i sends its S/n block for rank i+k (mod n)."""
    n = len(group)
    ranks = np.asarray(group, dtype=np.int64)

    def shifted(k: int) -> PairArray:   # built when the step runs: O(1) memory per step
        return PairArray(make=lambda: (ranks, np.concatenate((ranks[k:], ranks[:k]))), length=n)

    return tuple(FlowStep(shifted(k), size_bytes / n, 1, ctx.step_latency_s) for k in range(1, n))


@register("broadcast", "ring")
def ring_broadcast(group, size_bytes, ctx: Context, chunks: int = 8):
    """Pipelined chain from group[0]: ``chunks`` pieces, n-2+chunks steps of one hop each."""
    ranks = np.asarray(group, dtype=np.int64)
    n = len(ranks)
    chain = PairArray(ranks[:-1], ranks[1:])
    return (FlowStep(chain, size_bytes / chunks, n - 2 + chunks, ctx.step_latency_s),)


# -- trees -----------------------------------------------------------------------------------
def binary_tree(n: int) -> tuple[list[int], list[int]]:
    """Parent and depth of positions 0..n-1 in the in-order balanced binary tree (root: -1, 0)."""
    parent, depth = [-1] * n, [0] * n
    stack = [(0, n - 1, -1, 0)]
    while stack:
        lo, hi, up, level = stack.pop()
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        parent[mid], depth[mid] = up, level
        stack.append((lo, mid - 1, mid, level + 1))
        stack.append((mid + 1, hi, mid, level + 1))
    return parent, depth


def _chunks(size_bytes: float, ctx: Context) -> int:
    return max(1, min(MAX_CHUNKS, math.ceil(size_bytes / ctx.chunk_bytes)))


def _pipelined_tree_steps(trees: list[list[tuple[int, int, int]]], chunks: int, chunk_bytes: float,
                          latency_s: float, up: bool, down: bool) -> tuple[FlowStep, ...]:
    """Steps of trees pipelined in ``chunks``: each tree is [(child, parent, depth of child)].

    Reduce (``up``): chunk i leaves a child at depth d at step i + D - d. Broadcast (``down``):
    chunk i leaves a parent at depth d-1 at step i + d - 1, plus D when it follows a reduce
    (the root then has chunk i at step i + D). Consecutive steps with the same active edges
    form one FlowStep with a repeat count.
    """
    depth = max((d for tree in trees for _, _, d in tree), default=0)
    offset = depth if up else 0
    last = chunks - 1 + (depth - 1 if up else 0)
    if down:
        last = chunks - 1 + offset + depth - 1
    steps: list[FlowStep] = []
    previous, run = None, 0

    def signature(t):
        # active depths of up edges: t - (D - d) in [0, chunks)  <=>  d in [D - t, D - t + chunks)
        ups = (max(1, depth - t), min(depth, depth - t + chunks - 1)) if up else (1, 0)
        # down edges from parents at depth d-1: t - offset - (d - 1) in [0, chunks)
        downs = (max(1, t - offset - chunks + 2), min(depth, t - offset + 1)) if down else (1, 0)
        return ups, downs

    edges = np.array([edge for tree in trees for edge in tree], dtype=np.int64).reshape(-1, 3)
    child, parent, edge_depth = edges[:, 0], edges[:, 1], edges[:, 2]

    def pairs_of(sig):
        (ulo, uhi), (dlo, dhi) = sig
        up_on = (edge_depth >= ulo) & (edge_depth <= uhi)
        down_on = (edge_depth >= dlo) & (edge_depth <= dhi)
        return PairArray(np.concatenate([child[up_on], parent[down_on]]),
                         np.concatenate([parent[up_on], child[down_on]]))

    for t in range(last + 1):
        sig = signature(t)
        if sig == previous:
            run += 1
            continue
        if previous is not None:
            steps.append(FlowStep(pairs_of(previous), chunk_bytes, run, latency_s))
        previous, run = sig, 1
    if previous is not None:
        steps.append(FlowStep(pairs_of(previous), chunk_bytes, run, latency_s))
    return tuple(step for step in steps if len(step.pairs))


def _tree_edges(group: Sequence[int], shift: int) -> list[tuple[int, int, int]]:
    n = len(group)
    parent, depth = binary_tree(n)
    rank = [group[(pos + shift) % n] for pos in range(n)]
    return [(rank[v], rank[parent[v]], depth[v]) for v in range(n) if parent[v] >= 0]


@register("all_reduce", "tree")
def double_binary_tree_all_reduce(group, size_bytes, ctx: Context):
    half = size_bytes / 2
    chunks = _chunks(half, ctx)
    trees = [_tree_edges(group, 0), _tree_edges(group, 1)] if len(group) > 2 \
        else [_tree_edges(group, 0)]
    per_tree = size_bytes / len(trees)
    return _pipelined_tree_steps(trees, chunks, per_tree / chunks, ctx.step_latency_s,
                                 up=True, down=True)


@register("broadcast", "tree")
def tree_broadcast(group, size_bytes, ctx: Context):
    n = len(group)
    root = binary_tree(n)[0].index(-1)
    chunks = _chunks(size_bytes, ctx)
    tree = _tree_edges(group, -root)   # position ``root`` holds group[0]
    return _pipelined_tree_steps([tree], chunks, size_bytes / chunks, ctx.step_latency_s,
                                 up=False, down=True)


# -- halving / doubling ----------------------------------------------------------------------
def _exchange(ranks: Sequence[int], distance: int) -> PairArray:
    ranks = np.asarray(ranks, dtype=np.int64)
    return PairArray(ranks, ranks[np.arange(len(ranks)) ^ distance])


def _halving(ranks: Sequence[int], size_bytes: float, latency: float) -> list[FlowStep]:
    p = len(ranks)
    steps, distance, chunk = [], p // 2, size_bytes / 2
    while distance >= 1:
        steps.append(FlowStep(_exchange(ranks, distance), chunk, 1, latency))
        distance //= 2
        chunk /= 2
    return steps


def _doubling(ranks: Sequence[int], size_bytes: float, latency: float) -> list[FlowStep]:
    p = len(ranks)
    steps, distance, chunk = [], 1, size_bytes / p
    while distance < p:
        steps.append(FlowStep(_exchange(ranks, distance), chunk, 1, latency))
        distance *= 2
        chunk *= 2
    return steps


def _power_of_two(collective: str, n: int) -> None:
    if n & (n - 1):
        raise ValueError(f"{collective} by recursive halving/doubling needs a power-of-two group, "
                         f"got {n} ranks; use algorithm 'ring'")


@register("all_reduce", "halving_doubling")
def halving_doubling_all_reduce(group, size_bytes, ctx: Context):
    n = len(group)
    p = 1 << (n.bit_length() - 1)
    extra = n - p
    latency = ctx.step_latency_s
    # Ranks 2i+1 (i < extra) fold into 2i before, and get the result back after.
    folded = [group[2 * i] for i in range(extra)] + list(group[2 * extra:])
    ranks = np.asarray(group, dtype=np.int64)
    even, odd = ranks[0:2 * extra:2], ranks[1:2 * extra:2]
    pre = [FlowStep(PairArray(odd, even), size_bytes, 1, latency)] if extra else []
    post = [FlowStep(PairArray(even, odd), size_bytes, 1, latency)] if extra else []
    return tuple(pre + _halving(folded, size_bytes, latency) + _doubling(folded, size_bytes, latency)
                 + post)


@register("reduce_scatter", "halving")
def halving_reduce_scatter(group, size_bytes, ctx: Context):
    _power_of_two("reduce_scatter", len(group))
    return tuple(_halving(list(group), size_bytes, ctx.step_latency_s))


@register("all_gather", "doubling")
def doubling_all_gather(group, size_bytes, ctx: Context):
    _power_of_two("all_gather", len(group))
    return tuple(_doubling(list(group), size_bytes, ctx.step_latency_s))


# -- entry points ----------------------------------------------------------------------------
def default_algorithm(collective: str, group: Sequence[int], gpus_per_node: int | None) -> str:
    """Hierarchical when the group spans nodes with several members on a node, else the first."""
    choices = ALGORITHMS[collective]
    if gpus_per_node and "hierarchical" in choices:
        nodes = {d // gpus_per_node for d in group}
        if 1 < len(nodes) < len(group):
            return "hierarchical"
    return next(iter(choices))


def collective_steps(collective: str, group: Sequence[int], size_bytes: float, *,
                     algorithm: str | None = None, step_latency_s: float = 0.0,
                     intra_node_step_latency_s: float | None = None,
                     gpus_per_node: int | None = None,
                     chunk_bytes: float = DEFAULT_CHUNK_BYTES) -> tuple[FlowStep, ...]:
    """Flow steps of ``collective`` over ``group`` with the named (or default) algorithm.

    ``gpus_per_node`` (devices ``d`` and ``e`` share a node when ``d // gpus_per_node ==
    e // gpus_per_node``) enables the hierarchical algorithms and makes them the default for
    groups spanning nodes; intra-node steps then wait ``intra_node_step_latency_s``.
    """
    import clustersim.hardware.network.hierarchical  # noqa: F401  (registers hierarchical)

    if collective not in ALGORITHMS:
        raise ValueError(f"unknown collective {collective!r}; expected one of {sorted(ALGORITHMS)}")
    choices = ALGORITHMS[collective]
    algorithm = algorithm or default_algorithm(collective, group, gpus_per_node)
    if algorithm not in choices:
        raise ValueError(f"unknown algorithm {algorithm!r} for {collective}; expected one of "
                         f"{sorted(choices)}")
    if len(group) != len(set(group)):
        raise ValueError(f"{collective}: group {list(group)} names a member twice")
    if size_bytes < 0:
        raise ValueError(f"{collective}: size_bytes must be >= 0, got {size_bytes}")
    if len(group) < 2:
        return ()
    ctx = Context(step_latency_s, intra_node_step_latency_s, gpus_per_node, chunk_bytes)
    return tuple(choices[algorithm](list(group), size_bytes, ctx))


def algorithms(collective: str) -> list[str]:
    import clustersim.hardware.network.hierarchical  # noqa: F401

    return sorted(ALGORITHMS.get(collective, {}))


def bus_bandwidth_factor(collective: str, n: int) -> float:
    """NCCL's busbw / algbw factor (nccl-tests doc/PERFORMANCE.md)."""
    return {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n,
            "reduce_scatter": (n - 1) / n, "all_to_all": (n - 1) / n,
            "broadcast": 1.0}.get(collective, 1.0)

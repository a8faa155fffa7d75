"""Hierarchical collectives: NVLink phases inside nodes, rail phases across nodes.

A group spanning N nodes with g members on each (the same g everywhere) is laid out as
``members[node][local]`` (both sorted). Intra-node phases run the flat algorithm among a node's
g members, all nodes at once; inter-node phases run it among the N members with the same local
index (a *rail*: GPU j of every node, which uses NIC j), all rails at once. Each NIC thus
carries one flow per step, which is how NCCL keeps every NIC busy on multi-GPU nodes.

* all-reduce: reduce-scatter in the node (g-1 steps of S/g), all-reduce of the S/g shard on
  each rail (ring, double binary tree or halving-doubling), all-gather in the node.
  Per rank on the network: 2(N-1)/N * S/g, the ring's 2(n-1)/n * S spread over g NICs.
* reduce-scatter: in the node (S/g per step), then on the rails (S/(gN) per step).
* all-gather: on the rails (S/(gN) per step), then in the node (S/g per step).
* all-to-all: in the node, rank (a, j) hands rank (a, j') the N blocks bound for local index
  j' (S/g per peer); then on rail j', node a sends node b its g blocks for (b, j') (S/N per
  peer). Network bytes per rank: (N-1)/N * S, as the flat pairwise exchange.
* broadcast: a pipelined chain along the root's rail, then chains inside every node.

With N = 1 only the intra-node phases remain; with g = 1 only the rail phases.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from clustersim.hardware.network import collectives as flat
from clustersim.hardware.network.collectives import Context, register
from clustersim.sim.fabric import PairArray
from clustersim.sim.program import FlowStep


def layout(group: Sequence[int], gpus_per_node: int | None) -> list[list[int]]:
    """``members[node][local]`` of ``group``; ValueError unless every node has as many."""
    if not gpus_per_node:
        raise ValueError("hierarchical algorithms need gpus_per_node (which devices share a node)")
    by_node: dict[int, list[int]] = {}
    for device in group:
        by_node.setdefault(device // gpus_per_node, []).append(device)
    counts = {node: len(members) for node, members in by_node.items()}
    if len(set(counts.values())) != 1:
        raise ValueError("hierarchical algorithms need the same number of group members on every "
                         f"node, got {dict(sorted(counts.items()))} (node: members)")
    return [sorted(by_node[node]) for node in sorted(by_node)]


def _mapped(steps: Sequence[FlowStep], mapping: list[list[int]], latency_s: float) -> list[FlowStep]:
    """Steps computed on positions 0..k-1, applied to every row of ``mapping`` at once.

    The mapped pairs are built when the step runs (``PairArray(make=...)``), so the steps of
    an all-to-all over thousands of nodes hold no pair arrays until then.
    """
    ids = np.asarray(mapping, dtype=np.int64)
    result = []
    # Steps that share a position array (the senders of every pairwise all-to-all step) share
    # its mapped array too: built once, and one object the fabric recognises.
    mapped: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def rows(array: np.ndarray) -> np.ndarray:
        entry = mapped.get(id(array))
        if entry is None or entry[0] is not array:
            out = ids.take(array, axis=1).ravel()
            out.flags.writeable = False
            entry = (array, out) if len(mapped) < 4 else (None, out)
            if entry[0] is not None:
                mapped[id(array)] = entry
        return entry[1]

    for step in steps:
        positions = step.pairs

        def make(positions=positions):
            src, dst = positions.arrays()
            return rows(src), ids.take(dst, axis=1).ravel()   # (take: C order, ~9x ids[:, dst])

        pairs = PairArray(make=make, length=len(ids) * len(positions))
        result.append(replace(step, pairs=pairs, latency_s=latency_s))
    return result


def _intra(members, function: Callable, size: float, ctx: Context, **kwargs) -> list[FlowStep]:
    g = len(members[0])
    if g < 2:
        return []
    inner = Context(ctx.intra_latency_s, None, None, ctx.chunk_bytes)
    return _mapped(function(list(range(g)), size, inner, **kwargs), members, ctx.intra_latency_s)


def _rails(members, function: Callable, size: float, ctx: Context, node_order=None,
           **kwargs) -> list[FlowStep]:
    nodes = len(members)
    if nodes < 2:
        return []
    order = node_order or list(range(nodes))
    rails = [[members[node][j] for node in order] for j in range(len(members[0]))]
    inter = Context(ctx.step_latency_s, None, None, ctx.chunk_bytes)
    return _mapped(function(list(range(nodes)), size, inter, **kwargs), rails, ctx.step_latency_s)


def _all_reduce(inter_algorithm: Callable):
    def algorithm(group, size_bytes, ctx: Context):
        members = layout(group, ctx.gpus_per_node)
        g = len(members[0])
        if len(members) == 1:
            return tuple(_intra(members, flat.ring_all_reduce, size_bytes, ctx))
        return tuple(_intra(members, flat.ring_reduce_scatter, size_bytes, ctx)
                     + _rails(members, inter_algorithm, size_bytes / g, ctx)
                     + _intra(members, flat.ring_all_gather, size_bytes, ctx))
    return algorithm


register("all_reduce", "hierarchical")(_all_reduce(flat.ring_all_reduce))
register("all_reduce", "hierarchical_tree")(_all_reduce(flat.double_binary_tree_all_reduce))
register("all_reduce", "hierarchical_halving_doubling")(_all_reduce(flat.halving_doubling_all_reduce))


@register("reduce_scatter", "hierarchical")
def hierarchical_reduce_scatter(group, size_bytes, ctx: Context):
    members = layout(group, ctx.gpus_per_node)
    g = len(members[0])
    return tuple(_intra(members, flat.ring_reduce_scatter, size_bytes, ctx)
                 + _rails(members, flat.ring_reduce_scatter, size_bytes / g, ctx))


@register("all_gather", "hierarchical")
def hierarchical_all_gather(group, size_bytes, ctx: Context):
    members = layout(group, ctx.gpus_per_node)
    g = len(members[0])
    return tuple(_rails(members, flat.ring_all_gather, size_bytes / g, ctx)
                 + _intra(members, flat.ring_all_gather, size_bytes, ctx))


@register("all_to_all", "hierarchical")
def hierarchical_all_to_all(group, size_bytes, ctx: Context):
    members = layout(group, ctx.gpus_per_node)
    return tuple(_intra(members, flat.pairwise_all_to_all, size_bytes, ctx)
                 + _rails(members, flat.pairwise_all_to_all, size_bytes, ctx))


@register("broadcast", "hierarchical")
def hierarchical_broadcast(group, size_bytes, ctx: Context):
    """From group[0]: a chain along its rail (starting at its node), then chains in each node."""
    members = layout(group, ctx.gpus_per_node)
    root = group[0]
    root_node = next(i for i, ids in enumerate(members) if root in ids)
    root_local = members[root_node].index(root)
    nodes, g = len(members), len(members[0])
    order = [(root_node + k) % nodes for k in range(nodes)]
    rail = [[members[node][root_local] for node in order]]
    steps = []
    if nodes > 1:
        inter = Context(ctx.step_latency_s, None, None, ctx.chunk_bytes)
        steps += _mapped(flat.ring_broadcast(list(range(nodes)), size_bytes, inter), rail,
                         ctx.step_latency_s)
    rotated = [[ids[(root_local + k) % g] for k in range(g)] for ids in members]
    steps += _intra(rotated, flat.ring_broadcast, size_bytes, ctx)
    return tuple(steps)

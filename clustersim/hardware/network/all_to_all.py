"""All-to-allv: uneven per-pair bytes (MoE dispatch and combine) as coflows on the fabric.

Fidelity: flow-level. A FlowStep carries equal flows, so an uneven byte matrix B (group rank x
group rank) is cut into *levels*: with the distinct pair sizes b_1 < b_2 < ... < b_K, step k
sends b_k - b_{k-1} on every pair with B >= b_k. The steps run back to back; each pair has sent
exactly B_ij when the last step that includes it ends. Where one bottleneck link per sender or
receiver dominates (a NIC, an NVLink port) this costs what the concurrent all-to-allv costs:
max_i sum_j B_ij / bandwidth. Above ``max_levels`` distinct sizes, pair sizes are first rounded
to the nearest of ``max_levels`` quantile levels (rounding keeps each level's mean), which
:func:`level_error` reports; the byte matrices that metrics report are always exact.

``hierarchical`` (Tutel's 2DH all-to-all, Hwang et al. 2023, section 3.3; DeepEP's NVLink/RDMA
split): phase 1 inside each node moves every byte to the local GPU on the destination's rail
(same local rank as the destination), phase 2 sends one aggregated message per rail between
nodes, so each NIC carries one flow per peer node instead of one per peer GPU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clustersim.sim.program import FlowStep

DEFAULT_MAX_LEVELS = 16


def _quantise(values: np.ndarray, max_levels: int) -> np.ndarray:
    """Round positive values to at most ``max_levels`` levels (each the mean of its bin)."""
    positive = values[values > 0]
    distinct = np.unique(positive)
    if len(distinct) <= max_levels:
        return values
    edges = np.quantile(positive, np.linspace(0, 1, max_levels + 1))
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max_levels - 1)
    out = np.zeros_like(values)
    for b in range(max_levels):
        members = (bins == b) & (values > 0)
        if members.any():
            out[members] = values[members].mean()
    return out


def level_error(matrix: np.ndarray, max_levels: int = DEFAULT_MAX_LEVELS) -> float:
    """Largest relative error that level rounding makes on one sender's or receiver's bytes."""
    m = np.asarray(matrix, dtype=float).copy()
    np.fill_diagonal(m, 0.0)
    q = _quantise(m, max_levels)
    worst = 0.0
    for axis in (0, 1):
        exact, rounded = m.sum(axis=axis), q.sum(axis=axis)
        nz = exact > 0
        if nz.any():
            worst = max(worst, float(np.max(np.abs(rounded[nz] - exact[nz]) / exact[nz])))
    return worst


def layered_steps(matrix: np.ndarray, group: Sequence[int], latency_s: float = 0.0,
                  max_levels: int = DEFAULT_MAX_LEVELS) -> tuple[FlowStep, ...]:
    """Flat all-to-allv of ``matrix[i, j]`` bytes from ``group[i]`` to ``group[j]``."""
    m = np.asarray(matrix, dtype=float).copy()
    n = len(group)
    if m.shape != (n, n):
        raise ValueError(f"all-to-allv: a {n} x {n} byte matrix expected, got {m.shape}")
    if (m < 0).any():
        raise ValueError("all-to-allv: negative bytes in the matrix")
    np.fill_diagonal(m, 0.0)  # a rank's bytes for itself stay on the device
    m = _quantise(m, max_levels)
    ranks = np.asarray(group, dtype=np.int64)
    steps, sent = [], 0.0
    for level in np.unique(m[m > 0]):
        src, dst = np.nonzero(m >= level)
        pairs = tuple(zip(ranks[src].tolist(), ranks[dst].tolist()))
        steps.append(FlowStep(pairs, float(level - sent), 1, latency_s if not steps else 0.0))
        sent = level
    return tuple(steps)


def hierarchical_matrices(matrix: np.ndarray,
                          devices_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """(intra-node phase, inter-node phase) byte matrices over the same ranks.

    Rank r is local rank r % g of node r // g. Phase 1: (n, a) -> (n, b) carries what (n, a)
    has for local rank b of every *other* node, plus its own node's bytes for (n, b). Phase 2:
    (n, b) -> (m, b) carries everything node n has for (m, b), m != n.
    """
    m = np.asarray(matrix, dtype=float)
    n, g = len(m), devices_per_node
    if n % g:
        raise ValueError(f"hierarchical all-to-allv needs whole nodes: {n} ranks, {g} per node")
    nodes = n // g
    b = m.reshape(nodes, g, nodes, g)         # [src node, src local, dst node, dst local]
    intra = np.zeros((nodes, g, nodes, g))
    inter = np.zeros((nodes, g, nodes, g))
    for node in range(nodes):
        # bytes for other nodes gather on the destination's rail inside this node
        to_rail = b[node].sum(axis=1) - b[node, :, node, :]   # [src local, dst local]
        intra[node, :, node, :] = to_rail + b[node, :, node, :]
        # the rail GPU then sends node-to-node
        for other in range(nodes):
            if other != node:
                inter[node, np.arange(g), other, np.arange(g)] = b[node, :, other, :].sum(axis=0)
    return intra.reshape(n, n), inter.reshape(n, n)


def all_to_allv_steps(matrix: np.ndarray, group: Sequence[int], *, devices_per_node: int | None,
                      intra_latency_s: float = 0.0, inter_latency_s: float = 0.0,
                      hierarchical: bool = True,
                      max_levels: int = DEFAULT_MAX_LEVELS) -> tuple[FlowStep, ...]:
    """Steps of an all-to-allv over ``group`` (device indices, node-aligned for hierarchical)."""
    group = list(group)
    g = devices_per_node or len(group)
    nodes = {d // g for d in group}
    aligned = len(group) % g == 0 and all(group[i] // g == group[i - i % g] // g and
                                          group[i] % g == i % g for i in range(len(group)))
    if not hierarchical or len(nodes) == 1 or not aligned:
        latency = inter_latency_s if len(nodes) > 1 else intra_latency_s
        return layered_steps(matrix, group, latency, max_levels)
    intra, inter = hierarchical_matrices(matrix, g)
    return (layered_steps(intra, group, intra_latency_s, max_levels)
            + layered_steps(inter, group, inter_latency_s, max_levels))


def step_bytes(steps: Sequence[FlowStep]) -> float:
    """Bytes the steps move between distinct devices."""
    return float(sum(len(s.pairs) * s.bytes_per_flow * s.repeat for s in steps))

"""Collectives timed alone on the idle fabric, once per distinct routed shape (event-level).

A layer-granularity training step charges each gradient bucket the time its collectives take
when they start together on an otherwise idle fabric (``training_step.py``). That time is a
small simulation of just those collectives. A large step asks for it once per stage and
bucket (GPT-1T at PP 64: ~130 sets), and the stages' sets differ only in *which* devices and
links they use, not in how they use them.

Exact reuse: the simulation of a set is fully determined by (a) its flow steps (bytes, repeats,
latencies), (b) which member devices coincide (collectives on one device queue on its stream),
and (c) each step's routed flows: their fractions and, per flow, the links crossed with their
coefficients, capacities and latencies. Numbering devices and links by first appearance turns
(a)-(c) into a *routed shape* that names no device or link; two sets with equal shapes are the
same simulation up to renaming devices and links, so they take the same time. The shape is
compared in full (a dict key of the byte strings), never by a hash alone. It is used only with
a static router (routes that depend on the pair alone, as the fabric's own route cache
assumes); a load-dependent router always simulates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clustersim.hardware.cluster import Cluster
from clustersim.sim.program import FlowStep, Program

Collectives = Sequence[tuple[str, list[int], float]]

# id(cluster) -> (cluster, {collectives: time}, {routed shape: time}, link table); the cluster
# is held so its id stays its own.
_CACHE: dict[int, tuple] = {}
_MAX_CLUSTERS = 4


def idle_collective_time_s(cluster: Cluster, collectives: Collectives, *,
                           reuse_shapes: bool = True) -> float:
    """Time for ``collectives`` (kind, group, size) started together on the idle fabric.

    Runs a small simulation of just these collectives, so contention between concurrent groups
    on shared links (NICs, spine uplinks) counts exactly as in the full model. A set whose
    routed shape (module docstring) was simulated before takes that time without a simulation
    (``reuse_shapes=False`` always simulates: tests compare both).
    """
    key = tuple((kind, tuple(group), size) for kind, group, size in collectives)
    entry = _CACHE.get(id(cluster))
    if entry is None:
        entry = _CACHE[id(cluster)] = (cluster, {}, {}, _link_table(cluster))
        while len(_CACHE) > _MAX_CLUSTERS:
            _CACHE.pop(next(iter(_CACHE)))
    _, by_key, by_shape, links = entry
    if key in by_key:
        return by_key[key]
    runs = [(kind, list(group), cluster.collective(kind, group, size))
            for kind, group, size in collectives if len(group) >= 2 and size > 0]
    if not runs:
        return 0.0
    shape = _routed_shape(cluster, runs, links) if reuse_shapes else None
    time_s = by_shape.get(shape) if shape is not None else None
    if time_s is None:
        time_s = _simulate(cluster, runs)
        if shape is not None:
            by_shape[shape] = time_s
    by_key[key] = time_s
    return time_s


def _simulate(cluster: Cluster, runs: list[tuple[str, list[int], tuple[FlowStep, ...]]]) -> float:
    from clustersim.sim.engine import Simulation

    program = Program()
    for name in cluster.names:
        program.device(name)
    for kind, group, steps in runs:
        program.collective(kind, [(d, "comm", ()) for d in group], steps)
    # No memory pools: building them for every device of a large cluster cost more than the run.
    sim = Simulation(device_names=list(cluster.names), links=list(cluster.links),
                     router=cluster.router, record_trace=False)
    sim.run_program(program)
    return sim.env.now


def _link_table(cluster: Cluster) -> tuple[np.ndarray, np.ndarray] | None:
    """(capacity, latency) of every solver link (physical links, then the router's bundles, as
    ``Fabric`` numbers them), or None when routes may depend on load."""
    router = cluster.router
    if not getattr(router, "static", False) or getattr(router, "route", None) is None:
        return None
    capacity = [link.capacity_bytes_per_s for link in cluster.links]
    latency = [link.latency_s for link in cluster.links]
    for members in getattr(router, "bundles", None) or ():
        capacity.append(sum(capacity[int(m)] for m in members))
        latency.append(latency[int(members[0])])
    return np.asarray(capacity, dtype=float), np.asarray(latency, dtype=float)


def _pairs(pairs) -> tuple[np.ndarray, np.ndarray]:
    arrays = getattr(pairs, "arrays", None)
    if arrays is not None:
        return arrays()
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _routed_shape(cluster: Cluster, runs, links) -> tuple | None:
    """The set's routed shape: everything its simulation depends on, devices and links
    numbered by first appearance (module docstring); None without a static router."""
    if links is None:
        return None
    capacity, latency = links
    router = cluster.router
    devices: dict[int, int] = {}
    parts: list = []
    link_arrays: list[np.ndarray] = []
    for kind, group, steps in runs:
        parts.append((kind, tuple(devices.setdefault(d, len(devices)) for d in group)))
        for step in steps:
            src, dst = _pairs(step.pairs)
            keep = np.flatnonzero(src != dst)       # the fabric drops local copies alike
            routed = router.route(src[keep], dst[keep], None)
            ends = [devices.setdefault(d, len(devices))
                    for d in np.stack([src, dst], axis=1).ravel().tolist()]
            parts.append((step.bytes_per_flow, step.repeat, step.latency_s, tuple(ends),
                          keep[routed.pair].tobytes(), routed.fraction.tobytes(),
                          routed.inc_flow.tobytes(), routed.inc_coef.tobytes(), routed.latency_s,
                          len(routed.inc_link)))
            link_arrays.append(routed.inc_link)
    every = np.concatenate(link_arrays) if link_arrays else np.zeros(0, dtype=np.int64)
    used, first, inverse = np.unique(every, return_index=True, return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    number = np.empty(len(used), dtype=np.int64)
    number[by_appearance] = np.arange(len(used))
    in_order = used[by_appearance]
    return (tuple(parts), number[inverse.reshape(-1)].tobytes(),
            capacity[in_order].tobytes(), latency[in_order].tobytes())

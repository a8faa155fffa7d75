"""Workload ``collective``: one collective on the cluster's fabric, measured like nccl-tests.

    workload:
      kind: collective
      collective: all_reduce        # all_reduce | all_gather | reduce_scatter | all_to_all | broadcast
      algorithm: hierarchical       # default: hierarchical across multi-GPU nodes, else ring/pairwise
      size: 256 MiB                 # per-rank buffer, as nccl-tests counts it
      group: all                    # all | rail:J | node:K | nodes:A-B | [n0.gpu0, n1.gpu0, ...]
      routing: spray                # optional: overrides cluster.network.routing

Metrics (one row per run):

* ``completion_time_s``; ``algbw_bytes_per_s`` = size / time and ``busbw_bytes_per_s`` =
  algbw x NCCL's factor (2(n-1)/n for all-reduce, (n-1)/n for all-gather, reduce-scatter and
  all-to-all, 1 for broadcast: nccl-tests doc/PERFORMANCE.md); the same in GB/s (1e9 B/s).
* ``max_link_congestion``: over the collective's steps (coflows), the largest ratio of the
  busiest network link's load (bytes / capacity) to the busiest NIC's. 1 means the switches
  keep up with the NICs; ECMP collisions or oversubscription r push it to 2, 3, ... or r.
* ``max_switch_utilisation`` / ``mean_switch_utilisation`` / ``max_nic_utilisation``: bytes
  carried / (capacity x completion time) per link, over switch-to-switch links and NIC links.
* With ``reference: true`` (default) the same collective also runs on the ideal multipath
  reference (trunked switch tiers, see ``hardware/network/leaf_spine.py``):
  ``ideal_completion_time_s``, ``time_vs_ideal`` (>= 1 means slower than ideal) and
  ``ideal_max_link_congestion``.
* ``flow_events`` (starts + ends, replays included), ``solved_flow_events``,
  ``replayed_coflows``: what the simulation cost.

The ECMP hash salt comes from the run's seeded Generator: the same seed, the same paths.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.network import collectives as coll
from clustersim.hardware.network import rebuild_network
from clustersim.hardware.network.config import Routing
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program
from clustersim.units import Bytes
from clustersim.workloads.workload import RunResult, Workload

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
_HOST_TIERS = ("nvlink", "nic")
# Link-utilisation logs of larger fabrics are not kept (they would dwarf the trace).
MAX_LOGGED_LINKS = 20_000


class CollectiveBench(Workload, kind="collective"):
    kind: Literal["collective"] = "collective"
    collective: Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"] = \
        Field("all_reduce", description="which collective")
    algorithm: str | None = Field(
        None, description="ring, tree, halving_doubling, halving, doubling, pairwise, hierarchical, "
                          "hierarchical_tree, hierarchical_halving_doubling (per collective); "
                          "default: hierarchical when the group spans multi-GPU nodes")
    size: Bytes = Field(description="per-rank buffer as nccl-tests counts it (all-gather: output, "
                                    "reduce-scatter: input, all-to-all: send buffer)")
    group: str | list[str] = Field(
        "all", description='"all", "rail:J" (GPU J of every node), "node:K", "nodes:A-B", or a '
                           "list of device names")
    routing: Routing | None = Field(None, description="overrides cluster.network.routing "
                                                      "(ecmp, spray, split:k, adaptive, ideal)")
    reference: bool = Field(True, description="also run the ideal multipath reference")
    chunk_size: Bytes = Field(coll.DEFAULT_CHUNK_BYTES, description="pipeline chunk of tree and "
                              "broadcast algorithms (NCCL: 4 MiB buffer / 8 steps)")

    # -- validation --------------------------------------------------------------------------
    def check(self, cluster: Cluster) -> None:
        group = self.group_indices(cluster)
        if len(group) < 2:  # one GPU has no one to talk to: algbw would be inf, busbw NaN
            raise ConfigError(f"a collective needs a group of at least 2 devices, got {len(group)}",
                              key="workload.group")
        choices = coll.algorithms(self.collective)
        if self.algorithm is not None and self.algorithm not in choices:
            raise ConfigError(f"unknown algorithm {self.algorithm!r} for {self.collective}; "
                              f"expected one of {', '.join(choices)}", key="workload.algorithm")
        if self.routing is not None and not hasattr(cluster.router, "spec"):
            raise ConfigError("routing needs a fabric with routing choices: describe one in "
                              "cluster.network (kind: leaf_spine ...)", key="workload.routing")
        try:
            self.steps(cluster, group)
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.algorithm") from None

    def group_indices(self, cluster: Cluster) -> list[int]:
        """Device indices of ``group``; ConfigError (key workload.group) naming what is wrong."""
        names, per_node = cluster.names, cluster.gpus_per_node
        spec = self.group
        if isinstance(spec, list):
            index = {name: i for i, name in enumerate(names)}
            unknown = [name for name in spec if name not in index]
            if unknown:
                raise ConfigError(f"device {unknown[0]!r} is not in the cluster; its devices are "
                                  f"named like {names[0]!r} ... {names[-1]!r}", key="workload.group")
            if len(set(spec)) != len(spec):
                raise ConfigError("a device is listed twice", key="workload.group")
            return [index[name] for name in spec]
        kind, _, arg = spec.partition(":")
        nodes = cluster.num_nodes
        try:
            if kind == "all" and not arg:
                return list(range(cluster.num_devices))
            if kind == "rail":
                j = int(arg)
                if not 0 <= j < per_node:
                    raise ValueError(f"rail {j} does not exist: nodes have GPUs 0-{per_node - 1}")
                return [node * per_node + j for node in range(nodes)]
            if kind in ("node", "nodes"):
                first, _, last = arg.partition("-")
                lo, hi = int(first), int(last or first)
                if not 0 <= lo <= hi < nodes:
                    raise ValueError(f"nodes {arg} do not exist: the cluster has nodes 0-{nodes - 1}")
                return list(range(lo * per_node, (hi + 1) * per_node))
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.group") from None
        raise ConfigError(f"cannot read group {spec!r}: expected all, rail:J, node:K, nodes:A-B or "
                          "a list of device names", key="workload.group")

    def steps(self, cluster: Cluster, group: list[int]):
        return coll.collective_steps(
            self.collective, group, self.size, algorithm=self.resolved_algorithm(cluster, group),
            step_latency_s=cluster.inter_node_step_latency_s,
            intra_node_step_latency_s=cluster.intra_node_step_latency_s,
            gpus_per_node=cluster.gpus_per_node, chunk_bytes=self.chunk_size)

    def resolved_algorithm(self, cluster: Cluster, group: list[int]) -> str:
        import clustersim.hardware.network.hierarchical  # noqa: F401  (registers it)

        if self.algorithm:
            return self.algorithm
        return coll.default_algorithm(self.collective, group, cluster.gpus_per_node)

    # -- running -----------------------------------------------------------------------------
    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        group = self.group_indices(cluster)
        links, router = self._network(cluster, self.routing, rng)
        sim = self._simulate(cluster, group, links, router, record_trace)
        n = len(group)
        time_s = sim.env.now
        algbw = self.size / time_s if time_s > 0 else float("inf")
        busbw = algbw * coll.bus_bandwidth_factor(self.collective, n)
        fabric = sim.fabric
        metrics: dict[str, Any] = {
            "collective": self.collective, "algorithm": self.resolved_algorithm(cluster, group),
            "routing": _routing_label(router), "ranks": n,
            "nodes": len({cluster.node_of(d) for d in group}), "size_bytes": self.size,
            "completion_time_s": time_s, "algbw_bytes_per_s": algbw, "busbw_bytes_per_s": busbw,
            "algbw_GBps": algbw / 1e9, "busbw_GBps": busbw / 1e9,
            "max_link_congestion": max_link_congestion(fabric),
            **link_utilisation(fabric, time_s),
            "flow_events": fabric.flow_events if fabric else 0,
            "solved_flow_events": fabric.solved_flow_events if fabric else 0,
            "replayed_coflows": fabric.replayed_coflows if fabric else 0,
        }
        if self.reference:
            metrics.update(self._ideal(cluster, group, router, sim, rng))
        plots = {}
        if fabric is not None:
            utilisation = fabric.bytes_carried / (fabric.capacity * time_s) if time_s > 0 else None
            tiers = [link.tier for link in fabric.links]
            if utilisation is not None:
                plots["link_utilisation"] = lambda path: plot_link_utilisation(
                    utilisation, tiers, path, title=f"{self.collective} {metrics['routing']}")
        return RunResult(metrics, sim.trace() if record_trace else None, plots)

    def _network(self, cluster: Cluster, routing, rng):
        router = cluster.router
        if isinstance(router, NodeFabric) or not hasattr(router, "spec"):
            return cluster.links, router
        return rebuild_network(router, routing=routing, rng=rng)

    def _simulate(self, cluster: Cluster, group: list[int], links, router,
                  record_trace: bool) -> Simulation:
        program = Program()
        for name in cluster.names:
            program.device(name)
        program.collective(self.collective, [(d, "comm", ()) for d in group],
                           self.steps(cluster, group))
        sim = Simulation(device_names=cluster.names, links=links, router=router,
                         record_trace=record_trace)
        if sim.fabric is not None and len(links) > MAX_LOGGED_LINKS:
            sim.fabric.record_utilisation = False
        sim.run_program(program)
        return sim

    def _ideal(self, cluster, group, router, sim, rng) -> dict:
        label = _routing_label(router)
        if label in ("ideal", "non_blocking"):
            time_s, congestion = sim.env.now, max_link_congestion(sim.fabric)
        else:
            links, ideal = rebuild_network(router, routing="ideal", rng=rng)
            reference = self._simulate(cluster, group, links, ideal, record_trace=False)
            time_s, congestion = reference.env.now, max_link_congestion(reference.fabric)
        return {"ideal_completion_time_s": time_s,
                "time_vs_ideal": sim.env.now / time_s if time_s > 0 else 1.0,
                "ideal_max_link_congestion": congestion}


def _routing_label(router) -> str:
    if isinstance(router, NodeFabric) or not hasattr(router, "describe"):
        return "non_blocking"
    return router.describe()


def max_link_congestion(fabric) -> float:
    """Max over coflows of (busiest network link's bytes/capacity) / (busiest NIC's).

    NaN when no coflow crossed a NIC (everything stayed inside nodes)."""
    if fabric is None or "nic" not in fabric.tiers:
        return float("nan")
    nic = fabric.tiers.index("nic")
    network = [i for i, tier in enumerate(fabric.tiers) if tier != "nvlink"]
    best = float("nan")
    for drain in fabric.coflow_drain_s:
        if drain[nic] > 0:
            ratio = float(drain[network].max() / drain[nic])
            best = ratio if not best >= ratio else best
    return best


def link_utilisation(fabric, time_s: float) -> dict[str, float]:
    """Time-averaged utilisation (bytes / (capacity x time)) of switch and NIC links."""
    empty = {"max_switch_utilisation": float("nan"), "mean_switch_utilisation": float("nan"),
             "max_nic_utilisation": float("nan")}
    if fabric is None or time_s <= 0:
        return empty
    utilisation = fabric.bytes_carried / (fabric.capacity * time_s)
    tiers = np.array([link.tier for link in fabric.links])
    switch = ~np.isin(tiers, _HOST_TIERS)
    nic = tiers == "nic"
    def reduce(values: np.ndarray, how) -> float:
        return float(how(values)) if len(values) else float("nan")

    return {"max_switch_utilisation": reduce(utilisation[switch], np.max),
            "mean_switch_utilisation": reduce(utilisation[switch], np.mean),
            "max_nic_utilisation": reduce(utilisation[nic], np.max)}


def plot_link_utilisation(utilisation: np.ndarray, tiers: list[str], path: str, title: str = "") -> None:
    """Histogram of time-averaged link utilisation per tier (NVLink left out)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    tiers_a = np.array(tiers)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for tier in sorted(set(tiers) - {"nvlink"}):
        values = utilisation[tiers_a == tier]
        ax.hist(values, bins=40, range=(0, max(1.0, float(values.max()))), alpha=0.6,
                label=f"{tier} ({len(values)} links)")
    ax.set_xlabel("time-averaged utilisation")
    ax.set_ylabel("links")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_routing_sweep(table, path: str, *, y: str = "time_vs_ideal") -> None:
    """Completion time over the ideal reference against size: one panel per (collective,
    nodes), one line per routing. ``table`` is a results table of ``collective`` runs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = table[table["status"] == "ok"] if "status" in table else table
    panels = sorted({(c, int(n)) for c, n in zip(table["collective"], table["nodes"])})
    collectives = sorted({c for c, _ in panels})
    scales = sorted({n for _, n in panels})
    fig, axes = plt.subplots(len(collectives), len(scales), figsize=(3.6 * len(scales),
                             3.0 * len(collectives)), squeeze=False, sharey=True)
    for row, name in enumerate(collectives):
        for col, nodes in enumerate(scales):
            ax = axes[row][col]
            part = table[(table["collective"] == name) & (table["nodes"] == nodes)]
            for routing, lines in part.groupby("routing", sort=True):
                lines = lines.sort_values("size_bytes")
                ax.plot(lines["size_bytes"], lines[y], marker="o", label=routing)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{name}, {nodes} nodes", fontsize=9)
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
            if row == len(collectives) - 1:
                ax.set_xlabel("message size per rank (bytes)")
            if col == 0:
                ax.set_ylabel("completion time / ideal")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

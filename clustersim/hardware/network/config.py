"""The ``cluster.network`` section: topology, NIC planes and routing, validated before a run.

One plane (every node, the node preset's NICs)::

    network:
      kind: leaf_spine          # non_blocking | leaf_spine | fat_tree
      hosts_per_leaf: 8         # nodes under one leaf (per rail with rail_optimized)
      spines: 8
      oversubscription: 2       # or uplink_bandwidth: 800 Gb/s
      routing: ecmp             # ecmp | spray | split:4 | adaptive | ideal

Heterogeneous NICs (Holmes): ``planes:`` lists NIC kinds, each on its own switches; top-level
topology keys are defaults for every plane. A node pair uses the first plane both are on::

    network:
      kind: leaf_spine
      hosts_per_leaf: 4
      spines: 4
      routing: ecmp
      planes:
        - {name: ib, nic: infiniband, nodes: "0-7"}
        - {name: roce, nic: roce, nodes: "8-15", nic_bandwidth: 200 Gb/s}
        - {name: eth, nic: ethernet, nics_per_node: 1, nic_bandwidth: 100 Gb/s,
           nic_latency: 10 us, kind: non_blocking}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from clustersim.units import BytesPerSecond, Seconds

TOPOLOGY_KINDS = ("non_blocking", "leaf_spine", "fat_tree")


def _routing_shorthand(value: Any) -> Any:
    """"split:4" -> {kind: split, subflows: 4}; "ecmp" -> {kind: ecmp}."""
    if isinstance(value, str):
        kind, _, count = value.partition(":")
        if kind == "split" and count:
            try:
                return {"kind": "split", "subflows": int(count)}
            except ValueError:
                return {"kind": "split", "subflows": count}
        return {"kind": value}
    return value


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ecmp", "spray", "split", "adaptive", "ideal"] = Field(
        description="ecmp: one hashed path per flow; spray: packets evenly over all equal-cost "
                    "paths; split: k subflows, each hashed; adaptive: least-loaded path at flow "
                    "start; ideal: the multipath reference (trunked switch tiers)")
    subflows: int = Field(4, ge=1, description="subflows per flow for kind split")

    def label(self) -> str:
        return f"split:{self.subflows}" if self.kind == "split" else self.kind


Routing = Annotated[RoutingConfig, BeforeValidator(_routing_shorthand)]


class TopologyConfig(BaseModel):
    """Switch topology keys, shared by the network and each of its planes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["non_blocking", "leaf_spine", "fat_tree"] = Field(
        description="non_blocking: NICs into one ideal switch; leaf_spine: two tiers; "
                    "fat_tree: leaves, per-pod spines and cores")
    hosts_per_leaf: int | None = Field(None, ge=1, description="nodes under one leaf switch")
    leaves: int | None = Field(None, ge=1, description="leaf switches; derived from the hosts, "
                               "checked when given")
    spines: int | None = Field(None, ge=1, description="spine switches (per pod for fat_tree)")
    leaf_uplinks: int | None = Field(None, ge=1, description="uplink ports per leaf, a multiple of "
                                     "spines (default: leaf ports x NIC rate / (oversubscription x "
                                     "uplink rate))")
    oversubscription: float | None = Field(
        None, gt=0, description="leaf down:up capacity ratio (default 1: non-blocking)")
    uplink_bandwidth: BytesPerSecond | None = Field(
        None, description="rate of one leaf-spine link per direction (default: the NIC rate, or "
                          "leaf down capacity / (oversubscription x leaf_uplinks))")
    hop_latency: Seconds = Field(
        0.0, description="latency of each switch-to-switch link. NCCL's network step latency "
                         "(the node's nic_latency) already covers a typical switch path; add "
                         "per-hop latency to study deeper fabrics")
    rail_optimized: bool = Field(False, description="NIC i of each host group on its own leaf i")
    leaves_per_pod: int | None = Field(None, ge=1, description="fat_tree: leaves per pod")
    cores_per_spine: int | None = Field(None, ge=1, description="fat_tree: cores each spine "
                                        "connects to")
    core_oversubscription: float | None = Field(None, gt=0, description="fat_tree: spine down:up "
                                                "capacity ratio")
    core_link_bandwidth: BytesPerSecond | None = Field(None, description="fat_tree: rate of one "
                                                       "spine-core link per direction")


class PlaneConfig(TopologyConfig):
    name: str = Field(description="plane name (prefixes its link names)")
    nic: Literal["infiniband", "roce", "ethernet"] = Field(
        "infiniband", description="NIC kind: RDMA (infiniband, roce) or plain ethernet")
    nodes: str | list[int] | None = Field(
        None, description='nodes attached, e.g. "0-7,12" or [0, 1, 2]; default: all')
    nics_per_node: int | None = Field(None, ge=1, description="NICs of this kind per node "
                                      "(default: the node preset's)")
    nic_bandwidth: BytesPerSecond | None = Field(None, description="per NIC per direction "
                                                 "(default: the node preset's; required for ethernet)")
    nic_latency: Seconds | None = Field(None, description="per network step (default: the node "
                                        "preset's; required for ethernet)")
    routing: Routing | None = Field(None, description="overrides the network's routing here")


class NetworkConfig(TopologyConfig):
    routing: Routing = Field(default_factory=lambda: RoutingConfig(kind="ecmp"),
                             description="routing policy (ecmp, spray, split:k, adaptive, ideal)")
    planes: list[dict[str, Any]] | None = Field(
        None, description="NIC planes for heterogeneous clusters; the other keys are their defaults")


def parse_nodes(spec: str | list[int] | None, num_nodes: int) -> list[int]:
    """'0-7,12' or [0, 1] -> sorted node list; ValueError naming the bad part."""
    if spec is None:
        return list(range(num_nodes))
    nodes: list[int] = []
    if isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    first, last = (int(x) for x in part.split("-", 1))
                    nodes.extend(range(first, last + 1))
                else:
                    nodes.append(int(part))
            except ValueError:
                raise ValueError(f"cannot read {part!r}: expected ranges like '0-7,12'") from None
    else:
        nodes = list(spec)
    bad = [n for n in nodes if not 0 <= n < num_nodes]
    if bad:
        raise ValueError(f"node {bad[0]} does not exist: the cluster has nodes 0-{num_nodes - 1}")
    if len(set(nodes)) != len(nodes):
        raise ValueError("a node is listed twice")
    if not nodes:
        raise ValueError("no nodes listed")
    return sorted(nodes)

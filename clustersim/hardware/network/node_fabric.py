"""GPUs on an NVLink switch inside each node, one NIC per GPU into a non-blocking network.

Fidelity: flow-level. Each GPU has an NVLink uplink and downlink to its node's NVSwitch (each
at the per-direction NVLink bandwidth) and a NIC uplink and downlink into a non-blocking core
(each at the NIC's per-direction rate). The NVSwitch and the core are non-blocking, so a
transfer inside a node crosses (src NVLink up, dst NVLink down) and one between nodes crosses
(src NIC up, dst NIC down), GPU i of a node using NIC i (rail wiring). Latencies sit on the
uplinks so a path's latency is counted once.

Leaf-spine fabrics with their routing policies live in ``leaf_spine.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from clustersim.sim.fabric import Link, Path


@dataclass(frozen=True)
class NodeFabric:
    num_nodes: int
    gpus_per_node: int
    nvlink_bandwidth_bytes_per_s: float
    nvlink_latency_s: float
    nic_bandwidth_bytes_per_s: float
    nic_latency_s: float
    nics_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"need at least one node and one GPU per node, got {self.num_nodes} "
                             f"nodes x {self.gpus_per_node} GPUs")
        nics = self.nics_per_node or self.gpus_per_node
        if self.gpus_per_node % nics:
            raise ValueError(f"gpus_per_node ({self.gpus_per_node}) must be a multiple of "
                             f"nics_per_node ({nics})")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def links(self) -> list[Link]:
        """Per GPU: [nvlink up, nvlink down]; then per NIC: [nic up, nic down]."""
        links = []
        for gpu in range(self.num_gpus):
            links.append(Link(f"gpu{gpu}.nvlink.up", self.nvlink_bandwidth_bytes_per_s,
                              self.nvlink_latency_s))
            links.append(Link(f"gpu{gpu}.nvlink.down", self.nvlink_bandwidth_bytes_per_s))
        nics = self.nics_per_node or self.gpus_per_node
        for node in range(self.num_nodes):
            for nic in range(nics):
                links.append(Link(f"node{node}.nic{nic}.up", self.nic_bandwidth_bytes_per_s,
                                  self.nic_latency_s))
                links.append(Link(f"node{node}.nic{nic}.down", self.nic_bandwidth_bytes_per_s))
        return links

    def _nic_link(self, gpu: int, direction: int) -> int:
        nics = self.nics_per_node or self.gpus_per_node
        node, local = divmod(gpu, self.gpus_per_node)
        nic = local * nics // self.gpus_per_node
        return 2 * self.num_gpus + 2 * (node * nics + nic) + direction

    def path(self, src: int, dst: int) -> Path:
        if src // self.gpus_per_node == dst // self.gpus_per_node:
            return (2 * src, 2 * dst + 1)
        return (self._nic_link(src, 0), self._nic_link(dst, 1))

    def paths(self, src: int, dst: int, fabric=None) -> list[tuple[Path, float]]:
        """The Router interface: one path, all of the bytes."""
        return [(self.path(src, dst), 1.0)]

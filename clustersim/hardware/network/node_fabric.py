"""GPUs on an NVLink switch inside each node, one NIC per GPU into a non-blocking network.

Fidelity: flow-level. Each GPU has an NVLink uplink and downlink to its node's NVSwitch (each
at the per-direction NVLink bandwidth) and a NIC uplink and downlink into a non-blocking core
(each at the NIC's per-direction rate). The NVSwitch and the core are non-blocking, so a
transfer inside a node crosses (src NVLink up, dst NVLink down) and one between nodes crosses
(src NIC up, dst NIC down), GPU i of a node using NIC i (rail wiring). Latencies sit on the
uplinks so a path's latency is counted once.

This is the default cluster network (``topology.Network`` with one ``NonBlockingPlane``) and
also its Router. Leaf-spine and fat-tree fabrics with routing policies: ``build_network``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from clustersim.hardware.network.routing import Ecmp, NetworkRouter
from clustersim.hardware.network.topology import Network, NonBlockingPlane
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

    static = True  # Router: paths do not depend on load

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

    @property
    def nics(self) -> int:
        return self.nics_per_node or self.gpus_per_node

    def plane_arguments(self) -> dict:
        """The NIC figures of these nodes, for building other planes."""
        return {"nics_per_node": self.nics, "nic_bandwidth_bytes_per_s": self.nic_bandwidth_bytes_per_s,
                "nic_latency_s": self.nic_latency_s}

    def network(self, planes) -> Network:
        return Network(num_nodes=self.num_nodes, gpus_per_node=self.gpus_per_node,
                       nvlink_bandwidth_bytes_per_s=self.nvlink_bandwidth_bytes_per_s,
                       nvlink_latency_s=self.nvlink_latency_s, planes=planes)

    @cached_property
    def _router(self) -> NetworkRouter:
        plane = NonBlockingPlane(name="", nic_kind="infiniband", nodes=np.arange(self.num_nodes),
                                 num_cluster_nodes=self.num_nodes, **self.plane_arguments())
        return NetworkRouter(self.network([plane]), [Ecmp()])

    def links(self) -> list[Link]:
        """Per GPU: [nvlink up, nvlink down]; then per NIC: [nic up, nic down]."""
        return list(self._router.links)

    def path(self, src: int, dst: int) -> Path:
        if src // self.gpus_per_node == dst // self.gpus_per_node:
            return (2 * src, 2 * dst + 1)
        nic_base = 2 * self.num_gpus
        nics = self.nics

        def nic(gpu: int) -> int:
            node, local = divmod(gpu, self.gpus_per_node)
            return node * nics + local * nics // self.gpus_per_node

        return (nic_base + 2 * nic(src), nic_base + 2 * nic(dst) + 1)

    def paths(self, src: int, dst: int, fabric=None) -> list[tuple[Path, float]]:
        """The Router interface: one path, all of the bytes."""
        return [(self.path(src, dst), 1.0)]

    def route(self, src: np.ndarray, dst: np.ndarray, fabric):
        """The vectorised Router interface (see ``sim.fabric.RoutedFlows``)."""
        return self._router.route(src, dst, fabric)

    def relabels(self, src: np.ndarray, dst_a: np.ndarray, dst_b: np.ndarray) -> bool:
        """See ``NetworkRouter.relabels``."""
        return self._router.relabels(src, dst_a, dst_b)

    def destination_ends(self, src: np.ndarray, dst: np.ndarray):
        """See ``NetworkRouter.destination_ends``."""
        return self._router.destination_ends(src, dst)

"""Networks of GPUs: NVLink inside each node, one or more NIC planes between nodes.

Fidelity: flow-level. A ``Network`` owns the link list of a cluster and answers, for arrays of
(src GPU, dst GPU) pairs, which equal-cost paths they may take; routing policies
(``routing.py``) choose among them. Links are one-directional; latencies sit on the first link
of each tier so a path's latency counts each hop once.

Link layout (indices into ``Network.links``):

* per GPU ``g``: ``2g`` NVLink up into the node's NVSwitch, ``2g + 1`` NVLink down;
* then each plane's links: first per NIC port ``p`` (``host * nics_per_node + nic``) ``up`` and
  ``down`` between the host and its switch, then the plane's switch-to-switch links.

A *plane* is one NIC kind with its own switches, as in clusters that mix RDMA NICs
(InfiniBand, RoCE) with plain Ethernet (the Holmes paper, Yang et al., 2023: "Holmes: Towards
Distributed Training Across Clusters with Heterogeneous NIC Environment"). Traffic between two
nodes takes the first plane, in the configured order, that both nodes are attached to. GPU
``j`` of a node uses NIC ``j * nics_per_node // gpus_per_node`` (rail-aligned, as NCCL pairs
each GPU with its nearest NIC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clustersim.sim.fabric import Link

NIC_KINDS = ("infiniband", "roce", "ethernet")


@dataclass(frozen=True)
class Candidates:
    """The equal-cost paths of a batch of pairs inside one plane.

    Every path of pair ``i`` starts with link ``first[i]`` (the source NIC up) and ends with
    ``last[i]`` (the destination NIC down); ``plane.interior(...)`` gives the switch links
    between them for a chosen path id in ``range(n_paths[i])``.
    """

    plane: "Plane"
    src_port: np.ndarray
    dst_port: np.ndarray
    first: np.ndarray
    last: np.ndarray
    n_paths: np.ndarray
    bundle_base: int | None = None     # solver index of the plane's first bundle, if bundled

    def interior(self, rows: np.ndarray, path: np.ndarray) -> np.ndarray:
        return self.plane.interior(self.src_port[rows], self.dst_port[rows], path)

    def bundled_interior(self) -> np.ndarray:
        return self.plane.bundled_interior(self.src_port, self.dst_port, self.bundle_base)


class Plane:
    """One NIC kind and the switches behind it. Extension point: subclasses set
    ``interior_width`` and implement ``_switch_links``, ``n_paths`` and ``interior``.

    ``nodes`` are the cluster's node indices attached to this plane, in host order.
    """

    interior_width = 0
    topology = "plane"

    def __init__(self, *, name: str, nic_kind: str, nodes: np.ndarray, num_cluster_nodes: int,
                 nics_per_node: int, nic_bandwidth_bytes_per_s: float, nic_latency_s: float):
        if nic_kind not in NIC_KINDS:
            raise ValueError(f"plane {name!r}: unknown NIC kind {nic_kind!r}; expected one of "
                             f"{', '.join(NIC_KINDS)}")
        self.name, self.nic_kind = name, nic_kind
        self.nodes = np.asarray(nodes, dtype=np.int64)
        self.num_hosts = len(self.nodes)
        self.nics_per_node = nics_per_node
        self.nic_bandwidth_bytes_per_s = nic_bandwidth_bytes_per_s
        self.nic_latency_s = nic_latency_s
        self.host_of_node = np.full(num_cluster_nodes, -1, dtype=np.int64)
        self.host_of_node[self.nodes] = np.arange(self.num_hosts)
        self.offset = 0

    @property
    def prefix(self) -> str:
        """Link-name prefix: the plane's name and a dot, or nothing for an unnamed plane."""
        return f"{self.name}." if self.name else ""

    @property
    def num_ports(self) -> int:
        return self.num_hosts * self.nics_per_node

    def links(self, offset: int) -> list[Link]:
        """This plane's links, numbered from ``offset`` in the network's list."""
        self.offset = offset
        links = []
        for host, node in enumerate(self.nodes.tolist()):
            for nic in range(self.nics_per_node):
                label = f"{self.prefix}node{node}.nic{nic}"
                links.append(Link(f"{label}.up", self.nic_bandwidth_bytes_per_s,
                                  self.nic_latency_s, "nic"))
                links.append(Link(f"{label}.down", self.nic_bandwidth_bytes_per_s, 0.0, "nic"))
        self._switch_offset = offset + len(links)
        return links + self._switch_links(self._switch_offset)

    def _switch_links(self, offset: int) -> list[Link]:
        return []

    def candidates(self, src_port: np.ndarray, dst_port: np.ndarray,
                   bundle_base: int | None = None) -> Candidates:
        return Candidates(self, src_port, dst_port, self.offset + 2 * src_port,
                          self.offset + 2 * dst_port + 1, self.n_paths(src_port, dst_port),
                          bundle_base)

    def bundles(self) -> list[np.ndarray]:
        """Groups of equal links that even spreading always loads equally (see
        ``sim/fabric.py``); ``bundled_interior`` routes over them by bundle index."""
        return []

    def bundled_interior(self, src_port: np.ndarray, dst_port: np.ndarray, base: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no bundles")

    def n_paths(self, src_port: np.ndarray, dst_port: np.ndarray) -> np.ndarray:
        return np.ones(len(src_port), dtype=np.int64)

    def destination_links(self, src_port: np.ndarray, dst_port: np.ndarray,
                          bundle_base: int | None) -> np.ndarray | None:
        """Per pair, the links of its route fixed by the destination port alone (-1: none),
        when the rest of the route is fixed by the source port alone (and by which entries
        are -1); None when a route depends on the pair itself (a hashed path).

        Two coflows with the same sources whose destination links map one to one onto each
        other are then the same max-min problem up to renaming links (``NetworkRouter.
        relabels``): destination links are links *down* towards a destination, never the up
        links a source part uses, so renaming them leaves the source parts as they are. Here:
        a plane without switch links, route (NIC up, NIC down)."""
        if self.interior_width:
            return None
        return (self.offset + 2 * dst_port + 1)[:, None]

    def interior(self, src_port: np.ndarray, dst_port: np.ndarray, path: np.ndarray) -> np.ndarray:
        return np.full((len(src_port), self.interior_width), -1, dtype=np.int64)

    def spread(self, src_port: np.ndarray, dst_port: np.ndarray):
        """Even spreading of each pair over its equal-cost paths, as interior incidences
        (row, link, coefficient). Default: enumerate the paths; subclasses give closed forms."""
        n = self.n_paths(src_port, dst_port)
        rows = np.repeat(np.arange(len(n)), n)
        path = np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n)
        interior = self.interior(src_port[rows], dst_port[rows], path)
        entry, column = np.nonzero(interior >= 0)
        return rows[entry], interior[entry, column], 1.0 / n[rows[entry]]

    def describe(self) -> dict:
        return {"name": self.name, "nic": self.nic_kind, "topology": self.topology,
                "hosts": self.num_hosts, "nics_per_node": self.nics_per_node}


class NonBlockingPlane(Plane):
    """NICs into one non-blocking core: a path is (src NIC up, dst NIC down)."""

    topology = "non_blocking"


class Network:
    """GPUs in nodes on NVLink, and NIC planes between nodes (see the module docstring)."""

    def __init__(self, *, num_nodes: int, gpus_per_node: int, nvlink_bandwidth_bytes_per_s: float,
                 nvlink_latency_s: float, planes: list[Plane]):
        self.num_nodes, self.gpus_per_node = num_nodes, gpus_per_node
        self.planes = list(planes)
        links = []
        for gpu in range(num_nodes * gpus_per_node):
            links.append(Link(f"gpu{gpu}.nvlink.up", nvlink_bandwidth_bytes_per_s,
                              nvlink_latency_s, "nvlink"))
            links.append(Link(f"gpu{gpu}.nvlink.down", nvlink_bandwidth_bytes_per_s, 0.0, "nvlink"))
        for plane in self.planes:
            links.extend(plane.links(len(links)))
        self.links = links
        self._check_connected()

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def _check_connected(self) -> None:
        if self.num_nodes < 2:
            return
        member = np.array([plane.host_of_node >= 0 for plane in self.planes], dtype=bool)
        if not len(self.planes) or not member.any(axis=0).all():
            missing = np.flatnonzero(~member.any(axis=0)) if len(self.planes) else [0]
            raise ValueError(f"node {int(missing[0])} is attached to no network plane")
        masks = {tuple(column) for column in member.T.tolist()}
        for a in masks:
            for b in masks:
                if not any(x and y for x, y in zip(a, b)):
                    names_a = [p.name for p, x in zip(self.planes, a) if x]
                    names_b = [p.name for p, x in zip(self.planes, b) if x]
                    raise ValueError(f"nodes on planes {names_a} and nodes on planes {names_b} "
                                     "share no plane: add a plane (e.g. ethernet) that reaches both")

    def plane_of(self, src_node: np.ndarray, dst_node: np.ndarray) -> np.ndarray:
        """Index of the plane each node pair uses (the first one both are attached to)."""
        chosen = np.full(len(src_node), -1, dtype=np.int64)
        for index, plane in enumerate(self.planes):
            both = (chosen < 0) & (plane.host_of_node[src_node] >= 0) \
                & (plane.host_of_node[dst_node] >= 0)
            chosen[both] = index
        return chosen

    def port_of(self, plane: Plane, gpu: np.ndarray) -> np.ndarray:
        if plane.__dict__.get("_ports_are_gpus") is None:
            # One NIC per GPU on a plane of every node in order: the port is the GPU's index.
            plane._ports_are_gpus = bool(
                plane.nics_per_node == self.gpus_per_node and plane.num_hosts == self.num_nodes
                and np.array_equal(plane.host_of_node, np.arange(self.num_nodes)))
        if plane._ports_are_gpus:
            return gpu
        node, local = np.divmod(gpu, self.gpus_per_node)
        nic = local * plane.nics_per_node // self.gpus_per_node
        return plane.host_of_node[node] * plane.nics_per_node + nic

    def nic_kind_of(self, node_a: int, node_b: int) -> str | None:
        """The NIC kind traffic between two nodes uses (None inside one node)."""
        if node_a == node_b:
            return None
        index = int(self.plane_of(np.array([node_a]), np.array([node_b]))[0])
        return self.planes[index].nic_kind

    def describe(self) -> dict:
        return {"nodes": self.num_nodes, "gpus_per_node": self.gpus_per_node,
                "links": len(self.links), "planes": [p.describe() for p in self.planes]}

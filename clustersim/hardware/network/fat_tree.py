"""Three-tier fat-tree planes: leaves, per-pod spines (aggregation), and cores.

Fidelity: flow-level. Leaves are grouped into pods of ``leaves_per_pod``; each pod has
``spines`` aggregation switches and every leaf has one uplink to each of them. Spine ``a`` of
every pod connects to the ``cores_per_spine`` cores of core group ``a`` (cores total =
spines x cores_per_spine), as in the k-ary fat tree of Al-Fares et al. (SIGCOMM 2008).

Paths: same leaf: NIC up, NIC down. Same pod: via any of the pod's ``spines`` (leaf up, spine
down). Across pods: ``spines * cores_per_spine`` paths (leaf up, spine->core, core->spine,
spine->leaf). Leaf uplinks carry ``uplink_bandwidth`` (or leaf down capacity /
(oversubscription x spines)); spine-core links carry ``core_link_bandwidth`` (or spine down
capacity / (core_oversubscription x cores_per_spine)).

``trunked=True`` is the ideal multipath reference: per leaf one trunk up and one down (the
summed leaf uplinks), per pod one trunk up and one down (the summed spine-core links).
"""

from __future__ import annotations

import numpy as np

from clustersim.hardware.network.leaf_spine import count_leaves
from clustersim.hardware.network.topology import Plane
from clustersim.sim.fabric import Link


class FatTreePlane(Plane):
    interior_width = 4
    topology = "fat_tree"

    def __init__(self, *, hosts_per_leaf: int, leaves_per_pod: int, spines: int,
                 cores_per_spine: int, oversubscription: float | None = None,
                 uplink_bandwidth_bytes_per_s: float | None = None,
                 core_oversubscription: float | None = None,
                 core_link_bandwidth_bytes_per_s: float | None = None, hop_latency_s: float = 0.0,
                 rail_optimized: bool = False, trunked: bool = False, **plane):
        super().__init__(**plane)
        for field, value in (("hosts_per_leaf", hosts_per_leaf), ("leaves_per_pod", leaves_per_pod),
                             ("spines", spines), ("cores_per_spine", cores_per_spine)):
            if value < 1:
                raise ValueError(f"{field}: must be >= 1, got {value}")
        self.num_leaves = count_leaves(self.num_hosts, hosts_per_leaf,
                                       self.nics_per_node if rail_optimized else 1)
        if self.num_leaves % leaves_per_pod:
            raise ValueError(f"leaves_per_pod: {self.num_leaves} leaves do not fill pods of "
                             f"{leaves_per_pod}")
        self.hosts_per_leaf, self.leaves_per_pod = hosts_per_leaf, leaves_per_pod
        self.spines, self.cores_per_spine = spines, cores_per_spine
        self.num_pods = self.num_leaves // leaves_per_pod
        self.rail_optimized, self.trunked, self.hop_latency_s = rail_optimized, trunked, hop_latency_s
        ports = hosts_per_leaf * (1 if rail_optimized else self.nics_per_node)
        if uplink_bandwidth_bytes_per_s is not None and oversubscription is not None:
            raise ValueError("give either oversubscription or uplink_bandwidth, not both")
        if core_link_bandwidth_bytes_per_s is not None and core_oversubscription is not None:
            raise ValueError("give either core_oversubscription or core_link_bandwidth, not both")
        leaf_down = ports * self.nic_bandwidth_bytes_per_s
        self.uplink_bandwidth_bytes_per_s = uplink_bandwidth_bytes_per_s or \
            leaf_down / ((oversubscription or 1.0) * spines)
        spine_down = leaves_per_pod * self.uplink_bandwidth_bytes_per_s
        self.core_link_bandwidth_bytes_per_s = core_link_bandwidth_bytes_per_s or \
            spine_down / ((core_oversubscription or 1.0) * cores_per_spine)

    def _switch_links(self, offset: int) -> list[Link]:
        name, lat = self.prefix, self.hop_latency_s
        up, core = self.uplink_bandwidth_bytes_per_s, self.core_link_bandwidth_bytes_per_s
        leaves, pods, spines, cores = self.num_leaves, self.num_pods, self.spines, self.cores_per_spine
        if self.trunked:
            links = [Link(f"{name}leaf{l}.trunk.up", up * spines, lat, "trunk")
                     for l in range(leaves)]
            links += [Link(f"{name}leaf{l}.trunk.down", up * spines, lat, "trunk")
                      for l in range(leaves)]
            links += [Link(f"{name}pod{p}.trunk.up", core * spines * cores, lat, "trunk")
                      for p in range(pods)]
            links += [Link(f"{name}pod{p}.trunk.down", core * spines * cores, lat, "trunk")
                      for p in range(pods)]
            self._offsets = (offset, offset + leaves, offset + 2 * leaves, offset + 2 * leaves + pods)
            return links
        # leaf up (leaf, a), leaf down (leaf, a), spine up (pod, a, c), spine down (pod, a, c)
        links = [Link(f"{name}leaf{l}.spine{a}", up, lat, "leaf_spine")
                 for l in range(leaves) for a in range(spines)]
        links += [Link(f"{name}spine{a}.leaf{l}", up, lat, "leaf_spine")
                  for l in range(leaves) for a in range(spines)]
        links += [Link(f"{name}pod{p}.spine{a}.core{c}", core, lat, "spine_core")
                  for p in range(pods) for a in range(spines) for c in range(cores)]
        links += [Link(f"{name}core{c}.pod{p}.spine{a}", core, lat, "spine_core")
                  for p in range(pods) for a in range(spines) for c in range(cores)]
        per_leaf, per_pod = leaves * spines, pods * spines * cores
        self._offsets = (offset, offset + per_leaf, offset + 2 * per_leaf,
                         offset + 2 * per_leaf + per_pod)
        return links

    def leaf_of(self, port: np.ndarray) -> np.ndarray:
        host, nic = np.divmod(port, self.nics_per_node)
        if self.rail_optimized:
            return (host // self.hosts_per_leaf) * self.nics_per_node + nic
        return host // self.hosts_per_leaf

    def n_paths(self, src_port: np.ndarray, dst_port: np.ndarray) -> np.ndarray:
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        if self.trunked:
            return np.ones(len(la), dtype=np.int64)
        same_pod = la // self.leaves_per_pod == lb // self.leaves_per_pod
        return np.where(la == lb, 1, np.where(same_pod, self.spines,
                                              self.spines * self.cores_per_spine))

    def interior(self, src_port: np.ndarray, dst_port: np.ndarray, path: np.ndarray) -> np.ndarray:
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        pa, pb = la // self.leaves_per_pod, lb // self.leaves_per_pod
        leaf_up, leaf_down, spine_up, spine_down = self._offsets
        if self.trunked:
            cols = [leaf_up + la, spine_up + pa, spine_down + pb, leaf_down + lb]
        else:
            same_pod = pa == pb
            spine = np.where(same_pod, path, path // self.cores_per_spine)
            core = path % self.cores_per_spine
            s, c = self.spines, self.cores_per_spine
            cols = [leaf_up + la * s + spine, spine_up + (pa * s + spine) * c + core,
                    spine_down + (pb * s + spine) * c + core, leaf_down + lb * s + spine]
        result = np.stack(cols, axis=1)
        same_pod = pa == pb
        result[same_pod, 1:3] = -1
        result[la == lb] = -1
        # Same-pod paths are leaf up, leaf down: move the down link next to the up link.
        result[same_pod & (la != lb), 1] = result[same_pod & (la != lb), 3]
        result[same_pod, 3] = -1
        return result

    def bundles(self) -> list[np.ndarray]:
        """Per leaf its uplinks, per leaf the links down to it, per pod its spine-core links
        up, per pod the core links down into it."""
        if self.trunked:
            return []
        leaf_up, leaf_down, spine_up, spine_down = self._offsets
        a, block = self.spines, self.spines * self.cores_per_spine
        return ([leaf_up + l * a + np.arange(a) for l in range(self.num_leaves)]
                + [leaf_down + l * a + np.arange(a) for l in range(self.num_leaves)]
                + [spine_up + p * block + np.arange(block) for p in range(self.num_pods)]
                + [spine_down + p * block + np.arange(block) for p in range(self.num_pods)])

    def bundled_interior(self, src_port, dst_port, base):
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        pa, pb = la // self.leaves_per_pod, lb // self.leaves_per_pod
        leaves, pods = self.num_leaves, self.num_pods
        result = np.stack([base + la, base + 2 * leaves + pa, base + 2 * leaves + pods + pb,
                           base + leaves + lb], axis=1)
        result[pa == pb, 1:3] = -1
        result[la == lb] = -1
        return result

    def describe(self) -> dict:
        return super().describe() | {
            "leaves": self.num_leaves, "pods": self.num_pods, "spines_per_pod": self.spines,
            "cores": self.spines * self.cores_per_spine, "trunked": self.trunked}

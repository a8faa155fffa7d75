"""Two-tier leaf-spine (folded Clos) planes.

Fidelity: flow-level. Hosts (nodes) hang off leaves, ``hosts_per_leaf`` per leaf; each leaf has
``leaf_uplinks`` uplink ports spread evenly over ``spines`` spines (``leaf_uplinks / spines``
parallel links per leaf-spine pair). Uplinks run at ``uplink_bandwidth`` (default: the NIC
rate) and, unless ``leaf_uplinks`` is given, there are as many as the oversubscription ratio r
(default 1) allows: leaf ports x NIC rate / (r x uplink rate).
Without rail wiring all NICs of a host sit on one leaf;
with ``rail_optimized`` NIC ``i`` of every host in a group of ``hosts_per_leaf`` hosts sits on
that group's rail leaf ``i`` (NVIDIA's rail-optimised SuperPOD wiring), so leaves =
groups x NICs per host.

Two ports on one leaf talk through the leaf (NIC up, NIC down). Ports on different leaves have
``spines * m * m`` equal-cost paths (``m`` parallel links): NIC up, leaf->spine, spine->leaf,
NIC down. Given ``leaf_uplinks`` but no rate, a link carries leaf down capacity / (r x
leaf_uplinks). With r = 1 the fabric is non-blocking for any traffic that routing spreads
evenly; ECMP's hash collisions still congest it.

``trunked=True`` builds the ideal multipath reference: each leaf's uplinks (and the spines'
links down to it) become one trunk of their summed capacity. Any routing's link loads fit in
the trunks, so the trunked fabric's max congestion is the least any routing can reach on the
real one, and equals it whenever traffic is spread evenly (packet spraying on equal links).
"""

from __future__ import annotations

import numpy as np

from clustersim.hardware.network.topology import Plane
from clustersim.sim.fabric import Link


def count_leaves(num_hosts: int, hosts_per_leaf: int, rails: int = 1) -> int:
    """Leaves needed for ``num_hosts`` at ``hosts_per_leaf`` (times the rails when wired
    rail-optimised); a count that does not fill whole leaves is refused with a divisor."""
    if num_hosts % hosts_per_leaf:
        divisors = [d for d in range(1, num_hosts + 1) if num_hosts % d == 0]
        raise ValueError(f"hosts_per_leaf: {num_hosts} hosts do not fill leaves of "
                         f"{hosts_per_leaf}; use a divisor of {num_hosts}, e.g. "
                         f"{_nearest(divisors, hosts_per_leaf)}")
    return num_hosts // hosts_per_leaf * rails


class LeafSpinePlane(Plane):
    interior_width = 2
    topology = "leaf_spine"

    def __init__(self, *, hosts_per_leaf: int, spines: int, leaf_uplinks: int | None = None,
                 oversubscription: float | None = None,
                 uplink_bandwidth_bytes_per_s: float | None = None, leaves: int | None = None,
                 hop_latency_s: float = 0.0, rail_optimized: bool = False, trunked: bool = False,
                 **plane):
        super().__init__(**plane)
        if hosts_per_leaf < 1 or spines < 1:
            raise ValueError(f"hosts_per_leaf and spines must be >= 1, got {hosts_per_leaf}, {spines}")
        self.num_leaves = count_leaves(self.num_hosts, hosts_per_leaf,
                                       self.nics_per_node if rail_optimized else 1)
        if leaves is not None and leaves != self.num_leaves:
            raise ValueError(f"leaves: {self.num_hosts} hosts at {hosts_per_leaf} per leaf"
                             + (f" on {self.nics_per_node} rails" if rail_optimized else "")
                             + f" make {self.num_leaves} leaves, not {leaves}")
        self.ports_per_leaf = hosts_per_leaf * (1 if rail_optimized else self.nics_per_node)
        uplinks, rate = uplink_plan(self.ports_per_leaf, self.nic_bandwidth_bytes_per_s,
                                    leaf_uplinks, oversubscription, uplink_bandwidth_bytes_per_s)
        if spines > uplinks:
            raise ValueError(f"spines: {spines} spines but only {uplinks} leaf uplinks; every leaf "
                             f"needs a link to every spine, so use at most {uplinks} spines or "
                             "more leaf_uplinks")
        if uplinks % spines:
            raise ValueError(f"leaf_uplinks: {uplinks} uplinks do not spread evenly over {spines} "
                             f"spines; use a multiple of {spines}")
        self.hosts_per_leaf, self.spines, self.leaf_uplinks = hosts_per_leaf, spines, uplinks
        self.parallel = uplinks // spines
        self.rail_optimized, self.trunked = rail_optimized, trunked
        self.uplink_bandwidth_bytes_per_s = rate
        self.oversubscription = self.ports_per_leaf * self.nic_bandwidth_bytes_per_s / (rate * uplinks)
        self.hop_latency_s = hop_latency_s

    # -- links -------------------------------------------------------------------------------
    def _switch_links(self, offset: int) -> list[Link]:
        rate, latency, name = self.uplink_bandwidth_bytes_per_s, self.hop_latency_s, self.prefix
        if self.trunked:
            trunk = rate * self.leaf_uplinks
            ups = [Link(f"{name}leaf{l}.trunk.up", trunk, latency, "trunk")
                   for l in range(self.num_leaves)]
            downs = [Link(f"{name}leaf{l}.trunk.down", trunk, latency, "trunk")
                     for l in range(self.num_leaves)]
            self._up_offset, self._down_offset = offset, offset + self.num_leaves
            return ups + downs
        m, spines = self.parallel, self.spines
        ups = [Link(f"{name}leaf{l}.spine{s}" + (f".{j}" if m > 1 else ""), rate, latency,
                    "leaf_spine")
               for l in range(self.num_leaves) for s in range(spines) for j in range(m)]
        downs = [Link(f"{name}spine{s}.leaf{l}" + (f".{j}" if m > 1 else ""), rate, latency,
                      "leaf_spine")
                 for s in range(spines) for l in range(self.num_leaves) for j in range(m)]
        self._up_offset, self._down_offset = offset, offset + len(ups)
        return ups + downs

    # -- paths -------------------------------------------------------------------------------
    def leaf_of(self, port: np.ndarray) -> np.ndarray:
        if self.rail_optimized:
            host, nic = np.divmod(port, self.nics_per_node)
            return (host // self.hosts_per_leaf) * self.nics_per_node + nic
        return port // (self.nics_per_node * self.hosts_per_leaf)  # (port // nics) // hosts

    def n_paths(self, src_port: np.ndarray, dst_port: np.ndarray) -> np.ndarray:
        if self.trunked:
            return np.ones(len(src_port), dtype=np.int64)
        same = self.leaf_of(src_port) == self.leaf_of(dst_port)
        return np.where(same, 1, self.spines * self.parallel * self.parallel)

    def interior(self, src_port: np.ndarray, dst_port: np.ndarray, path: np.ndarray) -> np.ndarray:
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        if self.trunked:
            up, down = self._up_offset + la, self._down_offset + lb
        else:
            m = self.parallel
            spine, rest = np.divmod(path, m * m)
            j_up, j_down = np.divmod(rest, m)
            up = self._up_offset + (la * self.spines + spine) * m + j_up
            down = self._down_offset + (spine * self.num_leaves + lb) * m + j_down
        result = np.stack([up, down], axis=1)
        result[la == lb] = -1
        return result

    def spread(self, src_port: np.ndarray, dst_port: np.ndarray):
        """Even spreading over all equal-cost paths: (row, interior link, coefficient)."""
        if self.trunked:
            return super().spread(src_port, dst_port)
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        rows = np.flatnonzero(la != lb)
        u, m = self.leaf_uplinks, self.parallel
        ups = self._up_offset + la[rows, None] * u + np.arange(u)
        s, j = np.divmod(np.arange(u), m)
        downs = self._down_offset + (s * self.num_leaves + lb[rows, None]) * m + j
        links = np.concatenate([ups, downs], axis=1)
        return (np.repeat(rows, 2 * u), links.ravel(), np.full(links.size, 1.0 / u))

    def destination_links(self, src_port, dst_port, bundle_base):
        """(NIC down, the spines' link or bundle down to the destination leaf) per pair (see
        ``Plane.destination_links``): a route within a leaf is (NIC up, NIC down) whatever the
        policy; between leaves only a trunk (ideal) or a sprayed bundle is fixed by the leaves
        alone, and the source side is then (NIC up, the source leaf's trunk or bundle up)."""
        leaves = self.__dict__.setdefault("_source_leaves", {})  # one source array, many calls
        cached = leaves.get(id(src_port))
        if cached is None or cached[0] is not src_port:
            if len(leaves) >= 8:
                leaves.pop(next(iter(leaves)))
            cached = leaves[id(src_port)] = (src_port, self.leaf_of(src_port))
        la, lb = cached[1], self.leaf_of(dst_port)
        within = la == lb
        if within.all():
            down = np.full(len(dst_port), -1, dtype=np.int64)
        elif self.trunked:
            down = lb + self._down_offset
        elif bundle_base is not None:
            down = lb + (bundle_base + self.num_leaves)
        else:
            return None
        down[within] = -1
        links = np.empty((len(dst_port), 2), dtype=np.int64)
        np.multiply(dst_port, 2, out=links[:, 0])
        links[:, 0] += self.offset + 1
        links[:, 1] = down
        return links

    def bundles(self) -> list[np.ndarray]:
        """Per leaf: its uplinks; then per leaf: the spines' links down to it."""
        if self.trunked:
            return []
        u, m = self.leaf_uplinks, self.parallel
        s, j = np.divmod(np.arange(u), m)
        ups = [self._up_offset + leaf * u + np.arange(u) for leaf in range(self.num_leaves)]
        downs = [self._down_offset + (s * self.num_leaves + leaf) * m + j
                 for leaf in range(self.num_leaves)]
        return ups + downs

    def bundled_interior(self, src_port, dst_port, base):
        la, lb = self.leaf_of(src_port), self.leaf_of(dst_port)
        result = np.stack([base + la, base + self.num_leaves + lb], axis=1)
        result[la == lb] = -1
        return result

    def describe(self) -> dict:
        return super().describe() | {
            "leaves": self.num_leaves, "spines": self.spines, "hosts_per_leaf": self.hosts_per_leaf,
            "leaf_uplinks": self.leaf_uplinks, "oversubscription": self.oversubscription,
            "rail_optimized": self.rail_optimized, "trunked": self.trunked}


def uplink_plan(ports: int, nic_rate: float, uplinks: int | None, ratio: float | None,
                rate: float | None) -> tuple[int, float]:
    """(uplinks per leaf, rate per uplink) from whichever two of (uplinks, ratio, rate) are given.

    Defaults: uplinks at the NIC rate, as many as the oversubscription ratio (default 1) allows.
    """
    down = ports * nic_rate
    if uplinks is not None and ratio is not None and rate is not None:
        if abs(down / (uplinks * rate) - ratio) > 1e-9 * ratio:
            raise ValueError(f"oversubscription: {uplinks} uplinks of {rate * 8 / 1e9:g} Gb/s under "
                             f"{ports} ports of {nic_rate * 8 / 1e9:g} Gb/s give "
                             f"{down / (uplinks * rate):g}, not {ratio:g}; give two of the three")
        return uplinks, rate
    ratio = ratio or 1.0
    if uplinks is not None:
        return uplinks, rate if rate is not None else down / (ratio * uplinks)
    rate = rate if rate is not None else nic_rate
    count = down / (ratio * rate)
    if abs(count - round(count)) > 1e-9 * count or round(count) < 1:
        raise ValueError(f"oversubscription: {ports} ports of {nic_rate * 8 / 1e9:g} Gb/s at "
                         f"{ratio:g}:1 need {count:g} uplinks of {rate * 8 / 1e9:g} Gb/s; choose "
                         "values that give a whole number, or set leaf_uplinks")
    return int(round(count)), rate


def _nearest(values: list[int], target: int) -> int:
    return min(values, key=lambda v: (abs(v - target), v))

"""ECMP routes of a whole coflow over one leaf-spine plane, from per-port tables (a fast path).

Fidelity: flow-level; the same routes, bit for bit, as ``routing.Ecmp`` through
``NetworkRouter.route`` (tests compare the two). It exists for speed: an all-to-all's rail step
at 4096 hosts routes 32k pairs, 4095 times, always from the same source array. So what depends
on the source alone (its NIC up link, its leaf's first uplink, the first half of the splitmix64
hash) is computed once per source array, the hashed path id gives its spine and parallel links
by shifts when the parallel count is a power of two (else from two small tables; the numbers
``LeafSpinePlane.interior`` computes), the hash is reduced with a mask when the path count is a
power of two (``x % 2^k == x & (2^k - 1)``), and the incidence
arrays that do not depend on the pairs (flow numbers, coefficients 1, fractions 1) are shared by
every coflow of one size (read-only). The routes come with their load per link, counted over
the NICs, uplinks and downlinks apart (``sim/link_load.py``), and their incidence arrays are
built only when read (``HashedRoutes``). Used when every node is on the one plane with one NIC per
GPU (port = GPU) and no pair stays inside a leaf or a node (those go the general way).
"""

from __future__ import annotations

import numpy as np

from clustersim.sim.link_load import LinkLoad
from clustersim.sim.routed_flows import RoutedFlows

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


class HashedLeafSpine:
    """ECMP over one (not trunked) leaf-spine plane that carries every node, port = GPU."""

    def __init__(self, plane, salt: int, latency: np.ndarray, gpus_per_node: int):
        self.plane, self.salt = plane, salt
        ports = np.arange(plane.num_ports, dtype=np.int64)
        # Wired rail-optimised, a node's GPUs sit on different leaves: pairs inside a node
        # (NVLink) are not pairs inside a leaf and need their own test.
        self.node = ports // gpus_per_node if plane.rail_optimized else None
        m, spines, leaves = plane.parallel, plane.spines, plane.num_leaves
        self.paths = spines * m * m
        self.mask = self.paths - 1 if self.paths & (self.paths - 1) == 0 else None
        path = np.arange(self.paths, dtype=np.int64)
        spine, rest = np.divmod(path, m * m)
        j_up, j_down = np.divmod(rest, m)
        # up = up_offset + (leaf_a * spines + spine) * m + j_up, split into port and path parts
        # (and likewise down = down_offset + (spine * leaves + leaf_b) * m + j_down).
        self.up_of_path, self.down_of_path = spine * m + j_up, spine * leaves * m + j_down
        # With m a power of two, the same by shifts: up part = path // m, down part =
        # (path // m^2) * leaves * m + path % m (a gather costs some four array passes).
        self.shift = m.bit_length() - 1 if m & (m - 1) == 0 else None
        self.down_stride, self.spines = leaves * m, spines
        self.leaf = plane.leaf_of(ports)
        # int32 copy for the per-coflow gather (half the bytes; leaves < 2^31)
        self.leaf32 = self.leaf.astype(np.int32)
        # Both relative to the first uplink and the first downlink.
        self.up_of_port, self.down_of_port = self.leaf * (spines * m), self.leaf * m
        self.num_up = self.num_down = leaves * spines * m
        self.num_ports, self.num_links = plane.num_ports, len(latency)
        self.first, self.last = plane.offset + 2 * ports, plane.offset + 2 * ports + 1
        # Path latency sums (NIC up + up + down + NIC down, in that order, as the general
        # router's bincount adds them): one number when each kind of link has one latency.
        switch = latency[plane._up_offset:plane._down_offset + spines * leaves * m]
        kinds = (latency[self.first], switch, latency[self.last])
        self.latency = latency
        self.uniform_latency = None
        if all(len(k) and k.min() == k.max() for k in kinds):
            first, hop, last = (float(k[0]) for k in kinds)
            self.uniform_latency = ((first + hop) + hop) + last
        self._source = (None, None)         # (src array, what depends on it)
        self._shared: dict[int, tuple] = {}  # count -> (pair, fraction, inc_flow, inc_coef)

    def route(self, src: np.ndarray, dst: np.ndarray) -> RoutedFlows | None:
        """The coflow's routes; None when a pair stays inside a leaf, or the coflow is small
        (left to the caller: the loads here are counted over all ports and switch links, so
        they pay off from about a quarter as many pairs as ports)."""
        count = len(src)
        if not count or count * 4 < self.num_ports:
            return None
        if self._source[0] is not src:
            source_leaf = self.leaf32[src]
            first_hash = _mix(np.uint64(self.salt) ^ src.astype(np.uint64))
            source_node = self.node[src] if self.node is not None else None
            nics_up = np.bincount(src, minlength=self.num_ports)
            nics_up.flags.writeable = False     # the same counts for every coflow: a constant
            self._source = (src, (source_leaf, source_node, first_hash, self.first[src],
                                  self.up_of_port[src], nics_up))
        source_leaf, source_node, first_hash, first, up_base, nics_up = self._source[1]
        leaf = self.leaf32[dst]
        if (leaf == source_leaf).any():
            return None
        if source_node is not None and (self.node[dst] == source_node).any():
            return None
        h = np.bitwise_xor(first_hash, dst.view(np.uint64))    # (ports >= 0: the same bits)
        _mix_in_place(h)
        if self.mask is not None:
            np.bitwise_and(h, np.uint64(self.mask), out=h)
            path = h.view(np.int64)
        else:
            path = (h % np.uint64(self.paths)).astype(np.int64)
        plane, m, shift = self.plane, self.plane.parallel, self.shift
        if shift is not None:
            up = np.right_shift(path, shift)
            up += up_base
            # Downlinks counted by (destination leaf, spine, link): the writes stay local
            # (link order is by spine first); ``order`` puts the counts in link order.
            by_leaf = np.multiply(leaf, self.spines * m, dtype=np.int64)
            spine_link = np.right_shift(path, 2 * shift)
            if m > 1:
                np.left_shift(spine_link, shift, out=spine_link)
                spine_link |= path & (m - 1)
            by_leaf += spine_link
            down_part = (plane._down_offset, 1, np.bincount(by_leaf, minlength=self.num_down),
                         ((plane.num_leaves, self.spines, m), (1, 0, 2)))

            def downlinks() -> np.ndarray:      # (relative to the first, in link order)
                down = np.right_shift(path, 2 * shift)
                down *= self.down_stride
                if m > 1:
                    down += path & (m - 1)
                down += leaf.astype(np.int64) * m
                return down
        else:
            up = up_base + self.up_of_path[path]
            down = self.down_of_port[dst]
            down += self.down_of_path[path]
            down_part = (plane._down_offset, 1, np.bincount(down, minlength=self.num_down))

            def downlinks() -> np.ndarray:
                return down
        # The load per link, counted where the links lie (``sim/link_load.py``).
        load = LinkLoad([(plane.offset, 2, nics_up),
                         (plane.offset + 1, 2, np.bincount(dst, minlength=self.num_ports)),
                         (plane._up_offset, 1, np.bincount(up, minlength=self.num_up)),
                         down_part], self.num_links)
        if self.uniform_latency is not None:
            latency_s = self.uniform_latency
        else:
            lat = self.latency
            latency_s = float((((lat[first] + lat[up + plane._up_offset])
                                + lat[downlinks() + plane._down_offset])
                               + lat[self.last[dst]]).max())
        pair, fraction, inc_flow, inc_coef = self._arrays(count)
        last = self.last

        def incidences() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(flow, link, coefficient): per flow NIC up, uplink, downlink, NIC down."""
            matrix = np.empty((count, 4), dtype=np.int64)
            matrix[:, 0] = first
            np.add(up, plane._up_offset, out=matrix[:, 1])
            np.add(downlinks(), plane._down_offset, out=matrix[:, 2])
            matrix[:, 3] = last[dst]
            return inc_flow, matrix.reshape(-1), inc_coef

        routed = HashedRoutes(pair, fraction, latency_s, incidences)
        routed.__dict__["_link_load"] = load
        return routed

    def _arrays(self, count: int) -> tuple:
        """The incidence arrays that depend on the number of flows alone (read-only)."""
        shared = self._shared.get(count)
        if shared is None:
            if len(self._shared) >= 8:
                self._shared.clear()
            pair = np.arange(count, dtype=np.int64)
            shared = (pair, np.ones(count), np.repeat(pair, 4), np.ones(4 * count))
            for array in shared:
                array.flags.writeable = False
            self._shared[count] = shared
        return shared


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (``routing._mix``) on a fresh array."""
    with np.errstate(over="ignore"):
        x = x + _C0
        x = (x ^ (x >> np.uint64(30))) * _C1
        x = (x ^ (x >> np.uint64(27))) * _C2
        return x ^ (x >> np.uint64(31))


def _mix_in_place(x: np.ndarray) -> None:
    """``_mix`` overwriting ``x`` (uint64), with one scratch array."""
    scratch = np.empty_like(x)
    with np.errstate(over="ignore"):
        np.add(x, _C0, out=x)
        np.right_shift(x, np.uint64(30), out=scratch)
        np.bitwise_xor(x, scratch, out=x)
        np.multiply(x, _C1, out=x)
        np.right_shift(x, np.uint64(27), out=scratch)
        np.bitwise_xor(x, scratch, out=x)
        np.multiply(x, _C2, out=x)
        np.right_shift(x, np.uint64(31), out=scratch)
        np.bitwise_xor(x, scratch, out=x)


class HashedRoutes(RoutedFlows):
    """``RoutedFlows`` whose incidence arrays are built when first read: a coflow that runs
    alone and ends at its first water level (``sim/water_level.py``) needs only its load per
    link (``_link_load``), and the routes only if its replay is interrupted."""

    def __init__(self, pair: np.ndarray, fraction: np.ndarray, latency_s: float, incidences):
        for name, value in (("pair", pair), ("fraction", fraction), ("latency_s", latency_s),
                            ("_make", incidences)):
            object.__setattr__(self, name, value)     # (a frozen dataclass)

    def _incidences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        built = self.__dict__.get("_built")
        if built is None:
            built = self._make()
            object.__setattr__(self, "_built", built)
            object.__setattr__(self, "_make", None)
        return built

    @property
    def inc_flow(self) -> np.ndarray:
        return self._incidences()[0]

    @property
    def inc_link(self) -> np.ndarray:
        return self._incidences()[1]

    @property
    def inc_coef(self) -> np.ndarray:
        return self._incidences()[2]

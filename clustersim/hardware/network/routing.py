"""Routing policies: which of a pair's equal-cost paths its bytes take.

Each policy is a small object with ``route(candidates, src, dst, fabric) -> _Routes``, vectorised
over a batch of pairs in one plane (``topology.Candidates``):

* ``ecmp``: single path per flow, chosen by a hash of (src, dst) over the equal-cost paths,
  as switches hash a flow's 5-tuple; collisions leave some links doubly loaded.
* ``spray``: packet spraying; one flow whose packets go evenly over all equal-cost paths (its
  coefficient is 1/P on each path's switch links), so it has one rate, set by its worst path.
* ``split``: application-level splitting into ``subflows`` flows (e.g. several QPs), each with
  1/k of the bytes, each hashed onto its own path: ECMP with k times more, smaller flows.
* ``adaptive``: each flow takes the least-loaded path when it starts (load = the fabric's
  current rates plus the flows already placed in the same coflow, relative to capacity).
* ``ideal``: the ideal multipath reference; the network is built trunked (``leaf_spine.py``)
  and every pair has one path over the trunks.

Hashes are splitmix64 of (salt, src, dst, subflow), the salt drawn from the run's seeded numpy
Generator when the router is built: the same seed gives the same paths, a new seed new ones.
Python's ``hash()`` is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from clustersim.hardware.network.hashed_routes import HashedLeafSpine
from clustersim.hardware.network.leaf_spine import LeafSpinePlane
from clustersim.hardware.network.topology import Candidates, Network
from clustersim.sim.relabelled_coflows import _Ends, link_classes
from clustersim.sim.fabric import RoutedFlows

ROUTING_KINDS = ("ecmp", "spray", "split", "adaptive", "ideal")


def flow_hash(salt: int, *keys: np.ndarray) -> np.ndarray:
    """splitmix64 over the keys, vectorised; uint64 results."""
    with np.errstate(over="ignore"):
        h = np.full(len(keys[0]), np.uint64(salt), dtype=np.uint64)
        for key in keys:
            h = _mix(h ^ np.asarray(key).astype(np.uint64))
    return h


def _mix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class _Routes:
    """Flows for a batch of pairs (``row`` indexes the batch); see ``RoutedFlows``."""

    row: np.ndarray
    fraction: np.ndarray
    inc_flow: np.ndarray
    inc_link: np.ndarray
    inc_coef: np.ndarray
    latency_s: float


def _single_paths(cand: Candidates, rows: np.ndarray, path: np.ndarray | None, fraction: float,
                  latency: np.ndarray, interior: np.ndarray | None = None) -> _Routes:
    """One flow per (row, path) entry, coefficient 1 on every link of its path."""
    if interior is None:
        interior = cand.interior(rows, path)
    count, width = len(rows), interior.shape[1] + 2
    matrix = np.empty((count, width), dtype=np.int64)
    matrix[:, 0] = cand.first[rows]
    matrix[:, 1:-1] = interior
    matrix[:, -1] = cand.last[rows]
    # Row-major incidences of the links that exist (-1: a hop the path skips). One pass each,
    # not nonzero + fancy indexing: an all-to-all step routes 32k pairs at 4096 hosts.
    absent = interior < 0
    if absent.any():
        links = matrix[matrix >= 0]
        flow = np.repeat(np.arange(count), width - absent.sum(axis=1))
    else:
        links = matrix.reshape(-1)
        flow = np.repeat(np.arange(count), width)
    path_latency = np.bincount(flow, weights=latency[links], minlength=count)
    return _Routes(rows, np.full(count, fraction), flow, links, np.ones(len(links)),
                   float(path_latency.max()) if count else 0.0)


class RoutingPolicy:
    """Base of the policies. Extension point: set ``kind``, ``static`` and implement ``route``.

    ``static`` policies choose paths from the pair alone (the fabric may cache their routes);
    others read the fabric's load.
    """

    kind: ClassVar[str] = ""
    static: ClassVar[bool] = True

    def route(self, cand: Candidates, src: np.ndarray, dst: np.ndarray, fabric, salt: int,
              latency: np.ndarray) -> _Routes:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


class Ecmp(RoutingPolicy):
    kind = "ecmp"

    def route(self, cand, src, dst, fabric, salt, latency):
        rows = np.arange(len(src))
        path = (flow_hash(salt, src, dst) % cand.n_paths.astype(np.uint64)).astype(np.int64)
        return _single_paths(cand, rows, path, 1.0, latency)


class FlowSplitting(RoutingPolicy):
    kind = "split"

    def __init__(self, subflows: int):
        if subflows < 1:
            raise ValueError(f"subflows must be >= 1, got {subflows}")
        self.subflows = subflows

    def route(self, cand, src, dst, fabric, salt, latency):
        k = self.subflows
        rows = np.repeat(np.arange(len(src)), k)
        sub = np.tile(np.arange(k), len(src))
        n = cand.n_paths[rows].astype(np.uint64)
        path = (flow_hash(salt, src[rows], dst[rows], sub) % n).astype(np.int64)
        return _single_paths(cand, rows, path, 1.0 / k, latency)

    def describe(self) -> str:
        return f"split:{self.subflows}"


class PacketSpraying(RoutingPolicy):
    """Even spreading over all equal-cost paths. ``bundled`` (the default) routes over the
    plane's link bundles, which the fabric solves as one link each: the same rates as per-link
    spreading (all traffic on those links is sprayed, so they are always equally loaded) at a
    fraction of the incidences. ``bundled=False`` lists every link with its 1/P share."""

    kind = "spray"

    def __init__(self, bundled: bool = True):
        self.bundled = bundled

    def route(self, cand, src, dst, fabric, salt, latency):
        count = len(src)
        if cand.bundle_base is not None:
            return _single_paths(cand, np.arange(count), None, 1.0, latency,
                                 interior=cand.bundled_interior())
        # Shared ends (NIC up, NIC down) once per flow with coefficient 1; interior links of all
        # equal-cost paths with their share of the paths through them.
        rows, inner, coef = cand.plane.spread(cand.src_port, cand.dst_port)
        lat = latency[cand.first] + latency[cand.last] \
            + np.bincount(rows, weights=coef * latency[inner], minlength=count)
        arange = np.arange(count)
        return _Routes(arange, np.ones(count), np.concatenate([arange, arange, rows]),
                       np.concatenate([cand.first, cand.last, inner]),
                       np.concatenate([np.ones(2 * count), coef]),
                       float(lat.max()) if count else 0.0)


class Adaptive(RoutingPolicy):
    """Least-loaded path at flow start; ties go to the hashed path, so ties spread out."""

    kind = "adaptive"
    static = False

    def route(self, cand, src, dst, fabric, salt, latency):
        capacity = fabric.capacity
        load = fabric.link_rates() / capacity
        n = cand.n_paths
        path = np.zeros(len(src), dtype=np.int64)
        start = (flow_hash(salt, src, dst) % n.astype(np.uint64)).astype(np.int64)
        demand = np.minimum(capacity[cand.first], capacity[cand.last])
        multi = np.flatnonzero(n > 1)
        # Pairs with the same path count share the candidate enumeration.
        for count in np.unique(n[multi]).tolist():
            rows = multi[n[multi] == count]
            options = np.arange(count)
            for row in rows.tolist():
                order = (options + start[row]) % count
                links = cand.interior(np.full(count, row), order)
                valid = links >= 0
                score = np.where(valid, load[np.maximum(links, 0)], -np.inf).max(axis=1)
                best = int(np.argmin(score))
                path[row] = order[best]
                chosen = links[best][valid[best]]
                load[chosen] += demand[row] / capacity[chosen]
        return _single_paths(cand, np.arange(len(src)), path, 1.0, latency)


class Ideal(RoutingPolicy):
    """On a trunked plane every pair has one path; this just takes it."""

    kind = "ideal"

    def route(self, cand, src, dst, fabric, salt, latency):
        return _single_paths(cand, np.arange(len(src)), np.zeros(len(src), dtype=np.int64), 1.0,
                             latency)


def make_policy(kind: str, *, subflows: int = 4) -> RoutingPolicy:
    policies = {"ecmp": Ecmp, "spray": PacketSpraying, "adaptive": Adaptive, "ideal": Ideal}
    if kind == "spray_per_link":
        return PacketSpraying(bundled=False)
    if kind == "split":
        return FlowSplitting(subflows)
    if kind not in policies:
        raise ValueError(f"unknown routing {kind!r}; expected one of {', '.join(ROUTING_KINDS)}")
    return policies[kind]()


class NetworkRouter:
    """The fabric's Router for a ``Network``: NVLink inside nodes, a policy per plane.

    ``salt`` seeds the flow hashes; build it with ``salt_from(rng)`` from the run's Generator.
    ``reseeded(rng)`` returns the same router with hashes from another Generator.
    """

    def __init__(self, network: Network, policies: list[RoutingPolicy], salt: int = 0,
                 spec: dict | None = None):
        if len(policies) != len(network.planes):
            raise ValueError(f"{len(network.planes)} planes but {len(policies)} routing policies")
        self.network, self.policies, self.salt = network, list(policies), int(salt)
        self.static = all(policy.static for policy in self.policies)
        self.spec = spec or {}
        # Bundles of planes that spray (bundled): solver links after the physical ones.
        self.bundles: list[np.ndarray] = []
        self._bundle_base: list[int | None] = []
        for plane, policy in zip(network.planes, self.policies):
            groups = plane.bundles() if getattr(policy, "bundled", False) else []
            self._bundle_base.append(len(network.links) + len(self.bundles) if groups else None)
            self.bundles.extend(groups)
        latency = [link.latency_s for link in network.links]
        self._latency = np.array(latency + [latency[b[0]] for b in self.bundles])
        # ECMP over one leaf-spine plane from per-port tables (hashed_routes.py): the same
        # routes; tests turn it off to compare.
        self.fast_routes = True
        self._hashed: HashedLeafSpine | None | bool = False    # False: not built yet

    @property
    def links(self):
        return self.network.links

    def reseeded(self, rng: np.random.Generator) -> "NetworkRouter":
        return NetworkRouter(self.network, self.policies, salt_from(rng), self.spec)

    def describe(self) -> str:
        kinds = {policy.describe() for policy in self.policies}
        return kinds.pop() if len(kinds) == 1 else "/".join(p.describe() for p in self.policies)

    # -- Router protocol ---------------------------------------------------------------------
    def route_distinct(self, src: np.ndarray, dst: np.ndarray, fabric) -> RoutedFlows | None:
        """``route`` for pairs that may include local ones (src == dst), when this router
        proves at once that none is (the fast ECMP's pairs are all between leaves); else
        None, and the fabric drops local pairs and calls ``route``."""
        hashed = self._fast_ecmp()
        return hashed.route(src, dst) if hashed is not None else None

    def route(self, src: np.ndarray, dst: np.ndarray, fabric) -> RoutedFlows:
        hashed = self._fast_ecmp()
        if hashed is not None:
            routed = hashed.route(src, dst)
            if routed is not None:
                return routed
        network = self.network
        gpn = network.gpus_per_node
        src_node, dst_node = src // gpn, dst // gpn
        plane_index = network.plane_of(src_node, dst_node)
        plane_index[src_node == dst_node] = -1
        parts: list[_Routes] = []
        row_maps: list[np.ndarray] = []
        local = np.flatnonzero(plane_index < 0)
        if len(local):
            links = np.column_stack([2 * src[local], 2 * dst[local] + 1]).ravel()
            flows = np.repeat(np.arange(len(local)), 2)
            lat = float(self._latency[2 * src[local]].max())
            parts.append(_Routes(np.arange(len(local)), np.ones(len(local)), flows, links,
                                 np.ones(len(links)), lat))
            row_maps.append(local)
        for index, (plane, policy) in enumerate(zip(network.planes, self.policies)):
            on = plane_index == index
            if not on.any():
                continue
            if len(parts) or not on.all():
                rows = np.flatnonzero(on)
                src_rows, dst_rows = src[rows], dst[rows]
            else:               # every pair on this plane (an all-to-all's rail step)
                rows, src_rows, dst_rows = None, src, dst
            cand = plane.candidates(network.port_of(plane, src_rows),
                                    network.port_of(plane, dst_rows), self._bundle_base[index])
            parts.append(policy.route(cand, src_rows, dst_rows, fabric, self.salt,
                                      self._latency))
            row_maps.append(rows)
        return _merge(parts, row_maps)

    def _fast_ecmp(self) -> HashedLeafSpine | None:
        if not self.fast_routes:
            return None
        if self._hashed is False:
            self._hashed = self._hashed_routes()
        return self._hashed

    def _hashed_routes(self) -> HashedLeafSpine | None:
        """The fast ECMP router when it applies: one leaf-spine plane (not trunked) with
        every node, one NIC per GPU, hashed single paths."""
        network = self.network
        if len(network.planes) != 1 or type(self.policies[0]) is not Ecmp:
            return None
        plane = network.planes[0]
        if (type(plane) is not LeafSpinePlane or plane.trunked or self._bundle_base[0] is not None
                or plane.nics_per_node != network.gpus_per_node
                or plane.num_hosts != network.num_nodes
                or not np.array_equal(plane.host_of_node, np.arange(network.num_nodes))):
            return None
        return HashedLeafSpine(plane, self.salt, self._latency, network.gpus_per_node)

    def relabels(self, src: np.ndarray, dst_a: np.ndarray, dst_b: np.ndarray) -> bool:
        """Whether routing pairs (src, dst_b) gives the flows of (src, dst_a), in the same order
        and with the same fractions and coefficients, with only their destination-side links
        renamed by a one-to-one map that keeps capacity, latency and tier.

        The two coflows are then the same max-min problem up to renaming links, and the fabric
        replays a recording of the first for the second (``sim/coflow_replay.py``, which runs
        the same test on ``destination_ends``). True only where routes split into a source
        part and a destination part (``Plane.destination_links``): NVLink, non-blocking planes,
        pairs within a leaf, sprayed bundles and ideal trunks; never for hashed paths between
        leaves."""
        ends_a = self.destination_ends(src, dst_a)
        ends_b = self.destination_ends(src, dst_b)
        if ends_a is None or ends_b is None:
            return False
        classes = link_classes(*self._link_table())
        mark = np.zeros(len(classes), dtype=bool)
        return _Ends(*ends_a, classes).renaming(*ends_b, classes, mark) is not None

    def destination_ends(self, src: np.ndarray, dst: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray] | None:
        """(plane index of each pair, -1 inside a node (with one plane: whether the pair is
        inside a node); the links of its route fixed by the
        destination alone, -1 padded) when every route is (links fixed by the source, the
        plane and which destination links are -1) + (these links); None otherwise (hashed
        paths, load-dependent routing). See ``relabels``. What depends on ``src`` alone is
        kept for the next call with the same array (the fabric asks with one candidate's
        sources against many coflows)."""
        if not self.static:
            return None
        hashed = self._fast_ecmp()
        if hashed is not None and (hashed.leaf[src] != hashed.leaf[dst]).any():
            return None                 # hashed paths between leaves (as below, quicker)
        network = self.network
        gpn = network.gpus_per_node
        sources = self.__dict__.setdefault("_sources", {})
        cached = sources.get(id(src))
        if cached is None or cached[0] is not src:
            if len(sources) >= 8:
                sources.pop(next(iter(sources)))
            ports = [network.port_of(plane, src) for plane in network.planes]
            cached = sources[id(src)] = (src, src // gpn, ports)
        _, src_node, src_ports = cached
        dst_node = dst // gpn
        inside = src_node == dst_node
        if len(network.planes) == 1 and (network.planes[0].host_of_node >= 0).all():
            plane = network.planes[0]
            links = plane.destination_links(src_ports[0], network.port_of(plane, dst),
                                            self._bundle_base[0])
            if links is None:
                return None
            # One plane: "inside a node" (True) or on the plane (False) says which.
            plane_index = inside
            if inside.any():
                links[inside] = -1
                links[inside, 0] = 2 * dst[inside] + 1   # NVLink down into the destination
            return plane_index, links
        plane_index = network.plane_of(src_node, dst_node)
        plane_index[inside] = -1
        width = 2 if any(isinstance(p, LeafSpinePlane) for p in network.planes) else 1
        ends = np.full((len(src), width), -1, dtype=np.int64)
        if inside.any():
            ends[inside, 0] = 2 * dst[inside] + 1
        for index, plane in enumerate(network.planes):
            rows = np.flatnonzero(plane_index == index)
            if not len(rows):
                continue
            links = plane.destination_links(src_ports[index][rows],
                                            network.port_of(plane, dst[rows]),
                                            self._bundle_base[index])
            if links is None:
                return None
            ends[rows, :links.shape[1]] = links
        return plane_index, ends

    def _link_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Capacity, latency and tier number of every solver link (links, then bundles)."""
        table = self.__dict__.get("_table")
        if table is None:
            links = self.network.links
            capacity = [link.capacity_bytes_per_s for link in links]
            tiers = {name: i for i, name in enumerate(sorted({link.tier for link in links}))}
            tier = [tiers[link.tier] for link in links]
            for members in self.bundles:
                capacity.append(sum(capacity[int(m)] for m in members))
                tier.append(tier[int(members[0])])
            table = self._table = (np.asarray(capacity), self._latency, np.asarray(tier))
        return table

    def paths(self, src: int, dst: int, fabric=None):
        """Per-pair form: each path with its share of the bytes (sprayed paths as 1/P each)."""
        if self.bundles:
            unbundled = [PacketSpraying(bundled=False) if isinstance(p, PacketSpraying) else p
                         for p in self.policies]
            return NetworkRouter(self.network, unbundled, self.salt).paths(src, dst, fabric)
        routed = self.route(np.array([src]), np.array([dst]), fabric)
        result = []
        for flow in range(routed.num_flows):
            on = routed.inc_flow == flow
            links, coef = routed.inc_link[on], routed.inc_coef[on]
            if np.all(coef == 1.0):
                result.append((tuple(links.tolist()), float(routed.fraction[flow])))
                continue
            ends = links[coef == 1.0].tolist()
            inner = links[coef < 1.0]
            width = len(inner) * float(coef[coef < 1.0][0])  # interior links per path
            per_path = int(round(width))
            count = len(inner) // per_path
            for p in range(count):
                middle = inner[p * per_path:(p + 1) * per_path].tolist()
                result.append((tuple([ends[0], *middle, ends[-1]]),
                               float(routed.fraction[flow]) / count))
        return result


def _merge(parts: list[_Routes], row_maps: list[np.ndarray]) -> RoutedFlows:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return RoutedFlows(empty, np.zeros(0), empty, empty, np.zeros(0), 0.0)
    if len(parts) == 1:
        part = parts[0]
        pair = part.row if row_maps[0] is None else row_maps[0][part.row]
        return RoutedFlows(pair, part.fraction, part.inc_flow, part.inc_link, part.inc_coef,
                           part.latency_s)
    pair, fraction, inc_flow, inc_link, inc_coef = [], [], [], [], []
    base = 0
    for part, rows in zip(parts, row_maps):
        pair.append(part.row if rows is None else rows[part.row])
        fraction.append(part.fraction)
        inc_flow.append(part.inc_flow + base)
        inc_link.append(part.inc_link)
        inc_coef.append(part.inc_coef)
        base += len(part.fraction)
    return RoutedFlows(np.concatenate(pair), np.concatenate(fraction), np.concatenate(inc_flow),
                       np.concatenate(inc_link), np.concatenate(inc_coef),
                       max(part.latency_s for part in parts))


def salt_from(rng: np.random.Generator | None) -> int:
    """A 63-bit hash salt from the run's Generator (a fixed one when there is none)."""
    generator = rng if rng is not None else np.random.default_rng(0)
    return int(generator.integers(0, 2**63 - 1))


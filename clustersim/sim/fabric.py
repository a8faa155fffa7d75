"""Fabric: links with capacities; transfers are fluid flows that share links max-min fairly.

Fidelity: flow-level (fluid). A transfer of S bytes over a path first waits the path's latency
(the sum of its links' latencies), then drains at the max-min fair rate, which is recomputed
only when a flow starts or ends, so the cost grows with the number of flow events, not with
bytes or simulated time. An uncontended transfer takes ``latency + S / bottleneck capacity``;
two flows on one link get half of it each.

Flows that are added at the same simulated instant are solved in one recomputation (a coflow):
a ring step over thousands of ranks is one max-min solve, not thousands. The solver works on
incidence arrays (flow, link, coefficient) with numpy, so one solve costs O(incidences) per
bottleneck level, never O(flows^2) Python.

A flow's *coefficient* on a link is the fraction of its rate that crosses the link: 1 on a
single path; 1/P on each of P paths when a router sprays the flow's packets evenly (the flow
then has one rate, limited by its worst path, and ends at one instant, as a sprayed transport
flow does). Max-min fairness is over flows: at a bottleneck, flows get equal rates.

Routing is injected. A router implements ``paths(src, dst, fabric)`` -> [(path, fraction)]
(each entry becomes an independent flow carrying that fraction of the bytes), and may also
implement the vectorised ``route(src, dst, fabric) -> RoutedFlows`` for a whole coflow, which
the fabric prefers. A router whose choices do not depend on the fabric's load says so with
``static = True``; the fabric then routes a coflow it has seen before from a cache.

A router may also declare *bundles* (``router.bundles``: lists of equal-capacity links) and
route flows over a bundle's index (``len(links) + b``) instead of its members: the solver
treats the bundle as one link of the members' summed capacity, and reports (bytes, rates,
utilisation) spread evenly over the members. This is exact when every flow that crosses any
member crosses all of them equally, as packets sprayed over a leaf's uplinks do; it turns a
sprayed flow's 2 x uplinks incidences into 2.

Repeated coflows on an idle fabric are replayed, not re-solved. When a coflow (the same
``pairs`` tuple object and byte count, as a FlowStep's repeats are) starts on a fabric that
carries nothing else, its whole max-min trajectory is a deterministic function of its flows;
the second such run is recorded and later ones replay it: one timeout instead of a solve per
flow event. This is exact (up to the rounding of absolute clock additions): if any other flow
starts while a replay runs, the replay is first turned back into live flows with exactly the
bytes they would have left at that instant, and the solver takes over. A coflow whose routes
are a recorded one's with destination links renamed (the steps of an all-to-all over sprayed
or ideal fabrics) replays that recording too (:mod:`clustersim.sim.relabelled_coflows`). A
coflow that starts alone on an idle fabric and has no recording (an all-to-all's ECMP steps)
is solved start to end in one go, then replayed the same way
(:mod:`clustersim.sim.solo_coflows`; not while a utilisation log is kept); if its flows carry
equal bytes it ends at size / its first water level, and its rates are solved only if the
replay is interrupted (:mod:`clustersim.sim.water_level`).

A flow alone on its links skips the solver: with a static router, a single-flow coflow whose
links carry no other flow runs as one timeout at its bottleneck rate (see
:mod:`clustersim.sim.express_flows`; exact, and handed to the solver with the bytes it has left
as soon as another flow touches its links). Point-to-point routes of a static router are cached
per (src, dst) pair.

Endpoints are integers; the engine knows nothing of GPUs or switches.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import simpy

from clustersim.sim.allocator import keep_large_blocks
from clustersim.sim.coflow_replay import CoflowReplay, _Coflow, _Recording, _Replay, _Trajectory
from clustersim.sim.express_flows import ExpressFlows, ExpressPath
from clustersim.sim.max_min import _accumulate, _compact, max_min_rates  # noqa: F401
from clustersim.sim.relabelled_coflows import RelabelledCoflows
from clustersim.sim.solo_coflows import SoloCoflows, rates_after
from clustersim.sim.routed_flows import _EMPTY_F, _EMPTY_I, PairArray, Path, RoutedFlows  # noqa: F401


@dataclass(frozen=True, slots=True)
class Link:
    """A one-directional link. Full-duplex cables are two links.

    ``tier`` groups links for reports ("nvlink", "nic", "leaf_spine", ...); the fabric records
    each coflow's worst drain time per tier.
    """

    name: str
    capacity_bytes_per_s: float
    latency_s: float = 0.0
    tier: str = ""

    def __post_init__(self) -> None:
        if self.capacity_bytes_per_s <= 0 or self.latency_s < 0:
            raise ValueError(f"link {self.name!r}: capacity must be > 0 and latency >= 0, got "
                             f"{self.capacity_bytes_per_s} B/s and {self.latency_s} s")


class Router(Protocol):
    """Chooses the links a transfer takes. Fractions of one transfer sum to 1.

    Optional extensions the fabric uses when present: ``route(src, dst, fabric)`` (numpy arrays
    of endpoints -> ``RoutedFlows``) and ``static: bool`` (choices independent of load).
    """

    def paths(self, src: int, dst: int, fabric: "Fabric") -> Sequence[tuple[Path, float]]: ...


class Fabric(ExpressPath, CoflowReplay, RelabelledCoflows, SoloCoflows):
    """The fluid-flow network of one simulation."""

    # Caches are bounded: entries and total incidences held.
    _CACHE_ENTRIES = 256
    _CACHE_INCIDENCES = 20_000_000

    def __init__(self, env: simpy.Environment, links: Sequence[Link], router: Router,
                 record_utilisation: bool = True):
        self.env, self.links, self.router = env, list(links), router
        if len(links) >= 1 << 14:
            keep_large_blocks()         # large per-link arrays without page faults (allocator.py)
        self.capacity = np.array([link.capacity_bytes_per_s for link in self.links], dtype=float)
        self.latency = np.array([link.latency_s for link in self.links], dtype=float)
        self.tiers = sorted({link.tier for link in self.links})
        tier_index = {tier: i for i, tier in enumerate(self.tiers)}
        tier_of = np.array([tier_index[link.tier] for link in self.links], dtype=np.int64)
        self._init_bundles(getattr(router, "bundles", None) or (), tier_of)
        self.record_utilisation = record_utilisation
        # Replay repeated solo coflows (exact; see the module docstring). Tests turn it off to
        # compare against the solver.
        self.replay_repeats = True
        # Re-solve only flows at or above the slowest departed one (exact; see ``_solve``).
        self.incremental_solves = True
        # (time_s, link index, rate_bytes_per_s) whenever a link's aggregate rate changes.
        self.utilisation_log: list[tuple[float, int, float]] = []
        self._drains: list[tuple[np.ndarray, float]] = []
        self.flow_events = 0            # flow starts + ends, replayed ones included
        self.solved_flow_events = 0     # those the solver handled (not replayed)
        self.recomputations = 0
        self.replayed_coflows = 0
        self.interrupted_replays = 0    # replays turned back into live flows
        n = len(self._cap)
        self._carried = np.zeros(n)     # bytes of flows that have ended, per solver link
        self._link_rate = np.zeros(len(self.links))
        self._rates_current = True
        # Live flows.
        self._size, self._rem, self._rate = _EMPTY_F, _EMPTY_F, _EMPTY_F
        self._cof, self._orig = _EMPTY_I, _EMPTY_I
        self._inc_flow, self._inc_link, self._inc_coef = _EMPTY_I, _EMPTY_I, _EMPTY_F
        self._pending: list[tuple[int, RoutedFlows, np.ndarray]] = []
        self._coflows: dict[int, _Coflow] = {}
        self._next_cid = 0
        self._last_update_s = 0.0
        self._generation = 0
        self._change_scheduled = False
        self._route_cache: OrderedDict[int, tuple] = OrderedDict()
        self._route_cache_size = 0
        self._seen: dict[int, object] = {}
        self._trajectories: OrderedDict[tuple, tuple] = OrderedDict()
        self._recording: _Recording | None = None
        self._replay: _Replay | None = None
        # Lone flows on idle links run without the solver (exact; see express_flows).
        self._static = bool(getattr(router, "static", False))
        self.express = self._static
        self.express_flow_events = 0    # starts + ends of flows that never met the solver
        self._express = ExpressFlows()
        # id(route) -> (route, bytes of its ended express flows)
        self._express_carried: dict = {}  # ExpressRoute -> bytes its ended flows moved
        self._replayed: dict[int, tuple[_Trajectory, int]] = {}  # finished replays per recording
        self._pair_routes: dict[tuple[int, int], RoutedFlows] = {}
        self._solver_version = 0        # bumped whenever the solver's flows or pending change
        self._busy = (-1, None)         # (version, bool mask of solver links in use)
        self._init_relabelled()         # replays on renamed links (relabelled_coflows.py)
        self._init_solo()               # one-go solves of coflows alone (solo_coflows.py)

    def _init_bundles(self, bundles, tier_of: np.ndarray) -> None:
        """Solver links: the physical links, then one per bundle (see the module docstring)."""
        members = [np.asarray(b, dtype=np.int64) for b in bundles]
        count = len(self.links)
        seen = np.zeros(count, dtype=bool)
        for index, member in enumerate(members):
            if not len(member) or seen[member].any():
                raise ValueError(f"bundle {index} is empty or shares a link with another bundle")
            if np.ptp(self.capacity[member]) > 0 or np.ptp(self.latency[member]) > 0:
                raise ValueError(f"bundle {index}: its links differ in capacity or latency")
            seen[member] = True
        self._cap = np.concatenate([self.capacity, [self.capacity[m].sum() for m in members]])
        self._lat = np.concatenate([self.latency, [self.latency[m[0]] for m in members]])
        self._tier_of = np.concatenate([tier_of, [tier_of[m[0]] for m in members]]).astype(np.int64)
        self._member_link = np.concatenate(members) if members else _EMPTY_I
        self._member_bundle = np.concatenate(
            [np.full(len(m), count + i) for i, m in enumerate(members)]) if members else _EMPTY_I
        self._member_share = np.concatenate(
            [np.full(len(m), 1.0 / len(m)) for m in members]) if members else _EMPTY_F
        self._bundle_members = [[(int(link), 1.0 / len(m)) for link in m] for m in members]

    def _physical(self, values: np.ndarray) -> np.ndarray:
        """Per-solver-link values (bytes, rates) as per physical link: bundles spread evenly."""
        out = values[:len(self.links)].copy()
        if len(self._member_link):
            out[self._member_link] += values[self._member_bundle] * self._member_share
        return out

    # -- public API --------------------------------------------------------------------------
    def path_latency_s(self, path: Path) -> float:
        return float(sum(self.links[i].latency_s for i in path))

    def transfer(self, src: int, dst: int, size_bytes: float) -> simpy.Event:
        """An event that fires when ``size_bytes`` from ``src`` have arrived at ``dst``."""
        entry = self._pair_routes.get((src, dst))
        if entry is None:
            routed = self._route_now(((src, dst),))
            entry = (routed, self._express_route(routed)
                     if self.express and routed.num_flows == 1 else None)
            if self._static and len(self._pair_routes) < 1 << 20:
                self._pair_routes[(src, dst)] = entry
        routed, route = entry
        if (route is not None and size_bytes > 0 and self._replay is None
                and self._express_can_start(route)):
            # The common case of a pipeline: a send on links nothing else uses (express_flows).
            cid = self._next_cid
            self._next_cid = cid + 1
            return self._launch_express(cid, route, routed, float(size_bytes),
                                        self.env.now + route.latency_s)
        return self._launch(None, routed, size_bytes)

    def coflow(self, pairs: Sequence[tuple[int, int]], bytes_per_flow: float) -> simpy.Event:
        """Start equal transfers together; the event fires when the last one has arrived."""
        event = self._relabelled_coflow(pairs, bytes_per_flow)
        if event is not None:
            return event
        return self._launch(pairs, self._routed(pairs) if len(pairs) else None, bytes_per_flow)

    def _launch(self, pairs, routed: RoutedFlows | None, bytes_per_flow: float) -> simpy.Event:
        env = self.env
        done = env.event()
        if routed is None or routed.num_flows == 0 or bytes_per_flow <= 0:
            # Local copies and empty messages cost only the latency of the longest path.
            latency = routed.latency_s if routed is not None else 0.0
            if latency > 0:
                env.timeout(latency).callbacks.append(lambda _: done.succeed())
            else:
                done.succeed()
            return done
        cid = self._next_cid
        self._next_cid += 1
        size = float(bytes_per_flow)
        if self.express and routed.num_flows == 1 and self._replay is None:
            route = self._express_route(routed)
            if self._express_can_start(route):
                # Hold the links from now; bytes move after the path latency.
                self._launch_express(cid, route, routed, size, env.now + routed.latency_s, done)
                return done

        def start(_event) -> None:
            self._start(cid, pairs, routed, size, done)

        if routed.latency_s > 0:
            env.timeout(routed.latency_s).callbacks.append(start)
        else:
            start(None)
        return done

    @property
    def bytes_carried(self) -> np.ndarray:
        """Bytes each link has carried so far (a fresh array)."""
        carried = self._carried.copy()
        for trajectory, count in self._replayed.values():
            carried[trajectory.links] += count * trajectory.link_bytes
        self._relabelled_bytes(carried)
        self._counted_bytes(carried)            # ended one-go coflows (solo_coflows.py)
        for route, moved in self._express_carried.items():
            for link, coef in zip(route.links, route.coefs):
                carried[link] += coef * moved
        now = self.env.now
        for flow in self._express.flows.values():
            moved = flow.moved_bytes(now)
            for link, coef in zip(flow.route.links, flow.route.coefs):
                carried[link] += coef * moved
        if len(self._size):
            elapsed = self.env.now - self._last_update_s
            moved = self._size - (self._rem - self._rate * elapsed)
            carried += np.bincount(self._inc_link, weights=self._inc_coef * moved[self._inc_flow],
                                   minlength=len(carried))
        if self._replay is not None:
            replay = self._replay
            moved, _, _ = self._replay_progress(replay, self.env.now - replay.start_s)
            routed = self._routes_of(replay)
            carried += np.bincount(routed.inc_link, weights=routed.inc_coef
                                   * moved[routed.inc_flow], minlength=len(carried))
        return self._physical(carried)

    def link_rates(self) -> np.ndarray:
        """Current aggregate rate per link (adaptive routing reads this)."""
        if self._replay is not None:
            self._materialise()
        for cid in list(self._express.flows):
            self._adopt(self._express.flows[cid])
        if not self._rates_current:
            self._link_rate = self._physical(self._aggregate_rates())
            self._rates_current = True
        return self._link_rate

    @property
    def link_rate(self) -> np.ndarray:
        return self.link_rates()

    def link_load(self, link: int) -> float:
        return float(self.link_rates()[link])

    @property
    def num_flows(self) -> int:
        """Flows on the fabric now (a replayed coflow counts as its live flows)."""
        if self._replay is not None:
            replay = self._replay
            _, live, _ = self._replay_progress(replay, self.env.now - replay.start_s)
            return len(self._size) + len(live) + len(self._express)
        return len(self._size) + len(self._express)

    # -- routing -----------------------------------------------------------------------------
    def _idle(self) -> bool:
        return not len(self._size) and self._replay is None

    def _routed(self, pairs) -> RoutedFlows | None:
        cacheable = isinstance(pairs, (tuple, PairArray))
        static = bool(getattr(self.router, "static", False))
        key = id(pairs)
        if cacheable:
            entry = self._route_cache.get(key)
            if entry is not None and entry[0] is pairs and (static or (entry[2] and self._idle())):
                self._route_cache.move_to_end(key)
                return entry[1]
        idle = self._idle()
        routed = self._route_now(pairs)
        if cacheable and (static or idle):
            if self._seen.get(key) is pairs:
                self._cache_route(key, pairs, routed, idle)
            else:
                if len(self._seen) > 65536:
                    self._seen.clear()
                self._seen[key] = pairs
        return routed

    def _route_now(self, pairs) -> RoutedFlows:
        if isinstance(pairs, PairArray):
            src, dst = self._arrays_of(pairs)      # (relabelled_coflows.py: made once)
        else:
            array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            src, dst = array[:, 0], array[:, 1]
        distinct = getattr(self.router, "route_distinct", None)
        if distinct is not None:        # routes when the router sees no local pair at once
            routed = distinct(src, dst, self)
            if routed is not None:
                return routed
        differ = src != dst
        route = getattr(self.router, "route", None)
        if route is not None and differ.all():      # no local copies: pairs as they are
            return route(src, dst, self)
        keep = np.flatnonzero(differ)
        if route is not None:
            routed = route(src[keep], dst[keep], self)
            return RoutedFlows(keep[routed.pair], routed.fraction, routed.inc_flow,
                               routed.inc_link, routed.inc_coef, routed.latency_s)
        per_pair = [(int(i), self.router.paths(int(src[i]), int(dst[i]), self)) for i in keep]
        return RoutedFlows.from_paths(per_pair, self._lat)

    def _cache_route(self, key, pairs, routed: RoutedFlows, idle: bool) -> None:
        cache = self._route_cache
        old = cache.pop(key, None)
        if old is not None:
            self._route_cache_size -= len(old[1].inc_link)
        cache[key] = (pairs, routed, idle)
        self._route_cache_size += len(routed.inc_link)
        while cache and (len(cache) > self._CACHE_ENTRIES
                         or self._route_cache_size > self._CACHE_INCIDENCES):
            _, (_, evicted, _) = cache.popitem(last=False)
            self._route_cache_size -= len(evicted.inc_link)

    def _record_drain(self, routed: RoutedFlows, size: float) -> None:
        """Note, per tier, the largest bytes/capacity over the coflow's links (its unit is
        computed once per cached route)."""
        unit = routed.__dict__.get("_drain_unit")
        if unit is None:
            unit = self._coflow_unit(routed)       # (solo_coflows.py)
            object.__setattr__(routed, "_drain_unit", unit)  # once per (cached) route
        self._drains.append((unit, size))

    @property
    def coflow_drain_s(self) -> list[np.ndarray]:
        """Per coflow, at its start: for each tier (``self.tiers``), the largest bytes/capacity
        over that tier's links, i.e. the least time the coflow needs on that tier."""
        return [unit * size for unit, size in self._drains]

    # -- coflow lifecycle --------------------------------------------------------------------
    def _start(self, cid: int, pairs, routed: RoutedFlows, size: float, done: simpy.Event,
               counted: bool = False) -> None:
        if self.express and routed.num_flows == 1 and self._replay is None:
            route = self._express_route(routed)
            if self._express_can_start(route):
                if counted:
                    self._start_express(cid, route, routed, size, self.env.now, done)
                else:
                    self._launch_express(cid, route, routed, size, self.env.now, done)
                return
        if len(self._express):
            self._adopt_overlapping(routed)
        if self._replay is not None:
            self._materialise()
        sizes = routed.fraction * size
        count = routed.num_flows
        if not counted:
            self._record_drain(routed, size)
            self.flow_events += count
        key = (id(pairs), size) if isinstance(pairs, (tuple, PairArray)) and self.replay_repeats \
            else None
        idle = self._idle() and not self._pending
        if key is not None and idle:
            entry = self._trajectories.get(key)
            if entry is not None and entry[0] is pairs and entry[1] is routed:
                self._trajectories.move_to_end(key)
                self._start_replay(cid, entry[2], routed, sizes, done)
                return
        if idle and count > 1 and self._start_solo(cid, key, pairs, routed, sizes, size, done):
            return
        routed.__dict__.pop("_unit_load", None)     # kept for a one-go solve only
        self._coflows[cid] = _Coflow(count, done)
        self._pending.append((cid, routed, sizes))
        self._solver_version += 1
        if self._recording is not None:
            self._recording = None      # another coflow joins: the recording is not solo
        elif (key is not None and idle and self._route_cache.get(key[0], (None,))[0] is pairs
              and self._route_cache[key[0]][1] is routed):
            self._recording = _Recording(cid, key, pairs, routed, self.env.now, count)
        self._schedule_change()

    # -- fluid model -------------------------------------------------------------------------
    def _schedule_change(self) -> None:
        if not self._change_scheduled:
            self._change_scheduled = True
            self.env.timeout(0).callbacks.append(self._on_change)

    def _on_change(self, _event: simpy.Event) -> None:
        self._change_scheduled = False
        self._update()

    def _update_clock_only(self) -> None:
        now = self.env.now
        elapsed = now - self._last_update_s
        if elapsed > 0 and len(self._size):
            self._rem = self._rem - self._rate * elapsed
        self._last_update_s = now

    def _append_flows(self, size, rem, rate, cof, orig, inc_flow, inc_link, inc_coef) -> None:
        self._solver_version += 1
        if not len(self._size):
            self._size, self._rem, self._rate, self._cof, self._orig = size, rem, rate, cof, orig
            self._inc_flow, self._inc_link, self._inc_coef = inc_flow, inc_link, inc_coef
            return
        self._size = np.concatenate([self._size, size])
        self._rem = np.concatenate([self._rem, rem])
        self._rate = np.concatenate([self._rate, rate])
        self._cof = np.concatenate([self._cof, cof])
        self._orig = np.concatenate([self._orig, orig])
        self._inc_flow = np.concatenate([self._inc_flow, inc_flow])
        self._inc_link = np.concatenate([self._inc_link, inc_link])
        self._inc_coef = np.concatenate([self._inc_coef, inc_coef])

    def _update(self) -> None:
        now = self.env.now
        elapsed = now - self._last_update_s
        completed: list[_Coflow] = []
        departed_rate = None
        if len(self._size):
            if elapsed > 0:
                self._rem = self._rem - self._rate * elapsed
            # Flows predicted to end now (within float rounding of the clock) end together.
            tolerance = self._rate * (elapsed * 1e-12 + now * 1e-15) + self._size * 1e-15
            finished = self._rem <= tolerance
            if finished.any():
                departed_rate = float(self._rate[finished].min())
                completed = self._finish(finished)
        self._last_update_s = now
        if self._pending:
            self._add_pending()
            departed_rate = None
        self._solve(departed_rate)
        for state in completed:
            state.done.succeed()
        self._schedule_next_completion()

    def _finish(self, finished: np.ndarray) -> list[_Coflow]:
        self._solver_version += 1
        inc_done = finished[self._inc_flow]
        flows = self._inc_flow[inc_done]
        _accumulate(self._carried, self._inc_link[inc_done],
                    self._inc_coef[inc_done] * self._size[flows])
        count = int(finished.sum())
        self.flow_events += count
        self.solved_flow_events += count
        cids, counts = np.unique(self._cof[finished], return_counts=True)
        completed = []
        for cid, n in zip(cids.tolist(), counts.tolist()):
            state = self._coflows[cid]
            state.outstanding -= n
            if state.outstanding == 0:
                completed.append(self._coflows.pop(cid))
                recording = self._recording
                if recording is not None and recording.cid == cid:
                    self._save_recording(recording)
        if count == len(finished):
            self._size = self._rem = self._rate = _EMPTY_F
            self._cof = self._orig = self._inc_flow = self._inc_link = _EMPTY_I
            self._inc_coef = _EMPTY_F
            return completed
        keep = ~finished
        renumber = np.cumsum(keep) - 1
        inc_keep = ~inc_done
        self._size, self._rem, self._rate = self._size[keep], self._rem[keep], self._rate[keep]
        self._cof, self._orig = self._cof[keep], self._orig[keep]
        self._inc_flow = renumber[self._inc_flow[inc_keep]]
        self._inc_link = self._inc_link[inc_keep]
        self._inc_coef = self._inc_coef[inc_keep]
        return completed

    def _add_pending(self) -> None:
        if len(self._pending) == 1 and not len(self._size):
            cid, routed, size = self._pending[0]
            self._pending = []
            count = len(size)
            self.solved_flow_events += count
            self._append_flows(size, size.copy(), np.zeros(count), np.full(count, cid),
                               np.arange(count), routed.inc_flow, routed.inc_link, routed.inc_coef)
            return
        base = len(self._size)
        sizes, cofs, origs, inc_flows, inc_links, inc_coefs = [], [], [], [], [], []
        for cid, routed, flow_sizes in self._pending:
            count = routed.num_flows
            sizes.append(flow_sizes)
            cofs.append(np.full(count, cid, dtype=np.int64))
            origs.append(np.arange(count, dtype=np.int64))
            inc_flows.append(routed.inc_flow + base)
            inc_links.append(routed.inc_link)
            inc_coefs.append(routed.inc_coef)
            base += count
        self._pending = []
        size = np.concatenate(sizes)
        self.solved_flow_events += len(size)
        self._append_flows(size, size.copy(), np.zeros(len(size)), np.concatenate(cofs),
                           np.concatenate(origs), np.concatenate(inc_flows),
                           np.concatenate(inc_links), np.concatenate(inc_coefs))

    def _aggregate_rates(self) -> np.ndarray:
        """Rate per solver link (physical links, then bundles)."""
        if not len(self._size):
            return np.zeros(len(self._cap))
        return np.bincount(self._inc_link, weights=self._inc_coef * self._rate[self._inc_flow],
                           minlength=len(self._cap))

    def _solve(self, departed_rate: float | None = None) -> None:
        """New max-min rates. After departures only (no arrivals), flows slower than the
        slowest departed one keep their rates: progressive filling below that level never saw
        the departed flows' links saturate, so it runs exactly as before; only the others are
        re-solved, on the capacity the kept flows leave."""
        self.recomputations += 1
        rate = rates_after(self._cap, self._rate, departed_rate, self._inc_flow, self._inc_link,
                           self._inc_coef, self.incremental_solves)
        if rate is not None:
            self._rate = rate
        recording = self._recording
        offset = self.env.now - recording.start_s if recording is not None else 0.0
        if recording is not None and len(self._size):
            recording.trajectory.segments.append((offset, self._orig.copy(), self._rate.copy()))
        if self.record_utilisation:
            old = self._link_rate
            new = self._physical(self._aggregate_rates())
            changed = np.flatnonzero(new != old)
            if len(changed):
                now = self.env.now
                links, rates = changed.tolist(), new[changed].tolist()
                self.utilisation_log.extend(zip([now] * len(links), links, rates))
                if recording is not None:
                    recording.trajectory.log.extend(zip([offset] * len(links), links, rates))
            self._link_rate = new
            self._rates_current = True
        else:
            self._rates_current = False

    def _schedule_next_completion(self) -> None:
        self._generation += 1
        if not len(self._size):
            return
        dt = float(np.min(self._rem / self._rate))
        generation = self._generation

        def wake(_event: simpy.Event) -> None:
            if generation == self._generation:
                self._update()

        self.env.timeout(max(dt, 0.0)).callbacks.append(wake)

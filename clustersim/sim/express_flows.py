"""Lone flows on idle links, run without the max-min solver (exact; event-level).

A flow whose links carry nothing else gets, under max-min fairness, its bottleneck rate
``min(capacity / coefficient)`` for as long as nothing else touches those links: the solver
would compute exactly that. Most point-to-point sends of a pipeline are such flows (each stage
pair has its own links), so the fabric runs them here: each flow is one timeout (``ExpressFlow``,
the event a lone send's caller waits on), with plain Python on tuples precomputed per route and
no numpy. When a coflow arrives that shares a link with an express flow, or
an adaptive router reads link rates, the express flow is handed to the solver with exactly the
bytes it has left at that instant (``Fabric._adopt``), and the solver takes over. A send's link
records and drain are kept compactly until read (:mod:`clustersim.sim.express_log`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np
import simpy
from simpy.events import Timeout

from clustersim.sim.coflow_replay import _Coflow
from clustersim.sim.express_log import ExpressLog
from clustersim.sim.routed_flows import RoutedFlows


@dataclass(slots=True, eq=False)
class ExpressRoute:
    """What the fast path needs of a single-flow route, computed once per route."""

    links: tuple[int, ...]          # solver links (bundles as one link)
    coefs: tuple[float, ...]
    rate_bytes_per_s: float         # alone on its links: min(capacity / coefficient)
    physical: tuple[tuple[int, float], ...]  # (physical link, share of the flow's rate)
    latency_s: float = 0.0
    fraction: float = 1.0           # of the transfer's bytes this flow carries
    physical_links: tuple[int, ...] = ()
    physical_rates: tuple[float, ...] = ()  # each physical link's rate while the flow runs
    drain_unit: np.ndarray | None = None    # ``Fabric._record_drain``'s unit (``drain_unit``)


class ExpressFlow(Timeout):
    """A flow holding its links from launch: the timeout at its end, ``size_bytes / rate``
    after ``start_s`` (when its path latency has passed and bytes start to move). Its first
    callback is the fabric's bookkeeping (``_end_express``); a lone send's caller waits on it
    directly (``done`` None), other callers on ``done``, which it succeeds."""

    __slots__ = ("cid", "route", "routed", "bytes_per_flow", "size_bytes", "start_s", "done")
    # routed: the RoutedFlows, to restart the flow if it is adopted before ``start_s``

    def moved_bytes(self, now: float) -> float:
        return min(self.size_bytes, max(0.0, self.route.rate_bytes_per_s * (now - self.start_s)))


def express_route(links, coefs, capacity, bundle_members, num_physical: int) -> ExpressRoute:
    """``bundle_members[b]`` lists (member link, share) of solver link ``num_physical + b``."""
    rate = min(float(capacity[link]) / coef for link, coef in zip(links, coefs))
    physical: dict[int, float] = {}
    for link, coef in zip(links, coefs):
        if link < num_physical:
            physical[link] = physical.get(link, 0.0) + coef
        else:
            for member, share in bundle_members[link - num_physical]:
                physical[member] = physical.get(member, 0.0) + coef * share
    return ExpressRoute(tuple(links), tuple(coefs), rate, tuple(physical.items()),
                        physical_links=tuple(physical),
                        physical_rates=tuple(rate * share for share in physical.values()))


def drain_unit(links, coefs, fraction: float, capacity, tier_of, num_tiers: int) -> np.ndarray:
    """``Fabric._record_drain``'s unit of a one-flow route without numpy calls: per tier, the
    largest bytes / capacity over the flow's links per byte sent. The same products, sums (in
    the same order) and maxima as there, so the same floats."""
    load: dict[int, float] = {}
    for link, coef in zip(links, coefs):
        load[link] = load.get(link, 0.0) + coef * fraction
    unit = [0.0] * num_tiers
    for link, weight in load.items():
        tier = tier_of[link]
        unit[tier] = max(unit[tier], weight / capacity[link])
    return np.array(unit)


class ExpressFlows:
    """The express flows of one fabric and the links they hold."""

    __slots__ = ("flows", "held")

    def __init__(self) -> None:
        self.flows: dict[int, ExpressFlow] = {}
        self.held: set[int] = set()     # solver links an express flow holds (one flow each)

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, flow: ExpressFlow) -> None:
        self.flows[flow.cid] = flow
        self.held.update(flow.route.links)

    def remove(self, cid: int) -> ExpressFlow | None:
        flow = self.flows.pop(cid, None)
        if flow is not None:
            self.held.difference_update(flow.route.links)
        return flow

    def finish(self, flow: ExpressFlow) -> bool:
        """Remove ``flow`` at its end; False if it was adopted by the solver meanwhile (a flow
        restarted after its path latency may hold its cid again)."""
        if self.flows.get(flow.cid) is not flow:
            return False
        del self.flows[flow.cid]
        self.held.difference_update(flow.route.links)
        return True

    def on_links(self, mask) -> list[int]:
        """cids of express flows holding a link where ``mask`` (a bool array) is set."""
        return sorted(cid for cid, flow in self.flows.items()
                      if any(mask[link] for link in flow.route.links))


class ExpressPath(ExpressLog):
    """The express path of ``Fabric`` (mixed into it; uses its flow state)."""

    def _express_route(self, routed: RoutedFlows):
        route = routed.__dict__.get("_express")
        if route is None:
            links, coefs = routed.inc_link.tolist(), routed.inc_coef.tolist()
            route = express_route(links, coefs, self._cap, self._bundle_members, len(self.links))
            route.latency_s, route.fraction = float(routed.latency_s), float(routed.fraction[0])
            route.drain_unit = drain_unit(links, coefs, route.fraction, self._cap, self._tier_of,
                                          len(self.tiers))
            object.__setattr__(routed, "_express", route)  # computed once per (cached) route
        return route

    def _solver_free(self, route) -> bool:
        """No solver flow, live or pending, uses the route's links."""
        version, busy = self._busy
        if version != self._solver_version:
            busy = np.zeros(len(self._cap), dtype=bool)
            busy[self._inc_link] = True
            for _, routed, _ in self._pending:
                busy[routed.inc_link] = True
            self._busy = (self._solver_version, busy)
        return not any(busy[link] for link in route.links)

    def _express_can_start(self, route: ExpressRoute) -> bool:
        """Nothing else is on the route's links: no express flow holds them, no solver flow uses
        them (an idle solver is tested first: a pipeline's sends never meet it)."""
        return self._express.held.isdisjoint(route.links) and (
            (not len(self._size) and not self._pending) or self._solver_free(route))

    def _launch_express(self, cid: int, route, routed: RoutedFlows, bytes_per_flow: float,
                        start_s: float, done: simpy.Event | None = None,
                        counted: bool = False) -> simpy.Event:
        """Count a new flow and its drain (unless ``counted``: a restart), then run it. Without
        a ``done`` event, its end timeout is the event the caller waits on (one event per send,
        as a timeout: our bookkeeping is its first callback, and ``_adopt`` moves the waiters
        to the solver's event if the flow is handed over)."""
        if not counted:
            if self.compact_express_records:
                self._express_drains += (route.drain_unit, bytes_per_flow)  # express_log.py
            else:
                self._drains.append((route.drain_unit, bytes_per_flow))
            self.flow_events += 1
        env = self.env
        size = bytes_per_flow * route.fraction
        flow = ExpressFlow(env, start_s - env.now + size / route.rate_bytes_per_s)
        flow.cid, flow.route, flow.routed, flow.start_s = cid, route, routed, start_s
        flow.bytes_per_flow, flow.size_bytes = bytes_per_flow, size
        flow.done = done                # None: the caller waits on the flow itself
        flow.callbacks.append(self._end_express)
        self._express.add(flow)
        self.express_flow_events += 1
        return flow if done is None else done

    def _start_express(self, cid: int, route, routed: RoutedFlows, bytes_per_flow: float,
                       start_s: float, done: simpy.Event) -> simpy.Event:
        """Run a flow already counted (restarted after its path latency)."""
        return self._launch_express(cid, route, routed, bytes_per_flow, start_s, done, True)

    def _log_express_start(self, flow: ExpressFlow) -> None:
        # Logged late (at its end or adoption): the flow holds its links alone meanwhile, so
        # each link's log stays in time order.
        if self.record_utilisation:
            route = flow.route
            self.utilisation_log.extend(zip(repeat(flow.start_s), route.physical_links,
                                            route.physical_rates))

    def _end_express(self, flow: ExpressFlow) -> None:
        if not self._express.finish(flow):
            return                      # adopted by the solver, which finishes it
        route = flow.route
        # Bytes per route, spread over its links when read (``bytes_carried``).
        carried = self._express_carried
        carried[route] = carried.get(route, 0.0) + flow.size_bytes
        self.flow_events += 1
        self.express_flow_events += 1
        if self.record_utilisation:
            if self.compact_express_records:
                self._express_ends += (flow.start_s, self.env.now, route)  # express_log.py
            else:
                self._log_express_end(flow.start_s, self.env.now, route)
        if flow.done is not None:
            flow.done.succeed()

    def _adopt_overlapping(self, routed: RoutedFlows) -> None:
        mask = np.zeros(len(self._cap), dtype=bool)
        mask[routed.inc_link] = True
        for cid in self._express.on_links(mask):
            self._adopt(self._express.flows[cid])

    def _adopt(self, flow: ExpressFlow) -> None:
        """Hand an express flow to the solver with the bytes it has left now (one still in its
        path latency starts later, as any flow, through ``_start``)."""
        self._express.remove(flow.cid)
        self.express_flow_events -= 1
        env = self.env
        if flow.done is None:
            # Whoever waits on the end timeout now waits on the solver's completion instead;
            # the timeout keeps only our own callback (first), which sees the flow is gone.
            later, callbacks = env.event(), flow.callbacks
            later.callbacks.extend(callbacks[1:])
            del callbacks[1:]
            flow.done = later
        if env.now < flow.start_s:
            env.timeout(flow.start_s - env.now).callbacks.append(
                lambda _event: self._start(flow.cid, None, flow.routed, flow.bytes_per_flow,
                                           flow.done, counted=True))
            return
        self._log_express_start(flow)
        self._recording = None          # the solver's flows are no longer one solo coflow
        self._update_clock_only()
        route = flow.route
        left = flow.size_bytes - flow.moved_bytes(self.env.now)
        index = len(self._size)
        self._append_flows(np.array([flow.size_bytes]), np.array([left]),
                           np.array([route.rate_bytes_per_s]), np.array([flow.cid]),
                           np.zeros(1, dtype=np.int64),
                           np.full(len(route.links), index, dtype=np.int64),
                           np.array(route.links, dtype=np.int64), np.array(route.coefs))
        self._coflows[flow.cid] = _Coflow(1, flow.done)
        self._rates_current = False
        self._schedule_change()

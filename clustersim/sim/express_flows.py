"""Lone flows on idle links, run without the max-min solver (exact; event-level).

A flow whose links carry nothing else gets, under max-min fairness, its bottleneck rate
``min(capacity / coefficient)`` for as long as nothing else touches those links: the solver
would compute exactly that. Most point-to-point sends of a pipeline are such flows (each stage
pair has its own links), so the fabric runs them here: one timeout per flow, plain Python on
precomputed tuples, no numpy. When a coflow arrives that shares a link with an express flow, or
an adaptive router reads link rates, the express flow is handed to the solver with exactly the
bytes it has left at that instant (``Fabric._adopt``), and the solver takes over.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy


@dataclass(slots=True)
class ExpressRoute:
    """What the fast path needs of a single-flow route, computed once per route."""

    links: tuple[int, ...]          # solver links (bundles as one link)
    coefs: tuple[float, ...]
    rate_bytes_per_s: float         # alone on its links: min(capacity / coefficient)
    physical: tuple[tuple[int, float], ...]  # (physical link, share of the flow's rate)


@dataclass(slots=True, eq=False)
class ExpressFlow:
    """A flow holding its links from launch; it moves bytes from ``start_s`` (after the path
    latency) and ends ``size_bytes / rate`` later."""

    cid: int
    route: ExpressRoute
    routed: object                  # the RoutedFlows, to restart it if adopted before start_s
    bytes_per_flow: float
    size_bytes: float
    start_s: float
    done: simpy.Event

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
    return ExpressRoute(tuple(links), tuple(coefs), rate, tuple(physical.items()))


class ExpressFlows:
    """The express flows of one fabric and the links they hold."""

    __slots__ = ("flows", "holder")

    def __init__(self) -> None:
        self.flows: dict[int, ExpressFlow] = {}
        self.holder: dict[int, int] = {}  # solver link -> cid of the express flow on it

    def __len__(self) -> int:
        return len(self.flows)

    def free(self, route: ExpressRoute) -> bool:
        holder = self.holder
        return not any(link in holder for link in route.links)

    def add(self, flow: ExpressFlow) -> None:
        self.flows[flow.cid] = flow
        for link in flow.route.links:
            self.holder[link] = flow.cid

    def remove(self, cid: int) -> ExpressFlow | None:
        flow = self.flows.pop(cid, None)
        if flow is not None:
            for link in flow.route.links:
                self.holder.pop(link, None)
        return flow

    def on_links(self, mask) -> list[int]:
        """cids of express flows holding a link where ``mask`` (a bool array) is set."""
        return sorted({cid for link, cid in self.holder.items() if mask[link]})

"""Fabric: links with capacities; transfers are fluid flows that share links max-min fairly.

Fidelity: flow-level (fluid). A transfer of S bytes over a path first waits the path's latency
(the sum of its links' latencies), then drains at the max-min fair rate, which is recomputed
only when a flow starts or ends, so the cost grows with the number of flow events, not with
bytes or simulated time. An uncontended transfer takes ``latency + S / bottleneck capacity``.

Flows that are added at the same simulated instant are solved in one recomputation (a coflow):
a ring step over thousands of ranks is one max-min solve, not thousands.

Routing is injected: ``Router.paths(src, dst, fabric)`` returns one or more (path, fraction)
pairs, so single-path ECMP, packet spraying and k-way splitting are all policies, not engine
code. The engine itself knows nothing of GPUs or switches: endpoints are integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import simpy


@dataclass(frozen=True, slots=True)
class Link:
    """A one-directional link. Full-duplex cables are two links."""

    name: str
    capacity_bytes_per_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity_bytes_per_s <= 0 or self.latency_s < 0:
            raise ValueError(f"link {self.name!r}: capacity must be > 0 and latency >= 0, got "
                             f"{self.capacity_bytes_per_s} B/s and {self.latency_s} s")


Path = tuple[int, ...]  # link indices, in order


class Router(Protocol):
    """Chooses the links a transfer takes. Fractions of one transfer sum to 1."""

    def paths(self, src: int, dst: int, fabric: "Fabric") -> Sequence[tuple[Path, float]]: ...


class _Flow:
    __slots__ = ("links", "remaining", "rate", "done", "size")

    def __init__(self, links: Path, size: float, done: simpy.Event):
        self.links, self.remaining, self.size, self.rate, self.done = links, size, size, 0.0, done


class Fabric:
    """The fluid-flow network of one simulation."""

    def __init__(self, env: simpy.Environment, links: Sequence[Link], router: Router,
                 record_utilisation: bool = True):
        self.env, self.links, self.router = env, list(links), router
        self.capacity = [link.capacity_bytes_per_s for link in self.links]
        self.bytes_carried = [0.0] * len(self.links)
        self.link_rate = [0.0] * len(self.links)
        self.flows: list[_Flow] = []
        self.flow_events = 0            # flow starts + ends, for benchmarks
        self.recomputations = 0
        self._pending: list[_Flow] = []
        self._last_update_s = 0.0
        self._generation = 0
        self._change_scheduled = False
        self.record_utilisation = record_utilisation
        # (time_s, link index, rate_bytes_per_s) whenever a link's aggregate rate changes.
        self.utilisation_log: list[tuple[float, int, float]] = []

    # -- public API --------------------------------------------------------------------------
    def path_latency_s(self, path: Path) -> float:
        return sum(self.links[i].latency_s for i in path)

    def transfer(self, src: int, dst: int, size_bytes: float) -> simpy.Event:
        """An event that fires when ``size_bytes`` from ``src`` have arrived at ``dst``."""
        return self.coflow([(src, dst)], size_bytes)

    def coflow(self, pairs: Sequence[tuple[int, int]], bytes_per_flow: float) -> simpy.Event:
        """Start equal transfers together; the event fires when the last one has arrived."""
        env = self.env
        done = env.event()
        if not pairs:
            done.succeed()
            return done
        routed = [(path, fraction) for src, dst in pairs if src != dst
                  for path, fraction in self.router.paths(src, dst, self)]
        if not routed or bytes_per_flow <= 0:
            # Local copies and empty messages cost only the latency of the longest path.
            latency = max((self.path_latency_s(p) for p, _ in routed), default=0.0)
            env.timeout(latency).callbacks.append(lambda _: done.succeed())
            return done
        latency = max(self.path_latency_s(path) for path, _ in routed)
        counter = [len(routed)]

        def one_done(_event: simpy.Event) -> None:
            counter[0] -= 1
            if counter[0] == 0:
                done.succeed()

        def start(_event: simpy.Event) -> None:
            for path, fraction in routed:
                flow_done = env.event()
                flow_done.callbacks.append(one_done)
                self._pending.append(_Flow(path, bytes_per_flow * fraction, flow_done))
            self._schedule_change()

        if latency > 0:
            env.timeout(latency).callbacks.append(start)
        else:
            start(None)
        return done

    def link_load(self, link: int) -> float:
        """Current aggregate rate on a link (adaptive routing reads this)."""
        return self.link_rate[link]

    # -- fluid model -------------------------------------------------------------------------
    def _schedule_change(self) -> None:
        if not self._change_scheduled:
            self._change_scheduled = True
            self.env.timeout(0).callbacks.append(self._on_change)

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last_update_s
        if dt > 0:
            carried = self.bytes_carried
            for flow in self.flows:
                moved = flow.rate * dt
                flow.remaining -= moved
                for link in flow.links:
                    carried[link] += moved
        self._last_update_s = now

    def _on_change(self, _event: simpy.Event) -> None:
        self._change_scheduled = False
        self._update()

    def _update(self) -> None:
        self._advance()
        finished = [f for f in self.flows if f.remaining <= 1e-9 * f.size + f.rate * 1e-15]
        if finished:
            self.flows = [f for f in self.flows if f.remaining > 1e-9 * f.size + f.rate * 1e-15]
        if self._pending:
            self.flows.extend(self._pending)
            self.flow_events += len(self._pending)
            self._pending = []
        self.flow_events += len(finished)
        self._recompute_rates()
        for flow in finished:
            flow.done.succeed()
        self._schedule_next_completion()

    def _recompute_rates(self) -> None:
        """Max-min fair rates by progressive filling over the links the flows use."""
        self.recomputations += 1
        flows = self.flows
        old_rates = self.link_rate
        new_rates = [0.0] * len(self.links)
        remaining_cap: dict[int, float] = {}
        users: dict[int, list[_Flow]] = {}
        for flow in flows:
            flow.rate = -1.0
            for link in flow.links:
                if link not in users:
                    users[link] = []
                    remaining_cap[link] = self.capacity[link]
                users[link].append(flow)
        active_count = {link: len(fs) for link, fs in users.items()}
        unfixed = len(flows)
        while unfixed:
            shares = {l: remaining_cap[l] / n for l, n in active_count.items() if n}
            share = min(shares.values())
            # Every link whose fair share ties the minimum is a bottleneck in this round; fixing
            # them together makes a symmetric coflow (a ring step) one round, not one per link.
            bottlenecks = [l for l, s in shares.items() if s <= share * (1 + 1e-12)]
            for bottleneck in bottlenecks:
                for flow in users[bottleneck]:
                    if flow.rate >= 0:
                        continue
                    flow.rate = share
                    unfixed -= 1
                    for link in flow.links:
                        remaining_cap[link] -= share
                        active_count[link] -= 1
                        new_rates[link] += share
        self.link_rate = new_rates
        if self.record_utilisation:
            now = self.env.now
            log = self.utilisation_log
            for link in set(users) | {i for i, r in enumerate(old_rates) if r}:
                if new_rates[link] != old_rates[link]:
                    log.append((now, link, new_rates[link]))

    def _schedule_next_completion(self) -> None:
        self._generation += 1
        if not self.flows:
            return
        dt = min(f.remaining / f.rate for f in self.flows)
        generation = self._generation

        def wake(_event: simpy.Event) -> None:
            if generation == self._generation:
                self._update()

        self.env.timeout(max(dt, 0.0)).callbacks.append(wake)

"""A coflow that starts alone on an idle fabric, solved start to end in one go (exact; flow-level).

When a coflow starts on a fabric that carries nothing else, its whole max-min trajectory (the
rates after each flow completion, until the last flow ends) is a function of its flows alone.
The fabric's event loop would find it one completion at a time: a simulation event, an update of
every live flow and its incidences, and a solve per completion. Here the same trajectory is
computed in a tight loop over flow arrays only (incidences are touched only when rates must be
re-solved), with exactly the fabric's arithmetic: the same clock additions, the same completion
tolerance, the same incremental re-solve (``_rates_after``, shared with ``Fabric._solve``). The
result is a ``_Trajectory`` that the fabric replays (``sim/coflow_replay.py``): if another flow
starts meanwhile, the replay is turned back into live flows with exactly the bytes they have
left, and the solver takes over, so the result equals the event loop's (tests: rel 1e-9).

An all-to-all over a leaf-spine fabric with ECMP is the case it is for: each step is a new set
of hashed paths (nothing to replay), about 32k flows at 4096 hosts, 20-30 completion instants.
When its flows all carry the same bytes, not even this is needed: it ends at size / its first
water level, and the trajectory is solved only if the replay is interrupted
(:mod:`clustersim.sim.water_level`; ``level_solves = False`` solves it here at once).
"""

from __future__ import annotations

import numpy as np

from clustersim.sim.coflow_replay import _Trajectory
from clustersim.sim.max_min import _accumulate, _compact, max_min_rates
from clustersim.sim.routed_flows import RoutedFlows
from clustersim.sim.link_load import LinkLoad
from clustersim.sim.water_level import LazyTrajectory, LinkRuns, drain_unit, first_level


def rates_after(capacity: np.ndarray, rate: np.ndarray, departed_rate: float | None,
                inc_flow: np.ndarray, inc_link: np.ndarray, inc_coef: np.ndarray,
                incremental: bool = True) -> np.ndarray | None:
    """Max-min rates of the flows left after a completion (``Fabric._solve``'s rule), or None
    when they are unchanged. After departures only, flows slower than the slowest departed one
    keep their rates: progressive filling below that level never saw the departed flows' links
    saturate, so it runs exactly as before; only the others are re-solved, on the capacity the
    kept flows leave. ``departed_rate`` None (arrivals, or nothing departed): a full solve."""
    kept = None
    if departed_rate is not None and len(rate) and incremental:
        kept = rate < departed_rate * (1 - 1e-9)
        if not kept.any():
            kept = None
    if kept is None:
        return max_min_rates(capacity, len(rate), inc_flow, inc_link, inc_coef)
    if kept.all():
        return None
    inc_kept = kept[inc_flow]
    free = capacity.copy()
    _accumulate(free, inc_link[inc_kept], -inc_coef[inc_kept] * rate[inc_flow[inc_kept]])
    np.maximum(free, 0.0, out=free)
    resolve = ~kept
    index = np.cumsum(resolve) - 1
    inc_resolve = ~inc_kept
    new = rate.copy()
    new[resolve] = max_min_rates(free, int(resolve.sum()), index[inc_flow[inc_resolve]],
                                 inc_link[inc_resolve], inc_coef[inc_resolve])
    return new


def solo_trajectory(capacity: np.ndarray, routed: RoutedFlows, sizes: np.ndarray, start_s: float,
                    incremental: bool = True) -> tuple[_Trajectory, int] | None:
    """The trajectory of ``routed``'s flows (bytes ``sizes``) started together at ``start_s``
    on an otherwise idle fabric, and the number of solves the event loop would make; None when
    a rate is not a positive finite number (flows that cross no link: left to the event loop).

    Mirrors ``Fabric._update``: the next completion is ``min(rem / rate)`` later, the clock is
    ``now + dt`` (as simpy adds it), flows within the fabric's tolerance end together, and the
    rates are re-solved by ``rates_after``. ``segments`` hold (offset, live flows, rates)."""
    count = routed.num_flows
    inc_flow, inc_link, inc_coef = routed.inc_flow, routed.inc_link, routed.inc_coef
    rate = max_min_rates(capacity, count, inc_flow, inc_link, inc_coef)
    if not (np.isfinite(rate).all() and (rate > 0).all()):
        return None
    trajectory = _Trajectory(count)
    live = np.arange(count)
    size = sizes
    rem = sizes.copy()
    solves = 1
    trajectory.segments.append((0.0, live, rate))
    now = start_s
    departed = None
    if incremental:
        state = _constant_rate_events(trajectory, start_s, size, rate)
        if state is None:                   # the last flows ended: no re-solve was due
            return trajectory, solves + len(trajectory.segments)
        live, size, rem, rate, now, departed = state
        solves += len(trajectory.segments) - 1
    while True:
        if departed is not None:
            solves += 1
            new = _resolve(capacity, rate, departed, live, count, inc_flow, inc_link, inc_coef,
                           incremental)
            if new is not None:
                if not (np.isfinite(new).all() and (new > 0).all()):
                    return None
                rate = new
            trajectory.segments.append((now - start_s, live, rate))
        dt = float(np.min(rem / rate))
        then = now + max(dt, 0.0)
        elapsed = then - now
        if elapsed > 0:
            rem = rem - rate * elapsed
        now = then
        tolerance = rate * (elapsed * 1e-12 + now * 1e-15) + size * 1e-15
        finished = rem <= tolerance
        departed = None
        if finished.any():
            departed = float(rate[finished].min())
            if finished.all():
                break
            keep = ~finished
            live, size, rem, rate = live[keep], size[keep], rem[keep], rate[keep]
        else:
            # Nothing ended (clock rounding): the event loop re-solves all from scratch.
            solves += 1
            rate = max_min_rates(capacity, len(live), *_incidences(live, count, inc_flow,
                                                                   inc_link, inc_coef))
            trajectory.segments.append((now - start_s, live, rate))
    solves += 1
    trajectory.duration_s = now - start_s
    return trajectory, solves


def _constant_rate_events(trajectory: _Trajectory, start_s: float, size, rate):
    """The completions of flows 0..n-1 (bytes ``size``, started at ``start_s``) while no
    re-solve is due, all at once (the usual case: flows end fastest first, and a departure
    then frees capacity only where no survivor is limited).

    Flows end at ``start_s + size / rate``; sorted by it, the ones within the event loop's
    tolerance of each other end at one event (the earliest's time; the tolerance is relative
    1e-12, as the fabric's). After each event, survivors keep their rates unless one is at
    least as fast as the slowest departed flow (``rates_after``): there this stops and returns
    (live, size, rem, rate, now, departed rate) at that event for the caller's loop, or None
    when the coflow ended. Segments are appended, each a view of the sorted arrays."""
    duration = size / rate
    end = start_s + duration
    order = np.argsort(end)              # (SIMD quicksort: ~8x the stable sort here)
    end_sorted, rate_sorted, live_sorted = end[order], rate[order], order
    # The fabric's tolerance, rate x (elapsed x 1e-12 + now x 1e-15) + size x 1e-15, in time.
    tolerance = duration[order]
    tolerance *= 1e-12 + 1e-15
    tolerance += end_sorted * 1e-15
    new = np.empty(len(end_sorted), dtype=bool)
    new[0] = True
    np.greater(end_sorted[1:] - end_sorted[:-1], tolerance[1:], out=new[1:])
    starts = np.flatnonzero(new)
    slowest = np.minimum.reduceat(rate_sorted, starts)      # per event, the slowest departed
    fastest_left = np.maximum.accumulate(rate_sorted[::-1])[::-1]
    resolve = np.flatnonzero(fastest_left[starts[1:]] >= slowest[:-1] * (1 - 1e-9))
    last = int(resolve[0]) if len(resolve) else len(starts) - 1
    segments = trajectory.segments
    for event in range(last):
        at, left = float(end_sorted[starts[event]]), starts[event + 1]
        segments.append((at - start_s, live_sorted[left:], rate_sorted[left:]))
    now = float(end_sorted[starts[last]])
    if last == len(starts) - 1:
        trajectory.duration_s = now - start_s
        return None
    left = starts[last + 1]
    rate_left = rate_sorted[left:]
    return (live_sorted[left:], size[order[left:]], rate_left * (end_sorted[left:] - now),
            rate_left, now, float(slowest[last]))


def _incidences(live, count, inc_flow, inc_link, inc_coef):
    index = np.full(count, -1, dtype=np.int64)
    index[live] = np.arange(len(live))
    local = index[inc_flow]
    on = local >= 0
    return local[on], inc_link[on], inc_coef[on]


def _resolve(capacity, rate, departed, live, count, inc_flow, inc_link, inc_coef, incremental):
    """``rates_after`` on the live flows' incidences (extracted only when a solve is due)."""
    if departed is not None and incremental:
        kept = rate < departed * (1 - 1e-9)
        if kept.all():
            return None             # the common case: no incidence is touched
    return rates_after(capacity, rate, departed,
                       *_incidences(live, count, inc_flow, inc_link, inc_coef), incremental)


class SoloCoflows:
    """The one-go solve of ``Fabric`` (mixed into it; uses its flow state and replays)."""

    def _init_solo(self) -> None:
        # Turned off (or ``replay_repeats`` off) the event loop solves every coflow.
        self.solo_solves = True
        self.solo_coflows = 0
        # A solo coflow of equal flows ends at size / first water level (``water_level.py``):
        # its rates are solved only if its replay is observed. Off: solved in one go at once.
        self.level_solves = True
        self._runs = LinkRuns.of(self._cap, self._tier_of)
        # Flows per link of ended one-go coflows, per (first link, stride, links, bytes per
        # flow, order, id of a constant part): integer sums (or [constant part, times
        # added]), turned into bytes when read (``_counted_bytes``).
        self._counts: dict[tuple, np.ndarray | list] = {}

    def _add_load(self, load: LinkLoad, size: float) -> None:
        """Add the bytes an ended coflow of flows of ``size`` bytes left on its links."""
        for first, stride, values, order in load.parts:
            if values.dtype.kind != "i":
                self._carried[first:first + stride * len(values):stride] += \
                    LinkLoad.in_link_order(values, order) * size
                continue
            constant = not values.flags.writeable      # the same array again: count it
            key = (first, stride, len(values), size, order, id(values) if constant else None)
            counts = self._counts.get(key)
            if counts is None:
                if len(self._counts) >= 64:
                    self._counted_bytes(self._carried)
                    self._counts.clear()
                counts = self._counts[key] = [values, 0] if constant else \
                    np.zeros(len(values), dtype=np.int64)
            if constant:
                counts[1] += 1
            else:
                counts += values

    def _counted_bytes(self, carried: np.ndarray) -> None:
        """Add the bytes of the flow counts ``_add_load`` keeps to ``carried``."""
        for (first, stride, length, size, order, constant), counts in self._counts.items():
            if constant is not None:
                counts = counts[0] * counts[1]
            carried[first:first + stride * length:stride] += \
                LinkLoad.in_link_order(counts, order) * size

    def _coflow_unit(self, routed: RoutedFlows) -> np.ndarray:
        """Per tier, the largest bytes / capacity over the coflow's links per byte of each
        flow (``Fabric._record_drain``). A large coflow keeps its per-link sums and their
        maxima per run of links for its one-go solve (``_start_solo`` drops them)."""
        runs = self._runs
        if runs is not None and ("_link_load" in routed.__dict__
                                 or len(routed.inc_link) * 4 >= len(self._cap)):
            # A large coflow: per link over the whole fabric, then the max of each run of
            # links of one tier and capacity (a handful of runs): O(links), no sort.
            load = LinkLoad.of(routed, len(self._cap))
            run_max = load.run_maxima(runs)
            routed.__dict__["_unit_load"] = (load, run_max)     # (frozen dataclass)
            return drain_unit(run_max, runs, len(self.tiers))
        unit = np.zeros(len(self.tiers))
        used, local = _compact(routed.inc_link, len(self._cap))
        load = np.bincount(local, weights=routed.inc_coef * routed.fraction[routed.inc_flow],
                           minlength=len(used))
        np.maximum.at(unit, self._tier_of[used], load / self._cap[used])
        return unit

    def _start_solo(self, cid: int, key, pairs, routed: RoutedFlows, sizes: np.ndarray,
                    size: float, done) -> bool:
        """Run a coflow starting on an idle fabric from its one-go trajectory; False when it
        is left to the event loop."""
        if not (self.solo_solves and self.replay_repeats) or self.record_utilisation:
            return False
        load, run_max = routed.__dict__.pop("_unit_load", (None, None))  # ``_coflow_unit``'s
        level = first_level(self._cap, routed, run_max, self._runs) \
            if self.level_solves else None
        if level is not None:
            # Ends at size / level (``water_level.py``); rates solved only if observed.
            start_s, capacity, incremental = self.env.now, self._cap, self.incremental_solves

            def solve() -> list:
                solved = solo_trajectory(capacity, routed, sizes, start_s, incremental)
                if solved is not None:
                    return solved[0].segments
                return [(0.0, np.arange(routed.num_flows), max_min_rates(
                    capacity, routed.num_flows, routed.inc_flow, routed.inc_link,
                    routed.inc_coef))]

            trajectory = LazyTrajectory(routed.num_flows,
                                        (start_s + float(sizes[0]) / level) - start_s, solve)
            solves = 1
        else:
            solved = solo_trajectory(self._cap, routed, sizes, self.env.now,
                                     self.incremental_solves)
            if solved is None:
                return False
            trajectory, solves = solved
        self.recomputations += solves
        self.solved_flow_events += 2 * routed.num_flows
        self.solo_coflows += 1
        cached = self._route_cache.get(key[0], (None,)) if key is not None else (None,)
        if cached[0] is pairs and cached[1] is routed:
            # What a recording of its run would hold: later repeats replay it.
            per_link = load.dense() * size if load is not None else np.bincount(
                routed.inc_link, weights=routed.inc_coef * sizes[routed.inc_flow],
                minlength=len(self._cap))
            trajectory.links = np.flatnonzero(per_link)
            trajectory.link_bytes = per_link[trajectory.links]
            self._trajectories[key] = (pairs, routed, trajectory)
            while len(self._trajectories) > self._CACHE_ENTRIES:
                self._trajectories.popitem(last=False)
            self._start_replay(cid, trajectory, routed, sizes, done)
            self.replayed_coflows -= 1      # solved, not replayed
            return True
        # Used once: its link bytes are added when it ends, and it is not kept.
        trajectory.one_off = True
        if load is not None:            # bytes added from the load (links None)
            trajectory.links, trajectory.link_load = None, (load, size)
        else:
            trajectory.links = routed.inc_link
            trajectory.link_bytes = routed.inc_coef * sizes[routed.inc_flow]
        self._start_replay(cid, trajectory, routed, sizes, done)
        self.replayed_coflows -= 1
        return True

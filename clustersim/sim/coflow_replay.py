"""Repeated coflows on an idle fabric, replayed instead of re-solved (exact; flow-level).

When a coflow (the same ``pairs`` object and byte count, as a collective step's repeats are)
starts on a fabric that carries nothing else, its whole max-min trajectory is a deterministic
function of its flows. The fabric records the second such run (``_Recording``) and replays later
ones (``_Replay``): one timeout instead of a solve per flow event. If any other flow starts while
a replay runs, the replay is first turned back into live flows with exactly the bytes they
would have left at that instant (``_materialise``), and the solver takes over. Replays count
the link bytes of their recording rather than adding them each time (a ring replays one step
2(n-1) times). This module is the part of :class:`clustersim.sim.fabric.Fabric` that does it;
:mod:`clustersim.sim.relabelled_coflows` replays a recording for *other* coflows whose routes
are the recorded ones on renamed links.
"""

from __future__ import annotations

import numpy as np
import simpy

from clustersim.sim.max_min import _accumulate
from clustersim.sim.routed_flows import _EMPTY_F, _EMPTY_I


class _Coflow:
    __slots__ = ("outstanding", "done")

    def __init__(self, outstanding: int, done: simpy.Event):
        self.outstanding, self.done = outstanding, done


class _Trajectory:
    """A recorded solo run of one coflow: rates per solve, bytes per link, utilisation log."""

    __slots__ = ("duration_s", "segments", "links", "link_bytes", "log", "num_flows", "one_off",
                 "link_load")

    def __init__(self, num_flows: int):
        self.num_flows = num_flows
        # A one-go solve used once (``sim/solo_coflows.py``): ``links`` may repeat (or be None:
        # bytes from ``link_load``, a (``LinkLoad``, bytes per flow)), and its bytes are added
        # to the fabric's when it ends, not counted per recording.
        self.one_off = False
        self.link_load = None
        self.duration_s = 0.0
        # (offset_s, original flow indices still live, their rates) after each solve
        self.segments: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.links = _EMPTY_I
        self.link_bytes = _EMPTY_F
        self.log: list[tuple[float, int, float]] = []


class _Recording:
    __slots__ = ("cid", "key", "pairs", "routed", "start_s", "trajectory")

    def __init__(self, cid, key, pairs, routed, start_s, num_flows):
        self.cid, self.key, self.pairs, self.routed, self.start_s = cid, key, pairs, routed, start_s
        self.trajectory = _Trajectory(num_flows)


class _Replay:
    __slots__ = ("cid", "start_s", "trajectory", "routed", "sizes", "done", "pairs", "renamed")

    def __init__(self, cid, start_s, trajectory, routed, sizes, done, pairs=None, renamed=None):
        self.cid, self.start_s, self.trajectory = cid, start_s, trajectory
        self.routed, self.sizes, self.done = routed, sizes, done
        # Set when the replay is of another coflow's recording (``_relabelled_coflow``): its
        # own routes are computed only if needed (``_routes_of``); ``renamed`` is (the
        # recording's ``_Relabelled``, this coflow's names of its destination links).
        self.pairs, self.renamed = pairs, renamed


class CoflowReplay:
    """Recording and replay of solo coflows; mixed into ``Fabric`` (uses its flow state)."""

    def _start_replay(self, cid, trajectory: _Trajectory, routed, sizes, done) -> None:
        replay = _Replay(cid, self.env.now, trajectory, routed, sizes, done)
        self._replay = replay
        self.replayed_coflows += 1
        self.env.timeout(trajectory.duration_s).callbacks.append(
            lambda _event: self._end_replay(replay))

    def _end_replay(self, replay: _Replay) -> None:
        if self._replay is not replay:
            return                      # materialised: the solver finishes it
        self._replay = None
        trajectory = replay.trajectory
        if replay.renamed is not None:
            self._count_relabelled_bytes(replay)     # relabelled_coflows.py
        elif trajectory.one_off:
            if trajectory.links is None:
                self._add_load(*trajectory.link_load)      # (solo_coflows.py)
            else:
                _accumulate(self._carried, trajectory.links, trajectory.link_bytes)
        else:
            # Counted, not added: a ring replays one step 2(n-1) times, and adding its n links'
            # bytes each time made the replays O(n^2). ``bytes_carried`` folds the counts in.
            count = self._replayed.get(id(trajectory))
            self._replayed[id(trajectory)] = (trajectory, 1 if count is None else count[1] + 1)
        if self.record_utilisation:
            start = replay.start_s
            self.utilisation_log.extend((start + t, link, rate) for t, link, rate in trajectory.log)
        self.flow_events += trajectory.num_flows
        replay.done.succeed()

    def _replay_progress(self, replay: _Replay, tau: float):
        """Bytes moved per flow by offset ``tau``, and the live flows and their rates then."""
        trajectory = replay.trajectory
        moved = np.zeros(trajectory.num_flows)
        segments = trajectory.segments
        live, rates = _EMPTY_I, _EMPTY_F
        for k, (offset, index, seg_rates) in enumerate(segments):
            if offset > tau or offset >= trajectory.duration_s:
                break
            end = segments[k + 1][0] if k + 1 < len(segments) else trajectory.duration_s
            span = min(end, tau) - offset
            if span > 0:
                moved[index] += seg_rates * span
            live, rates = index, seg_rates
        if tau >= trajectory.duration_s:
            live, rates = _EMPTY_I, _EMPTY_F
            moved = replay.sizes.copy()
        return moved, live, rates

    def _materialise(self) -> None:
        """Turn the running replay back into live flows at the current instant."""
        replay, self._replay = self._replay, None
        self.interrupted_replays += 1
        now = self.env.now
        tau = now - replay.start_s
        moved, live, rates = self._replay_progress(replay, tau)
        routed, sizes = self._routes_of(replay), replay.sizes
        finished = np.ones(routed.num_flows, dtype=bool)
        finished[live] = False
        inc_done = finished[routed.inc_flow]
        _accumulate(self._carried, routed.inc_link[inc_done],
                    routed.inc_coef[inc_done] * sizes[routed.inc_flow[inc_done]])
        self.flow_events += int(finished.sum())
        if self.record_utilisation:
            start = replay.start_s
            self.utilisation_log.extend((start + t, link, rate)
                                        for t, link, rate in replay.trajectory.log if t < tau)
        if not len(live):
            replay.done.succeed()
            return
        self._update_clock_only()
        new_index = np.full(routed.num_flows, -1, dtype=np.int64)
        new_index[live] = np.arange(len(live)) + len(self._size)
        inc_live = ~inc_done
        self._append_flows(sizes[live], sizes[live] - moved[live], rates,
                           np.full(len(live), replay.cid), live,
                           new_index[routed.inc_flow[inc_live]], routed.inc_link[inc_live],
                           routed.inc_coef[inc_live])
        self._coflows[replay.cid] = _Coflow(len(live), replay.done)
        if self.record_utilisation:
            self._link_rate = self._physical(self._aggregate_rates())
        self._rates_current = False
        self._schedule_change()

    def _save_recording(self, recording: _Recording) -> None:
        self._recording = None
        trajectory = recording.trajectory
        trajectory.duration_s = self.env.now - recording.start_s
        routed = recording.routed
        sizes = routed.fraction * recording.key[1]
        load = np.bincount(routed.inc_link, weights=routed.inc_coef * sizes[routed.inc_flow],
                           minlength=len(self._cap))
        trajectory.links = np.flatnonzero(load)
        trajectory.link_bytes = load[trajectory.links]
        if self.record_utilisation:
            # The final rates (all zero) are logged after this; add them to the recording.
            physical = np.flatnonzero(self._physical(load))
            trajectory.log.extend((trajectory.duration_s, int(link), 0.0) for link in physical)
        self._trajectories[recording.key] = (recording.pairs, routed, trajectory)
        while len(self._trajectories) > self._CACHE_ENTRIES:
            self._trajectories.popitem(last=False)

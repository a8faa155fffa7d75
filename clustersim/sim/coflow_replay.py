"""Repeated coflows on an idle fabric, replayed instead of re-solved (exact; flow-level).

When a coflow (the same ``pairs`` object and byte count, as a collective step's repeats are)
starts on a fabric that carries nothing else, its whole max-min trajectory is a deterministic
function of its flows. The fabric records the second such run (``_Recording``) and replays later
ones (``_Replay``): one timeout instead of a solve per flow event. If any other flow starts while
a replay runs, the replay is first turned back into live flows with exactly the bytes they
would have left at that instant (``_materialise``), and the solver takes over. Replays count
the link bytes of their recording rather than adding them each time (a ring replays one step
2(n-1) times). This module is the part of :class:`clustersim.sim.fabric.Fabric` that does it.
"""

from __future__ import annotations

import numpy as np
import simpy

from clustersim.sim.max_min import _accumulate
from clustersim.sim.routed_flows import _EMPTY_F, _EMPTY_I, PairArray


class _Coflow:
    __slots__ = ("outstanding", "done")

    def __init__(self, outstanding: int, done: simpy.Event):
        self.outstanding, self.done = outstanding, done


class _Trajectory:
    """A recorded solo run of one coflow: rates per solve, bytes per link, utilisation log."""

    __slots__ = ("duration_s", "segments", "links", "link_bytes", "log", "num_flows")

    def __init__(self, num_flows: int):
        self.num_flows = num_flows
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


class _Relabelled:
    """A solo coflow's recording, offered to later coflows with the same sources whose routes
    are these up to renaming destination-side links (``router.destination_ends``)."""

    __slots__ = ("src", "ends", "sizes", "trajectory", "drain_unit", "latency_s",
                 "destination_bytes", "source_links", "source_bytes", "replays")

    def __init__(self, src, ends, sizes, trajectory, drain_unit, latency_s, num_links):
        self.src, self.ends, self.sizes = src, ends, sizes
        self.trajectory, self.drain_unit, self.latency_s = trajectory, drain_unit, latency_s
        # The recording's bytes per link, split into its destination links (renamed in each
        # replay, in ``ends.representatives`` order) and the rest (the same in every replay).
        per_link = np.zeros(num_links)
        per_link[trajectory.links] = trajectory.link_bytes
        destination = ends.links[ends.representatives]
        self.destination_bytes = per_link[destination]
        per_link[destination] = 0.0
        self.source_links = np.flatnonzero(per_link)
        self.source_bytes = per_link[self.source_links]
        self.replays = 0


class _Ends:
    """One coflow's ``destination_ends`` prepared for comparisons: which entries are links,
    where each link first appears (its equality pattern), its distinct links
    (``representatives``: positions of first appearances) and their classes (capacity,
    latency and tier, numbered by ``link_classes``)."""

    __slots__ = ("plane", "shape", "present", "all_present", "links", "first", "representatives",
                 "classes")

    def __init__(self, plane: np.ndarray, ends: np.ndarray, link_class: np.ndarray):
        self.plane, self.shape = plane, ends.shape
        flat = ends.ravel()
        self.present = flat >= 0
        self.all_present = bool(self.present.all())
        links = self.links = flat if self.all_present else flat[self.present]
        if len(links) <= 512:           # a sample: plain Python beats np.unique's overhead
            seen: dict[int, int] = {}
            self.first = np.array([seen.setdefault(link, i) for i, link in
                                   enumerate(links.tolist())], dtype=np.int64)
            self.representatives = np.fromiter(seen.values(), dtype=np.int64, count=len(seen))
        else:
            _, first, inverse = np.unique(links, return_index=True, return_inverse=True)
            self.first = first[inverse.reshape(-1)]
            self.representatives = np.sort(first)
        self.classes = link_class[links[self.representatives]]

    def signature(self) -> tuple[bytes, ...]:
        """Equal for two coflows' ends exactly when one is a renaming of the other."""
        return (self.plane.tobytes(), self.present.tobytes(), self.first.tobytes(),
                self.classes.tobytes())

    def renaming(self, plane: np.ndarray, ends: np.ndarray, link_class: np.ndarray,
                 mark: np.ndarray) -> np.ndarray | None:
        """When ``ends`` are these up to a one-to-one renaming of links that keeps each link's
        class: the new names of ``links[representatives]``; else None. (``mark``: a bool array
        over all links, all False, left so.)"""
        if ends.shape != self.shape or not np.array_equal(plane, self.plane):
            return None
        flat = ends.ravel()
        present = flat >= 0
        if not np.array_equal(present, self.present):
            return None
        b = flat if self.all_present else flat[present]
        # A function (equal links stay equal): then its values on the representatives are
        # all of them, and it is one to one when those are distinct.
        if not np.array_equal(b[self.first], b):
            return None
        names = b[self.representatives]
        if not np.array_equal(link_class[names], self.classes):
            return None
        mark[names] = True
        distinct = int(np.count_nonzero(mark))
        mark[names] = False
        return names if distinct == len(names) else None


def link_classes(capacity: np.ndarray, latency: np.ndarray, tier: np.ndarray) -> np.ndarray:
    """Per link, a number shared exactly by the links of equal capacity, latency and tier."""
    classes = np.zeros(len(capacity), dtype=np.int64)
    for column in (capacity, latency, tier):
        values, inverse = np.unique(column, return_inverse=True)
        classes = classes * len(values) + inverse.reshape(-1)   # one number per combination
    return classes


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
            # Another coflow's recording on renamed links: the recording's bytes on its
            # destination links go to their new names; its source links are the same links.
            entry, names = replay.renamed
            self._relabelled_carried[names] += entry.destination_bytes
            entry.replays += 1
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

    # -- replays of relabelled coflows -----------------------------------------------------------
    # A pairwise all-to-all's steps are all different pairs, so none repeats; but with routes
    # that split into a source part and a destination part (non-blocking planes, sprayed
    # bundles, ideal trunks), step k and step k + (hosts per leaf) are the same max-min problem
    # up to renaming the destination leaves' links. The router certifies that per pair
    # (``relabels``: same sources, destination-side links mapped one to one onto links of the
    # same capacity, latency and tier, same flow order); the fabric then replays the recording
    # of the first without routing or solving the second. Exact, as the replays of one coflow
    # are. Used for coflows of at least ``_RELABEL_MIN_FLOWS`` pairs on a static router when no
    # utilisation log is kept (the log would name the recorded coflow's links).

    _RELABEL_MIN_FLOWS = 256
    _RELABEL_SAMPLE = 64
    _RELABEL_CANDIDATES = 16       # recordings kept per (pairs, bytes) of a shape

    def _init_relabelled(self) -> None:
        self.relabel_replays = self._static and hasattr(self.router, "destination_ends")
        self.relabelled_coflows = 0
        # (pairs, bytes) -> signature of the first pairs' ends -> recordings
        self._relabelled: dict[tuple[int, float], dict[tuple, list[_Relabelled]]] = {}
        self._relabelled_carried = np.zeros(len(self._cap))  # renamed destination bytes
        self._classes: np.ndarray | None = None   # link_classes of the solver links
        self._scratch: np.ndarray | None = None

    def _relabelled_coflow(self, pairs, bytes_per_flow: float):
        """The coflow's event when it replays a relabelled recording (or will be recorded for
        later ones), else None: the caller launches it as usual."""
        if (not self.relabel_replays or self.record_utilisation or not self.replay_repeats
                or len(pairs) < self._RELABEL_MIN_FLOWS or bytes_per_flow <= 0
                or not isinstance(pairs, (tuple, PairArray))):
            return None
        size = float(bytes_per_flow)
        key = id(pairs)
        own = self._trajectories.get((key, size))
        cached = self._route_cache.get(key)
        if own is not None and own[0] is pairs or cached is not None and cached[0] is pairs:
            return None                 # a repeat (a ring's steps): its own recording serves
        if isinstance(pairs, PairArray):
            src, dst = pairs.arrays()
        else:
            array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            src, dst = array[:, 0], array[:, 1]
        # The first pairs' ends, as a renaming-invariant key, pick the candidates worth a
        # full test (a pairwise all-to-all's steps cycle through a few such shapes).
        k = self._RELABEL_SAMPLE
        sample = self.router.destination_ends(src[:k], dst[:k])
        if sample is None:
            return None                 # routes are not split by ends: nothing to reuse
        key = _Ends(*sample, self._link_class()).signature()
        shapes = self._relabelled.setdefault((len(src), size), {})
        for entry in shapes.get(key, ()):
            if entry.src is src or np.array_equal(entry.src, src):
                # The candidate's own source array: the router reuses what it derived from it.
                full = self.router.destination_ends(entry.src, dst)
                names = self._renaming(entry.ends, full) if full is not None else None
                if names is not None:
                    return self._launch_relabelled(entry, pairs, size, names)
        if sum(map(len, shapes.values())) >= self._RELABEL_CANDIDATES:
            return None
        ends = self.router.destination_ends(src, dst)
        if ends is None:
            return None
        # A new shape: route it now and have its solo run recorded for the steps to come.
        routed = self._routed(pairs)
        if routed is None or routed.num_flows == 0:
            return None
        self._cache_route(id(pairs), pairs, routed, self._idle())
        done = self._launch(pairs, routed, size)
        done.callbacks.append(
            lambda _event: self._offer_recording(pairs, src, ends, key, size, routed))
        return done

    def _renaming(self, ends: _Ends, other) -> np.ndarray | None:
        return ends.renaming(other[0], other[1], self._link_class(), self._scratch)

    def _link_class(self) -> np.ndarray:
        if self._classes is None:
            self._classes = link_classes(self._cap, self._lat, self._tier_of)
            self._scratch = np.zeros(len(self._cap), dtype=bool)
        return self._classes

    def _offer_recording(self, pairs, src, ends, key, size, routed) -> None:
        entry = self._trajectories.get((id(pairs), size))
        if entry is None or entry[0] is not pairs or entry[1] is not routed:
            return                      # it did not run alone: nothing to offer
        shapes = self._relabelled.setdefault((len(src), size), {})
        shapes.setdefault(key, []).append(_Relabelled(
            src, _Ends(*ends, self._link_class()), routed.fraction * size, entry[2],
            routed.__dict__["_drain_unit"], float(routed.latency_s), len(self._cap)))

    def _launch_relabelled(self, entry: _Relabelled, pairs, size: float,
                           names: np.ndarray) -> simpy.Event:
        env = self.env
        done = env.event()
        cid = self._next_cid
        self._next_cid += 1

        def start(_event) -> None:
            if self._idle() and not self._pending and not len(self._express):
                self._drains.append((entry.drain_unit, size))
                self.flow_events += entry.trajectory.num_flows
                self.relabelled_coflows += 1
                replay = _Replay(cid, env.now, entry.trajectory, None, entry.sizes, done, pairs,
                                 (entry, names))
                self._replay = replay
                self.replayed_coflows += 1
                env.timeout(entry.trajectory.duration_s).callbacks.append(
                    lambda _event: self._end_replay(replay))
            else:                       # not alone after all: the solver runs it
                self._start(cid, pairs, self._route_now(pairs), size, done)

        if entry.latency_s > 0:
            env.timeout(entry.latency_s).callbacks.append(start)
        else:
            start(None)
        return done

    def _routes_of(self, replay: _Replay):
        if replay.routed is None:
            replay.routed = self._route_now(replay.pairs)
        return replay.routed

    def _relabelled_bytes(self, carried: np.ndarray) -> None:
        """Add the link bytes of finished relabelled replays."""
        carried += self._relabelled_carried
        for shapes in self._relabelled.values():
            for entries in shapes.values():
                for entry in entries:
                    if entry.replays:
                        carried[entry.source_links] += entry.replays * entry.source_bytes

"""Replays of a solo coflow's recording for other coflows on renamed links (exact; flow-level).

A pairwise all-to-all's steps are all different pairs, so none repeats and
:mod:`clustersim.sim.coflow_replay` never replays them. But where routes split into a source
part and a destination part (NVLink, non-blocking planes, sprayed bundles, ideal trunks, pairs
within a leaf), step k and step k + (hosts per leaf) are the same max-min problem up to renaming
the destination leaves' links. The router certifies that per pair (``destination_ends``: the
links of each route fixed by the destination alone); the fabric checks the same sources, the
same plane per pair, and a one-to-one map of destination links that keeps each link's capacity,
latency and tier (``_Ends.renaming``), and then replays the recording of the first coflow
without routing or solving the second. Exact, as the replays of one coflow are: an interrupted
replay is materialised with the coflow's own routes, and link bytes are added under the new
names. Used for coflows of at least ``_RELABEL_MIN_FLOWS`` pairs on a static router when no
utilisation log is kept (the log would name the recorded coflow's links).
"""

from __future__ import annotations

import numpy as np
import simpy

from clustersim.sim.coflow_replay import _Replay
from clustersim.sim.routed_flows import PairArray


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


class RelabelledCoflows:
    """Replays on renamed links; mixed into ``Fabric`` (uses its flow state and its
    ``CoflowReplay`` recordings)."""

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
        self._last_arrays: tuple = (None, None, None)     # (pairs, src, dst): _arrays_of

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
            src, dst = self._arrays_of(pairs)
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

    def _arrays_of(self, pairs: PairArray) -> tuple[np.ndarray, np.ndarray]:
        """``pairs.arrays()``, built once for the check here and the routing that follows
        (a PairArray built on demand makes them anew at each call; one coflow is kept)."""
        last = self._last_arrays
        if last[0] is not pairs:
            last = self._last_arrays = (pairs, *pairs.arrays())
        return last[1], last[2]

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

    def _count_relabelled_bytes(self, replay: _Replay) -> None:
        """A finished relabelled replay's link bytes: the recording's bytes on its destination
        links go to their new names; its source links are the same links (counted)."""
        entry, names = replay.renamed
        self._relabelled_carried[names] += entry.destination_bytes
        entry.replays += 1

"""The fabric's link-utilisation log and coflow drain list, with express flows' records kept
compactly until someone reads them (exact; bookkeeping only, no model).

An express flow (:mod:`clustersim.sim.express_flows`) adds to the link log, at its end, the
rate of each of its links from its start and a rate of 0 from its end, and to the drain list,
at its launch, its route's drain unit and size. Written eagerly that is a handful of tuples per
send that live to the end of the run, which the garbage collector rescans. Instead each send
appends its plain values to a flat list (its start, its end and its route; its drain unit and
size), and the records are expanded, in the order the sends wrote them, the first time the log
or the drain list is read. Every writer of the log and of the drain list reads it first (they
go through these properties), so pending records always belong at the end of the list: the
expanded list is the eagerly written one, entry for entry.

``utilisation_columns`` reads the log as arrays and expands the pending records with numpy,
without a tuple per record (``Trace.link_columns``, the Chrome trace and the link tables).
``compact_express_records = False`` (tests) writes the records eagerly, as before.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from clustersim.gc_pause import gc_paused


class ExpressLog:
    """``utilisation_log`` and ``_drains`` of ``Fabric`` (mixed into it), expanded on read."""

    compact_express_records = True
    numpy_expansion_from = 64        # pending flows; fewer are expanded in plain Python

    @property
    def utilisation_log(self) -> list[tuple[float, int, float]]:
        """(time_s, link index, rate_bytes_per_s) whenever a link's aggregate rate changes
        (read it again after more simulation: express records are appended as it is read)."""
        if self._express_ends:
            self._expand_express_ends()
        return self._link_log

    @utilisation_log.setter
    def utilisation_log(self, log: list) -> None:
        self._link_log = log
        self._express_ends: list = []  # start_s, end_s, ExpressRoute of each ended express flow

    @property
    def _drains(self) -> list:
        """(drain unit per tier, bytes) of each coflow, in launch order (``coflow_drain_s``)."""
        if self._express_drains:
            self._expand_express_drains()
        return self._drain_list

    @_drains.setter
    def _drains(self, drains: list) -> None:
        self._drain_list = drains
        self._express_drains: list = []  # drain unit, bytes of each launched express flow

    def _log_express_end(self, start_s: float, end_s: float, route) -> None:
        """Write the link records of an express flow now (``compact_express_records`` off;
        otherwise the flow appends ``start_s, end_s, route`` to ``_express_ends``)."""
        self.utilisation_log.extend(_express_records(start_s, end_s, route))

    def utilisation_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``utilisation_log`` as arrays: time_s, link index (int64), rate_bytes_per_s."""
        table = np.asarray(self._link_log, dtype=float).reshape(-1, 3)
        columns = table[:, 0], table[:, 1].astype(np.int64), table[:, 2]
        if not self._express_ends:
            return columns
        pending = _express_columns(self._express_ends)
        return tuple(np.concatenate([a, b]) for a, b in zip(columns, pending))

    def _expand_express_ends(self) -> None:
        ends, self._express_ends = self._express_ends, []
        log = self._link_log
        if len(ends) < 3 * self.numpy_expansion_from:
            # A few flows (a solver writes between sends): as they were written eagerly.
            for index in range(0, len(ends), 3):
                log.extend(_express_records(ends[index], ends[index + 1], ends[index + 2]))
            return
        time_s, link, rate = _express_columns(ends)
        with gc_paused():  # a tuple per record, no cycles
            log.extend(zip(time_s.tolist(), link.tolist(), rate.tolist()))

    def _expand_express_drains(self) -> None:
        drains, self._express_drains = self._express_drains, []
        self._drain_list.extend(zip(drains[::2], drains[1::2]))


def _express_records(start_s: float, end_s: float, route):
    """An express flow on ``route`` from ``start_s`` to ``end_s``: each of its links at its
    rate from the start, then each at 0 from the end (eagerly written records; the compact
    ones expand to the same through ``_express_columns``)."""
    links = route.physical_links
    yield from zip(repeat(start_s), links, route.physical_rates)
    yield from zip(repeat(end_s), links, repeat(0.0))


def _express_columns(ends: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_express_records`` of every (start_s, end_s, route) in ``ends``, in order, as arrays."""
    starts, stops = np.array(ends[0::3], dtype=float), np.array(ends[1::3], dtype=float)
    index_of: dict = {}
    route_of = np.array([index_of.setdefault(route, len(index_of)) for route in ends[2::3]],
                        dtype=np.int64)
    routes = list(index_of)
    width = np.array([len(route.physical_links) for route in routes], dtype=np.int64)
    first_slot = np.cumsum(width) - width        # of each route in the flat link tables
    links = np.array([link for route in routes for link in route.physical_links], dtype=np.int64)
    rates = np.array([rate for route in routes for rate in route.physical_rates], dtype=float)
    # Each flow's rows: its links at their rates from its start, then at 0 from its end.
    k = width[route_of]
    rows = 2 * k
    flow = np.repeat(np.arange(len(route_of)), rows)
    within = np.arange(int(rows.sum())) - (np.cumsum(rows) - rows)[flow]
    at_start = within < k[flow]
    slot = first_slot[route_of][flow] + np.where(at_start, within, within - k[flow])
    return (np.where(at_start, starts[flow], stops[flow]), links[slot],
            np.where(at_start, rates[slot], 0.0))

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

``compact_express_records = False`` (tests) writes the records eagerly, as before.
"""

from __future__ import annotations

from itertools import repeat


class ExpressLog:
    """``utilisation_log`` and ``_drains`` of ``Fabric`` (mixed into it), expanded on read."""

    compact_express_records = True

    @property
    def utilisation_log(self) -> list[tuple[float, int, float]]:
        """(time_s, link index, rate_bytes_per_s) whenever a link's aggregate rate changes."""
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

    def _expand_express_ends(self) -> None:
        ends, self._express_ends = self._express_ends, []
        log = self._link_log
        for index in range(0, len(ends), 3):
            log.extend(_express_records(ends[index], ends[index + 1], ends[index + 2]))

    def _expand_express_drains(self) -> None:
        drains, self._express_drains = self._express_drains, []
        self._drain_list.extend(zip(drains[::2], drains[1::2]))


def _express_records(start_s: float, end_s: float, route):
    """An express flow on ``route`` from ``start_s`` to ``end_s``: each of its links at its
    rate from the start, then each at 0 from the end."""
    links = route.physical_links
    yield from zip(repeat(start_s), links, route.physical_rates)
    yield from zip(repeat(end_s), links, repeat(0.0))

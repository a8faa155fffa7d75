"""A coflow's load per link (its flows' coefficient x fraction summed per solver link), held as a
few dense ranges of links rather than one array over the whole fabric.

Exact bookkeeping, no model: bytes per link per byte of a flow, from which the fabric takes each
tier's drain time, the first water level (``water_level.py``) and the bytes a finished coflow
leaves on its links. A router that knows where its links lie may hand the load over with the
routes (``RoutedFlows`` attribute ``_link_load``: an all-to-all step at 4096 hosts counts 32k
uplinks, 32k downlinks and 32k NICs instead of summing 131k incidences over 196k links);
otherwise it is one ``bincount`` over all links.
"""

from __future__ import annotations

import numpy as np

from clustersim.sim.routed_flows import RoutedFlows


class LinkLoad:
    """Load per solver link as ``parts``: (first link, stride, values, order) each, the values
    of links ``first, first + stride, ...`` (integer counts or floats; parts cover disjoint
    links). ``order`` is None when the values are in link order, else (shape, axes):
    in link order they are ``values.reshape(shape).transpose(axes).ravel()`` (a router may
    count in an order that keeps its writes local, e.g. downlinks by destination leaf; maxima
    and sums do not care, bytes are put in link order when read). Read-only values are taken
    as constants: a router may hand the same array to many coflows (the NIC up links of one
    source array), whose maximum and sums are then kept per array, not recomputed."""

    __slots__ = ("parts", "num_links")

    def __init__(self, parts: list[tuple], num_links: int):
        self.parts = [part if len(part) == 4 else (*part, None) for part in parts]
        self.num_links = num_links

    @staticmethod
    def in_link_order(values: np.ndarray, order: tuple | None) -> np.ndarray:
        if order is None:
            return values
        shape, axes = order
        return values.reshape(shape).transpose(axes).ravel()

    @staticmethod
    def of(routed: RoutedFlows, num_links: int) -> "LinkLoad":
        """The router's load of ``routed`` when it gave one, else the sums over incidences
        (as ``Fabric._record_drain`` computes them; when every flow carries the whole pair
        (fraction 1) without a per-incidence gather)."""
        given = routed.__dict__.get("_link_load")
        if given is not None and given.num_links == num_links:
            return given
        fraction = routed.fraction
        if len(fraction) and fraction[0] == 1.0 and fraction.min() == fraction.max():
            weights = routed.inc_coef      # coef x 1.0 is coef: the same sums
        else:
            weights = routed.inc_coef * fraction[routed.inc_flow]
        return LinkLoad([(0, 1, np.bincount(routed.inc_link, weights=weights,
                                            minlength=num_links))], num_links)

    def run_maxima(self, runs) -> np.ndarray:
        """The largest load in each run of links (``water_level.LinkRuns``: runs begin at
        ``runs.starts``, the first at 0; ``runs.part_run`` caches which run a part lies in)."""
        starts = runs.starts
        out = np.zeros(len(starts))
        for first, stride, values, order in self.parts:
            if not len(values):
                continue
            if first == 0 and stride == 1 and len(values) == self.num_links:
                np.maximum(out, np.maximum.reduceat(values, starts), out=out)
                continue
            key = (first, stride, len(values))
            run = runs.part_run.get(key)
            if run is None:
                last = first + stride * (len(values) - 1)
                run, run_last = (np.searchsorted(starts, [first, last], side="right") - 1).tolist()
                run = runs.part_run[key] = run if run == run_last else -1
            if run >= 0:                    # the usual case: a part inside one run, any order
                top = runs.constant_top(values)
                if top > out[run]:
                    out[run] = top
            else:
                links = first + stride * np.arange(len(values))
                np.maximum.at(out, np.searchsorted(starts, links, side="right") - 1,
                              self.in_link_order(values, order))
        return out

    def add_to(self, target: np.ndarray, scale: float) -> None:
        """``target += scale x load`` (bytes per link of flows of ``scale`` bytes)."""
        for first, stride, values, order in self.parts:
            target[first:first + stride * len(values):stride] += \
                self.in_link_order(values, order) * scale

    def dense(self) -> np.ndarray:
        out = np.zeros(self.num_links)
        self.add_to(out, 1.0)
        return out

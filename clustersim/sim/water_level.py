"""When a coflow of equal flows starts alone on an idle fabric, it ends at size / first water level.

Fidelity: flow-level (fluid), exact. A coflow of n flows of S bytes each, started together on a
fabric that carries nothing else, shares the links max-min fairly. Progressive filling raises
all flows together until the first link saturates, at the *first water level*
``x = min over links of capacity / (sum of the coefficients of the flows that cross it)``; the
flows of that link get x, every other flow gets at least x. So the slowest flows run at x and
end at ``S / x``. No flow's rate changes before then: when flows end (the fastest first, all of
one size), each survivor is slower than every departed flow, so no departed flow crossed the
link that limits it (there it has the largest rate), and that link stays saturated by the same
flows: the max-min rates of the survivors are their old rates (the fabric's incremental rule,
``solo_coflows.rates_after``, re-solves nothing). The coflow thus ends exactly at ``start + S /
x``, computed with the arithmetic of the event loop (``start + size / rate``), and its bytes per
link are S times the number of its flows on the link (times their coefficients).

So the step's outcome needs no max-min solve: one weighted count per link and a minimum
(``first_level``). The solve itself is deferred: the fabric runs the coflow as a replay whose
trajectory (``LazyTrajectory``) is solved by ``solo_trajectory`` only if the replay is observed
or interrupted (another flow starts, ``num_flows`` is read), so the rates then are the solver's.
Event times may differ from the full one-go solve by float rounding only (where the solver's
rates of two levels that are equal in exact arithmetic differ in the last bits, the event loop
groups them within its 1e-12 tolerance): rel ~1e-15, tested at 1e-12 against both the one-go
solve and the event loop (``tests/test_fabric_water_level.py``).

The per-link sums also give each tier's drain time (``coflow_drain_s``): maxima over runs of
links of one tier and one capacity (``LinkRuns``), divided once per run.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from clustersim.sim.coflow_replay import _Trajectory
from clustersim.sim.routed_flows import RoutedFlows


class LinkRuns:
    """The fabric's solver links as runs of one tier and one capacity (NICs, switch links,
    NVLink, bundles), for per-run maxima by ``reduceat``: ``starts`` (first link of each run),
    ``tier`` and ``capacity`` per run. ``None`` from ``of`` when the runs are too many."""

    __slots__ = ("starts", "tier", "capacity", "part_run", "_tops")

    def __init__(self, starts: np.ndarray, tier: np.ndarray, capacity: np.ndarray):
        self.starts, self.tier, self.capacity = starts, tier, capacity
        self.part_run: dict[tuple[int, int, int], int] = {}    # (LinkLoad.run_maxima)
        self._tops: dict[tuple[int, str], tuple] = {}     # (id, what) -> (array, value)

    def constant_top(self, values: np.ndarray):
        """``values.max()``, kept for read-only arrays (constants, see ``LinkLoad``)."""
        return self._constant(values, np.max, "max")

    def constant_uniform(self, values: np.ndarray) -> bool:
        """Whether all ``values`` are equal, kept for read-only arrays (a router's shared
        fractions of 1)."""
        return self._constant(values, _uniform, "uniform")

    def _constant(self, values: np.ndarray, function, name: str):
        if values.flags.writeable:
            return function(values)
        key = (id(values), name)
        entry = self._tops.get(key)
        if entry is None or entry[0] is not values:
            if len(self._tops) >= 16:
                self._tops.clear()
            entry = self._tops[key] = (values, function(values))
        return entry[1]

    @staticmethod
    def of(capacity: np.ndarray, tier_of: np.ndarray, most: int = 256) -> "LinkRuns | None":
        if not len(capacity):
            return None
        change = (np.diff(capacity) != 0) | (np.diff(tier_of) != 0)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1])
        if len(starts) > most:
            return None
        return LinkRuns(starts, tier_of[starts], capacity[starts])


def drain_unit(run_max: np.ndarray, runs: LinkRuns, num_tiers: int) -> np.ndarray:
    """Per tier, the largest load / capacity over its links: per run the largest load over the
    run's (single) capacity, the same number as the largest quotient (division by a positive
    number is monotone in floating point too)."""
    unit = np.zeros(num_tiers)
    np.maximum.at(unit, runs.tier, run_max / runs.capacity)
    return unit


def first_level(capacity: np.ndarray, routed: RoutedFlows, run_max: np.ndarray | None = None,
                runs: LinkRuns | None = None) -> float | None:
    """The first water level of the coflow's flows alone on the fabric (the rate of its
    slowest flows): the least capacity / (sum of coefficients) over the links it crosses,
    exactly as ``max_min_rates`` computes that level. None when the flows do not all carry
    the same bytes (then later levels decide when it ends) or the level is not a positive
    finite number. ``run_max``: the largest ``LinkLoad`` of the coflow in each of the
    ``runs`` (used when every flow's fraction is 1: the load is then the sum of coefficients).
    """
    fraction = routed.fraction
    if not len(fraction) or not (runs.constant_uniform(fraction) if runs is not None
                                 else _uniform(fraction)):
        return None
    if fraction[0] != 1.0:
        run_max = None
    if run_max is not None and runs is not None:
        used = run_max > 0
        if not used.any():
            return None
        level = float(np.min(runs.capacity[used] / run_max[used]))
    else:
        if len(routed.inc_link) * 16 < len(capacity):
            links, local = np.unique(routed.inc_link, return_inverse=True)
            weight = np.bincount(local.reshape(-1), weights=routed.inc_coef)
            level = float(np.min(capacity[links] / weight)) if len(links) else np.inf
            return level if 0 < level < np.inf else None
        load = np.bincount(routed.inc_link, weights=routed.inc_coef, minlength=len(capacity))
        used = np.flatnonzero(load)
        if not len(used):
            return None
        level = float(np.min(capacity[used] / load[used]))
    return level if 0 < level < np.inf else None


def _uniform(values: np.ndarray) -> bool:
    return bool(values.min() == values.max())


class LazyTrajectory(_Trajectory):
    """A solo coflow's trajectory whose end is known (``duration_s``, from ``first_level``) and
    whose rates are solved (``solve()`` -> segments) only when its ``segments`` are first read."""

    __slots__ = ("_solve",)

    def __init__(self, num_flows: int, duration_s: float, solve: Callable[[], list]):
        super().__init__(num_flows)
        self.duration_s = duration_s
        self._solve = solve

    @property
    def segments(self) -> list:
        if self._solve is not None:
            solve, self._solve = self._solve, None
            _Trajectory.segments.__set__(self, solve())
        return _Trajectory.segments.__get__(self)

    @segments.setter
    def segments(self, value: list) -> None:
        _Trajectory.segments.__set__(self, value)

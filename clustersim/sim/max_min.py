"""Max-min fair rates of flows over links, by vectorised progressive filling (water-filling).

The fabric's solver, kept apart so that it can be tested and reused on its own: flows, links
and the coefficient of each (flow, link) incidence go in as numpy arrays, rates come out.
"""

from __future__ import annotations

import numpy as np


def max_min_rates(capacity: np.ndarray, num_flows: int, inc_flow: np.ndarray,
                  inc_link: np.ndarray, inc_coef: np.ndarray) -> np.ndarray:
    """Max-min fair flow rates by parallel water-filling, vectorised over incidences.

    Progressive filling raises all unfixed flows together; a link saturates when its remaining
    capacity equals the sum of its unfixed flows' coefficients times their common rate, its
    *share*. Fixing a flow at a level at or below the shares of all its links never lowers any
    share, so every link whose share is the smallest among the links of all its flows is a
    bottleneck now, at its own share: each round fixes all of them at once, not only the
    global minimum (ties within 1e-12). A link that only one flow crosses is folded into that
    flow's own cap (a NIC, an uncontended uplink), so rounds touch only shared links. A round
    costs O(flows + shared incidences left); a symmetric coflow takes one round.
    """
    rate = np.zeros(num_flows)
    if not num_flows:
        return rate
    if len(inc_flow) <= _SMALL_INCIDENCES:
        return _max_min_small(capacity, num_flows, inc_flow, inc_link, inc_coef)
    link_count = None
    if len(inc_link) * 16 < len(capacity):
        # A small coflow on a large fabric: number its links locally, O(its incidences).
        used, local = np.unique(inc_link, return_inverse=True)
        local = local.reshape(-1)
        private = np.bincount(local)[local] == 1
    else:
        link_count = np.bincount(inc_link, minlength=len(capacity))
        private = link_count[inc_link] == 1
    flow_cap = np.full(num_flows, np.inf)
    if private.any():
        # Over all incidences (shared ones as inf): cheaper than three boolean selections.
        np.minimum.at(flow_cap, inc_flow,
                      np.where(private, capacity[inc_link] / inc_coef, np.inf))
    shared = np.flatnonzero(~private)
    flows, coef, shared_links = inc_flow[shared], inc_coef[shared], inc_link[shared]
    if link_count is None:
        used, local = _compact(shared_links, len(capacity))
        count = None
    else:
        # The shared links are those with two incidences or more, all of them shared.
        used = np.flatnonzero(link_count >= 2)
        index = np.empty(len(capacity), dtype=np.int64)
        index[used] = np.arange(len(used))
        local = index[shared_links]
        count = link_count[used]
    n_links = len(used)
    cap_rem = capacity[used].astype(float)
    weight = np.bincount(local, weights=coef, minlength=n_links)
    if count is None:
        count = np.bincount(local, minlength=n_links)
    fixed_flow = np.zeros(num_flows, dtype=bool)
    unfixed = num_flows
    ids = None      # flow numbers of the (compacted) local flows; None: the same
    tolerance = 1 + 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        while unfixed:
            share = cap_rem / weight
            share[count <= 0] = np.inf
            lowest = np.where(fixed_flow, np.inf, flow_cap)    # per flow: min share on its path
            np.minimum.at(lowest, flows, share[local])
            if not np.isfinite(lowest[~fixed_flow]).any():
                # flows that cross no link arrive at once
                rate[_global(ids, ~fixed_flow)] = np.inf
                break
            link_lowest = np.full(n_links, np.inf)
            np.minimum.at(link_lowest, local, lowest[flows])
            bottleneck = (share <= link_lowest * tolerance) & (count > 0)
            newly = np.zeros(len(fixed_flow), dtype=bool)
            newly[flows[bottleneck[local]]] = True
            newly |= ~fixed_flow & (flow_cap <= lowest * tolerance)
            rate[_global(ids, newly)] = lowest[newly]
            fixed_flow |= newly
            unfixed -= int(newly.sum())
            fixed = newly[flows]
            if fixed.any():
                fixed_links = local[fixed]
                fixed_coef = coef[fixed]
                cap_rem -= np.bincount(fixed_links, weights=fixed_coef * lowest[flows[fixed]],
                                       minlength=n_links)
                weight -= np.bincount(fixed_links, weights=fixed_coef, minlength=n_links)
                count -= np.bincount(fixed_links, minlength=n_links)
                keep = ~fixed
                flows, local, coef = flows[keep], local[keep], coef[keep]
            if unfixed and unfixed * 4 < len(fixed_flow):
                # Most flows are fixed after the first round: later rounds work on the rest.
                active = np.flatnonzero(~fixed_flow)
                renumber = np.full(len(fixed_flow), -1, dtype=np.int64)
                renumber[active] = np.arange(len(active))
                flows = renumber[flows]
                flow_cap = flow_cap[active]
                ids = active if ids is None else ids[active]
                fixed_flow = np.zeros(len(active), dtype=bool)
    return rate


def _global(ids: np.ndarray | None, mask: np.ndarray):
    """Flow numbers where ``mask`` (over local flows) is set: the mask itself without ids."""
    return mask if ids is None else ids[mask]


# Below this many incidences plain Python beats numpy's per-call overhead (a pipeline's few
# point-to-point sends are re-solved at every flow event).
_SMALL_INCIDENCES = 64


def _max_min_small(capacity: np.ndarray, num_flows: int, inc_flow: np.ndarray,
                   inc_link: np.ndarray, inc_coef: np.ndarray) -> np.ndarray:
    """The same water-filling as ``max_min_rates`` in plain Python, for a handful of flows."""
    members: dict[int, list[tuple[int, float]]] = {}
    paths: list[list[tuple[int, float]]] = [[] for _ in range(num_flows)]
    for flow, link, coef in zip(inc_flow.tolist(), inc_link.tolist(), inc_coef.tolist()):
        members.setdefault(link, []).append((flow, coef))
        paths[flow].append((link, coef))
    remaining = {link: float(capacity[link]) for link in members}
    weight = {link: sum(c for _, c in flows) for link, flows in members.items()}
    rate: list[float | None] = [None] * num_flows
    unfixed = num_flows
    while unfixed:
        shares = {link: remaining[link] / w for link, w in weight.items() if w > 0}
        if not shares:
            break
        level = min(shares.values())
        for link, share in shares.items():
            if share > level * (1 + 1e-12):
                continue
            for flow, _ in members[link]:
                if rate[flow] is not None:
                    continue
                rate[flow] = level
                unfixed -= 1
                for other, coef in paths[flow]:
                    remaining[other] -= coef * level
                    weight[other] -= coef
        weight = {link: w for link, w in weight.items() if w > 1e-12}
    return np.array([np.inf if r is None else r for r in rate])


def _accumulate(target: np.ndarray, links: np.ndarray, weights: np.ndarray) -> None:
    """``target[links] += weights`` with repeats summed, in O(len(links)) when they are few."""
    if len(links) * 16 < len(target):
        np.add.at(target, links, weights)
    else:
        target += np.bincount(links, weights=weights, minlength=len(target))


def _compact(inc_link: np.ndarray, num_links: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct links and each incidence's index among them (``np.unique(...,
    return_inverse=True)``): a sort for few incidences, O(E + L) marking for many."""
    if len(inc_link) * 16 < num_links:
        used, inverse = np.unique(inc_link, return_inverse=True)
        return used, inverse.reshape(-1)
    present = np.zeros(num_links, dtype=bool)
    present[inc_link] = True
    used = np.flatnonzero(present)
    index = np.empty(num_links, dtype=np.int64)
    index[used] = np.arange(len(used))
    return used, index[inc_link]

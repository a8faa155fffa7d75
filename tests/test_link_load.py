"""Link loads as ranges (``sim/link_load.py``) and the drain per tier from them: the same numbers
as summing every incidence and dividing link by link (conservation of bytes per link)."""

import numpy as np
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.sim.fabric import Fabric, Link
from clustersim.sim.link_load import LinkLoad
from clustersim.sim.routed_flows import RoutedFlows
from clustersim.sim.water_level import LinkRuns


class _NoRouter:
    static = True

    def paths(self, src, dst, fabric):
        raise AssertionError("not routed here")


def _fabric(capacities, tiers):
    links = [Link(f"l{i}", c, 0.0, t) for i, (c, t) in enumerate(zip(capacities, tiers))]
    return Fabric(simpy.Environment(), links, _NoRouter(), record_utilisation=False)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), runs=st.integers(1, 5), flows=st.integers(1, 40))
def test_drain_per_tier_is_the_largest_bytes_over_capacity(data, runs, flows):
    capacities, tiers = [], []
    for run in range(runs):                  # runs of links of one tier and capacity
        size = data.draw(st.integers(1, 6))
        capacities += [data.draw(st.sampled_from([1e9, 2e9, 5e9]))] * size
        tiers += [data.draw(st.sampled_from(["nic", "spine", "nvlink"]))] * size
    fabric = _fabric(capacities, tiers)
    links = len(capacities)
    inc_flow, inc_link, inc_coef = [], [], []
    for flow in range(flows):
        path = data.draw(st.lists(st.integers(0, links - 1), min_size=1, max_size=3, unique=True))
        coef = data.draw(st.sampled_from([1.0, 0.5]))
        inc_flow += [flow] * len(path)
        inc_link += path
        inc_coef += [coef] * len(path)
    fraction = np.array(data.draw(st.lists(st.sampled_from([1.0, 0.5, 0.25]), min_size=flows,
                                           max_size=flows)))
    routed = RoutedFlows(np.arange(flows), fraction, np.array(inc_flow), np.array(inc_link),
                         np.array(inc_coef), 0.0)
    load = np.zeros(links)
    for flow, link, coef in zip(inc_flow, inc_link, inc_coef):
        load[link] += coef * fraction[flow]
    expected = {tier: max(load[i] / capacities[i] for i in range(links) if tiers[i] == tier)
                for tier in set(tiers)}
    unit = fabric._coflow_unit(routed)
    for index, tier in enumerate(fabric.tiers):
        np.testing.assert_allclose(unit[index], expected[tier], rtol=1e-12)


def test_parts_in_any_order_and_across_runs_give_the_link_sums():
    capacity = np.array([1.0] * 4 + [2.0] * 4 + [3.0] * 4)
    runs = LinkRuns.of(capacity, np.zeros(12, dtype=np.int64))
    counts = np.array([3, 1, 4, 1, 5, 9])                  # (2, 3) counted leaf-major
    load = LinkLoad([(0, 2, np.array([1, 2])),                # links 0, 2
                     (5, 1, counts, ((2, 3), (1, 0))),        # links 5..10 in link order
                     (1, 10, np.array([7, 2]))], 12)          # links 1, 11: across runs
    dense = np.zeros(12)
    dense[[0, 2]] += [1, 2]
    dense[5:11] += counts.reshape(2, 3).T.ravel()
    dense[[1, 11]] += [7, 2]
    np.testing.assert_array_equal(load.dense(), dense)
    np.testing.assert_array_equal(load.run_maxima(runs),
                                  [dense[0:4].max(), dense[4:8].max(), dense[8:12].max()])
    target = np.ones(12)
    load.add_to(target, 0.5)
    np.testing.assert_array_equal(target, 1 + 0.5 * dense)


def test_ended_coflows_bytes_are_kept_as_counts_and_constants_by_repeats():
    fabric = _fabric([1e9] * 6, ["nic"] * 6)
    constant = np.array([1, 1, 0])
    constant.flags.writeable = False
    for size in (2.0, 2.0, 3.0):
        fabric._add_load(LinkLoad([(0, 2, constant), (1, 2, np.array([0, 2, 1]))], 6), size)
    fabric._add_load(LinkLoad([(0, 1, np.linspace(0, 1, 6))], 6), 10.0)   # floats: at once
    expected = np.zeros(6)
    expected[[0, 2, 4]] += constant * 7.0
    expected[[1, 3, 5]] += np.array([0, 2, 1]) * 7.0
    expected += np.linspace(0, 1, 6) * 10.0
    np.testing.assert_allclose(fabric.bytes_carried, expected, rtol=1e-15)

"""ECMP from per-port tables (``hardware/network/hashed_routes.py``) gives the general router's
routes bit for bit: links, flows, coefficients, fractions and latency, on leaf-spine planes of
many shapes (parallel uplinks, oversubscription, rail-optimised wiring), for rail steps and
random pairs (inside nodes and leaves too, which it leaves to the general router)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.hardware.network import NodeFabric, build_network
from clustersim.hardware.network.hashed_routes import HashedLeafSpine


def _router(hosts, gpus, hosts_per_leaf, spines, seed, rail_optimized=False, uplinks=None,
            nics=None):
    nodes = NodeFabric(num_nodes=hosts, gpus_per_node=gpus, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.5e-6, nic_bandwidth_bytes_per_s=50e9,
                       nic_latency_s=2.7e-6, nics_per_node=nics)
    config = {"kind": "leaf_spine", "hosts_per_leaf": hosts_per_leaf, "spines": spines,
              "routing": "ecmp", "rail_optimized": rail_optimized, "hop_latency": "0.3 us"}
    if uplinks is not None:
        config["leaf_uplinks"] = uplinks
    return build_network(config, nodes=nodes, rng=np.random.default_rng(seed))[1]


def _same_routes(router, src, dst):
    router.fast_routes = True
    fast = router.route(src, dst, None)
    fast_ends = router.destination_ends(src, dst)
    router.fast_routes = False
    general = router.route(src, dst, None)
    general_ends = router.destination_ends(src, dst)
    router.fast_routes = True
    assert (fast_ends is None) == (general_ends is None)
    if fast_ends is not None:
        for a, b in zip(fast_ends, general_ends):
            np.testing.assert_array_equal(a, b)
    for field in ("pair", "fraction", "inc_flow", "inc_link", "inc_coef"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(general, field), field)
    assert fast.latency_s == general.latency_s
    load = fast.__dict__.get("_link_load")
    if load is not None:                # counted where the links lie: the incidences' sums
        np.testing.assert_array_equal(
            load.dense(), np.bincount(general.inc_link, minlength=len(router._latency)))


@settings(max_examples=25, deadline=None)
@given(leaves=st.integers(2, 6), hosts_per_leaf=st.integers(1, 3),
       gpus=st.sampled_from([1, 2, 4]), spines=st.sampled_from([1, 2, 3, 4]),
       parallel=st.sampled_from([1, 2, 3]), rail=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_ecmp_routes_are_the_general_routers(leaves, hosts_per_leaf, gpus, spines,
                                                  parallel, rail, seed):
    hosts = leaves * hosts_per_leaf
    router = _router(hosts, gpus, hosts_per_leaf, spines, seed, rail_optimized=rail,
                     uplinks=spines * parallel)
    n = hosts * gpus
    ranks = np.arange(n)
    for shift in range(1, hosts):       # the rail steps of an all-to-all, one source array
        _same_routes(router, ranks, np.roll(ranks, -shift * gpus))
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, 40)
    dst = (src + rng.integers(1, n, 40)) % n if n > 1 else src
    _same_routes(router, src, dst)      # pairs inside nodes and leaves among them
    assert isinstance(router._hashed, HashedLeafSpine)


def test_fast_ecmp_is_taken_for_rail_steps_and_not_for_other_planes():
    router = _router(16, 4, 2, 4, 1)
    ranks = np.arange(64)
    routed = router.route(ranks, np.roll(ranks, -8), None)
    assert router._hashed is not None and routed.inc_flow.flags.writeable is False
    # Two NICs for four GPUs: ports are not GPUs, so the general router serves.
    other = _router(16, 4, 2, 4, 1, nics=2)
    other.route(ranks, np.roll(ranks, -8), None)
    assert other._hashed is None


def test_fast_ecmp_latency_when_links_of_a_kind_differ():
    router = _router(8, 2, 2, 2, 7)
    plane = router.network.planes[0]
    latency = router._latency.copy()
    latency[plane._up_offset + 1] += 1e-6            # one uplink slower than the others
    fast = HashedLeafSpine(plane, router.salt, latency, 2)
    assert fast.uniform_latency is None
    ranks = np.arange(16)
    for shift in range(2, 7):           # pairs between leaves (two hosts per leaf)
        routed = fast.route(ranks, np.roll(ranks, -2 * shift))
        paths = latency[routed.inc_link].reshape(-1, 4)
        expected = max((((p[0] + p[1]) + p[2]) + p[3]) for p in paths.tolist())
        assert routed.latency_s == expected


def test_route_distinct_leaves_local_pairs_to_the_fabric():
    router = _router(8, 2, 2, 2, 3)
    ranks = np.arange(16)
    between = np.roll(ranks, -4)                # two hosts on: another leaf
    assert router.route_distinct(ranks, between, None).num_flows == 16
    local = between.copy()
    local[5] = ranks[5]                          # one local copy among them
    assert router.route_distinct(ranks, local, None) is None

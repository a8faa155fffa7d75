"""Collectives timed on the idle fabric: sets with the same routed shape share one simulation,
and the shared time is the time a simulation of each set gives."""

import math

import numpy as np
import pytest

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads import idle_collectives
from clustersim.workloads.idle_collectives import idle_collective_time_s
from clustersim.workloads.parallel_layout import ParallelLayout

NETWORKS = {
    "non_blocking": None,
    "ecmp": {"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2, "routing": "ecmp"},
    "spray": {"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2, "routing": "spray"},
    "oversubscribed": {"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2,
                       "oversubscription": 2, "routing": "ecmp"},
}


def _bucket_sets(layout: ParallelLayout, stages: int) -> list:
    """What a layer-granularity step asks for: per stage, a bucket's DP all-reduces over every
    TP rank at once, and a TP all-reduce."""
    sets = []
    for stage in range(stages):
        for size in (4e7, 1.2e8):
            sets.append([("all_reduce", layout.dp_group(stage=stage, tp_rank=t), size)
                         for t in range(layout.tp)])
        sets.append([("all_reduce", layout.tp_group(stage=stage, dp_rank=0), 1e7)])
        sets.append([("all_to_all", layout.dp_group(stage=stage, tp_rank=0), 3e7)])
    return sets


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_a_reused_shape_gives_the_simulated_time(network):
    kwargs = {} if NETWORKS[network] is None else {"network": NETWORKS[network]}
    cluster = ClusterConfig(node="DGX-A100", nodes=16, gpus_per_node=4,
                            **kwargs).build(rng=np.random.default_rng(3))
    layout = ParallelLayout(4, 4, 4, 1)
    sets = _bucket_sets(layout, 4)
    shared = [idle_collective_time_s(cluster, s) for s in sets]
    shapes = len(idle_collectives._CACHE[id(cluster)][2])
    idle_collectives._CACHE.clear()
    simulated = [idle_collective_time_s(cluster, s, reuse_shapes=False) for s in sets]
    for a, b in zip(shared, simulated):
        assert math.isclose(a, b, rel_tol=1e-9)
    assert shapes <= len(sets)
    if network in ("non_blocking", "spray"):
        # Stages are alike on these fabrics: one simulation per kind of set, not per stage.
        assert shapes == 4


def test_sets_that_share_a_device_are_not_taken_for_sets_that_do_not():
    cluster = ClusterConfig(node="DGX-A100", nodes=4, gpus_per_node=2).build()
    apart = idle_collective_time_s(cluster, [("all_reduce", [0, 2], 1e8), ("all_reduce", [4, 6], 1e8)])
    shared = idle_collective_time_s(cluster, [("all_reduce", [0, 2], 1e8), ("all_reduce", [0, 4], 1e8)])
    # The second pair queues on device 0's stream behind the first: twice as long.
    assert math.isclose(shared, 2 * apart, rel_tol=1e-9)

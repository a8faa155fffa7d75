"""The cluster router: load balance, prefix-cache affinity, and the load each replica saw."""

import functools

import numpy as np
import pytest

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.serving.cluster_router import ClusterRouter
from clustersim.workloads.serving.metrics import replica_load, summarise
from clustersim.workloads.serving.workload import ServingWorkload


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


def run(router, **extra):
    spec = {"model": "llama2-7b", "parallel": {"replicas": 4}, "router": router,
            "kv_cache": {"num_blocks": 600},
            "requests": {"count": 300, "arrival": {"kind": "poisson", "rate": 40},
                         "prompt_tokens": {"kind": "uniform", "min": 50, "max": 400},
                         "output_tokens": {"kind": "uniform", "min": 10, "max": 200},
                         "prefix": {"groups": 24, "tokens": 1024, "fraction": 1.0}}}
    spec.update(extra)
    work = ServingWorkload.model_validate(spec)
    result = work.simulate(node(), rng=np.random.default_rng(0))
    return result, summarise(result, work.slo)


def test_prefix_aware_routing_sends_a_prefix_where_it_is_cached():
    _, spread = run("round_robin")
    result, aware = run("prefix_aware")
    assert aware["prefix_hit_tokens"] > 1.3 * spread["prefix_hit_tokens"]
    assert aware["router_to_cached_prefix"] > 200
    assert aware["ttft_mean_s"] < spread["ttft_mean_s"]
    # Each prefix group mostly stays on one replica.
    table = result.outcome.engine
    groups = result.requests.prefix_id
    homes = [np.bincount(table[groups == g]).max() / (groups == g).sum() for g in range(24)]
    assert np.mean(homes) > 0.75


class Blocks:
    def __init__(self, cached):
        self.cached = cached

    def is_cached(self, prefix_id):
        return self.cached > 0

    def match_path(self, path):
        return self.cached, 0


class Engine:
    def __init__(self, load, cached):
        self.load, self.blocks = load, Blocks(cached)

    def outstanding(self):
        return self.load


class Seq:
    def __init__(self, path=None, prefix_blocks=0):
        self.path, self.prefix_id, self.prefix_blocks = path, 7, prefix_blocks


def choose(loads, cached, seq, threshold=16):
    engines = [Engine(load, blocks) for load, blocks in zip(loads, cached)]
    router = ClusterRouter("prefix_aware", [[e] for e in engines], np.random.default_rng(0),
                           imbalance_threshold=threshold)
    return engines.index(router.choose(seq))


def test_prefix_aware_takes_the_longest_cached_prefix_unless_the_load_is_imbalanced():
    hashed = Seq(path=(1, 2, 3))
    assert choose([3, 1, 2], [0, 0, 64], hashed) == 2            # the cache wins
    assert choose([3, 1, 2], [0, 32, 64], hashed) == 2           # the longest match wins
    assert choose([3, 1, 2], [64, 0, 64], hashed) == 2           # a tie: the less loaded
    assert choose([3, 1, 2], [0, 0, 64], hashed, threshold=1) == 1   # imbalanced: least load
    assert choose([3, 1, 2], [0, 0, 0], hashed) == 1             # nothing cached: least load
    assert choose([3, 1, 2], [9, 0, 0], Seq()) == 1              # no prefix: least load
    assert choose([3, 1, 2], [9, 0, 0], Seq(prefix_blocks=9)) == 0   # one-level prefix


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding", "random", "prefix_aware"])
def test_every_routed_request_records_the_load_its_replica_saw(router):
    result, metrics = run(router)
    load = replica_load(result)
    assert len(load) == 300 and (load["outstanding"] >= 1).all()
    assert (np.diff(load["time_s"].to_numpy()) >= 0).all() or router in ("round_robin", "random")
    assert (load.sort_values("time_s")["replica"].to_numpy() >= 0).all()
    counts = load["replica"].value_counts()
    if router == "round_robin":
        assert counts.max() - counts.min() <= 1
    assert metrics["router_requests_max_over_mean"] >= 1


def test_the_replica_load_plot_draws_one_line_per_replica(tmp_path):
    from clustersim.workloads.serving.plots import plot_replica_load

    result, _ = run("least_outstanding")
    path = tmp_path / "load.png"
    plot_replica_load(replica_load(result), str(path), title="load")
    assert path.stat().st_size > 10_000

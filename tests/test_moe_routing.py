"""Routing as data: seeded distributions, traces with line-numbered errors, capacity."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clustersim.errors import ConfigError
from clustersim.workloads.moe.routing import (RoutingSpec, affinity_counts, apply_capacity,
                                              capacity_per_expert, expert_counts,
                                              read_routing_trace, routing_model)


def _sample(spec, layers=3, tokens=2000, seed=0):
    rng = np.random.default_rng(seed)
    return routing_model(spec, layers, rng).sample(tokens, rng)


def test_same_seed_same_routing_and_topk_distinct():
    spec = RoutingSpec(8, 2, "zipf", zipf_s=1.0, drift=0.3, affinity=0.5)
    a, b = _sample(spec), _sample(spec)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _sample(spec, seed=1))
    assert (a[:, :, 0] != a[:, :, 1]).all()   # top-k picks distinct experts


def test_zipf_skew_orders_load_and_uniform_is_flat():
    flat = expert_counts(_sample(RoutingSpec(8, 2), tokens=20000), 8)
    assert flat.max() / flat.mean() < 1.05
    skewed = expert_counts(_sample(RoutingSpec(8, 2, "zipf", zipf_s=1.5), tokens=20000), 8)
    assert skewed.max() / skewed.mean() > 1.5


def test_affinity_concentrates_next_layer_choices():
    def top_share(a):
        spec = RoutingSpec(16, 1, affinity=a, affinity_set=2)
        m = affinity_counts(_sample(spec, tokens=8000), 16)
        return np.sort(m[0], axis=1)[:, -2:].sum() / m[0].sum()
    low, high = top_share(0.0), top_share(0.9)
    assert high > 0.85 > 0.3 > low


def test_drift_zero_keeps_one_ranking():
    rng = np.random.default_rng(0)
    pop = routing_model(RoutingSpec(8, 2, "zipf", zipf_s=1.0), 4, rng).popularity
    assert np.allclose(pop, pop[0])
    pop = routing_model(RoutingSpec(8, 2, "zipf", zipf_s=1.0, drift=1.0), 4, rng).popularity
    assert not np.allclose(pop, pop[0])


@pytest.mark.parametrize("kwargs, key", [
    (dict(num_experts=8, top_k=9), "top_k"),
    (dict(num_experts=8, top_k=2, distribution="zipf", zipf_s=-1.0), "zipf_s"),
    (dict(num_experts=8, top_k=2, affinity=1.5), "affinity"),
    (dict(num_experts=8, top_k=2, capacity_factor=0.0), "capacity_factor"),
])
def test_bad_routing_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        RoutingSpec(**kwargs)


def test_trace_round_trip_and_errors(tmp_path):
    good = tmp_path / "r.csv"
    good.write_text("layer,expert,tokens\n0,0,30\n0,1,10\n1,1,5\n1,1,5\n")
    counts = read_routing_trace(good, num_layers=2, num_experts=2)
    assert counts == ((30.0, 10.0), (0.0, 10.0))
    spec = RoutingSpec(2, 1, "trace", trace=counts)
    choices = _sample(spec, layers=2, tokens=4000)
    assert (choices[:, 1, 0] == 1).all()          # layer 1 only ever picks expert 1
    share = (choices[:, 0, 0] == 0).mean()
    assert abs(share - 0.75) < 0.03
    for body, message in [("0,5,1\n", "line 2: expert 5"), ("0,0,1\n3,0,1\n", "line 3: layer 3"),
                          ("0,0,-2\n", "line 2: token count"), ("0,0,x\n", "line 2"),
                          ("0,0,1\n", "layer 1 has no tokens")]:
        bad = tmp_path / "bad.csv"
        bad.write_text("layer,expert,tokens\n" + body)
        with pytest.raises(ConfigError, match=message):
            read_routing_trace(bad, num_layers=2, num_experts=2)


def test_dropped_tokens_are_the_excess_over_capacity():
    counts = np.array([[10, 2, 0, 4], [1, 1, 1, 13]])
    cap = capacity_per_expert(8, 2, 4, 1.0)     # ceil(8 x 2 / 4 x 1.0) = 4
    assert cap == 4
    kept, dropped = apply_capacity(counts, cap)
    assert np.array_equal(dropped, np.maximum(counts - 4, 0))
    assert np.array_equal(kept + dropped, counts)
    kept, dropped = apply_capacity(counts, None)  # dropless
    assert dropped.sum() == 0


@settings(max_examples=25, deadline=None)
@given(e=st.integers(2, 12), k=st.integers(1, 3), s=st.floats(0, 3), a=st.floats(0, 1),
       tokens=st.integers(1, 200), seed=st.integers(0, 10**6))
def test_tokens_are_conserved(e, k, s, a, tokens, seed):
    k = min(k, e)
    choices = _sample(RoutingSpec(e, k, "zipf", zipf_s=s, affinity=a), layers=3, tokens=tokens,
                      seed=seed)
    counts = expert_counts(choices, e)
    assert (counts.sum(axis=1) == tokens * k).all()
    assert affinity_counts(choices, e).sum() == 2 * tokens * k

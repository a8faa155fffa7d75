"""The engine's fast paths (``continuous_run``, ``decode_run``) against the general loop: the
same run, iteration for iteration, on random arrivals, lengths, block counts and settings."""

import functools
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.serving import iteration_cache
from clustersim.workloads.serving.metrics import request_table, summarise
from clustersim.workloads.serving.replica import VirtualEngine
from serving_spec import serving_workload

REL = 1e-9


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


def workload(*, count=60, rate=2.0, prompt=(100, 1500), output=(1, 200), arrival=None,
             **spec):
    return serving_workload(count=count, rate=rate, prompt=prompt, output=output,
                            arrival=arrival, **spec)


def no_fast_path(self, clock):
    """``VirtualEngine._continuous_run`` switched off (a generator that yields nothing)."""
    return clock
    yield


def run_both(monkeypatch, work, seed=0):
    """(fast, general, fast-path iterations): the run with the fast paths, the run without."""
    handled = []
    original = VirtualEngine._continuous_run

    def counted(self, clock):
        before = len(self.iterations)
        clock = yield from original(self, clock)
        handled.append(len(self.iterations) - before)
        return clock

    with monkeypatch.context() as patch:
        patch.setattr(VirtualEngine, "_continuous_run", counted)
        fast = work.simulate(node(), rng=np.random.default_rng(seed))
    with monkeypatch.context() as patch:
        patch.setattr(VirtualEngine, "_continuous_run", no_fast_path)
        patch.setattr(VirtualEngine, "_decode_run", lambda self, clock: clock)
        general = work.simulate(node(), rng=np.random.default_rng(seed))
    return fast, general, sum(handled)


def assert_same_run(fast, general, work):
    """Per request (TTFT, TPOT, finish, tokens, preemptions, status), per iteration, per KV
    change, per engine counter and every metric: equal (floats to 1e-9)."""
    for name in ("first_token_s", "finish_s", "stall_s"):
        np.testing.assert_allclose(getattr(fast.outcome, name), getattr(general.outcome, name),
                                   rtol=REL, atol=0)
    for name in ("generated", "preemptions", "status", "engine"):
        assert (getattr(fast.outcome, name) == getattr(general.outcome, name)).all(), name
    assert fast.outcome.reasons == general.outcome.reasons
    a, b = request_table(fast), request_table(general)
    for column in ("ttft_s", "tpot_s", "e2e_s"):
        np.testing.assert_allclose(a[column], b[column], rtol=REL, atol=0)
    for e, g in zip(fast.engines, general.engines):
        assert e.iterations == g.iterations
        assert e.kv_timeline == g.kv_timeline
        for name in ("emitted", "preemptions", "recomputed_tokens", "max_running",
                     "swapped_out_blocks", "swapped_in_blocks", "cohort"):
            assert getattr(e, name) == getattr(g, name), name
        # Blocks conserved: allocated - freed = in use (cached prefixes only, at the end).
        e.blocks.check()
        assert e.blocks.held == 0 and e.blocks.free == g.blocks.free
        assert e.blocks.allocated_total == g.blocks.allocated_total
        assert e.blocks.freed_total == g.blocks.freed_total
    for p, q in zip(fast.pipelines, general.pipelines):
        np.testing.assert_allclose(p.busy_s, q.busy_s, rtol=REL, atol=0)
        assert p.free_s == q.free_s
    assert fast.router.samples == general.router.samples
    m, n = summarise(fast, work.slo), summarise(general, work.slo)
    assert m.keys() == n.keys()
    for key, value in m.items():
        if isinstance(value, float):
            assert value == pytest.approx(n[key], rel=REL, nan_ok=True), key
        else:
            assert value == n[key], key


def test_at_low_load_the_fast_path_runs_nearly_every_iteration_and_changes_nothing(monkeypatch):
    work = workload(count=150, rate=4.0)
    fast, general, handled = run_both(monkeypatch, work)
    assert_same_run(fast, general, work)
    iterations = len(fast.engines[0].iterations)
    assert iterations > 1000 and handled > 0.97 * iterations
    assert (fast.outcome.status == 1).all()


def test_replicas_behind_a_fixed_router_each_stay_on_the_fast_path(monkeypatch):
    """Each engine waits for another replica's event where the general loop would (inside
    the fast path), and the interleaving is the same: the router's samples agree in order."""
    work = workload(count=200, rate=8.0, parallel={"replicas": 3}, router="round_robin")
    fast, general, handled = run_both(monkeypatch, work)
    assert_same_run(fast, general, work)
    iterations = sum(len(e.iterations) for e in fast.engines)
    assert handled > 0.97 * iterations
    assert all(len(e.iterations) > 300 for e in fast.engines)


def test_chunked_prefill_mixes_prompt_chunks_into_decode_iterations_on_the_fast_path(
        monkeypatch):
    work = workload(count=150, rate=6.0, prompt=(100, 3000),
                    scheduler={"policy": "chunked_prefill", "max_batched_tokens": 512})
    fast, general, handled = run_both(monkeypatch, work)
    assert_same_run(fast, general, work)
    iterations = fast.engines[0].iterations
    assert handled > 0.97 * len(iterations)
    mixed = [it for it in iterations if it[2] and it[3]]
    assert len(mixed) > 100 and all(it[2] + it[3] <= 512 for it in iterations)
    # A long prompt is computed over several iterations: more chunks than prompts.
    assert sum(it[4] for it in iterations) > 150


def test_bursts_admit_several_prompts_in_one_iteration_as_the_policy_does(monkeypatch):
    work = workload(count=80, arrival={"kind": "gamma", "rate": 20, "cv": 6},
                    scheduler={"max_num_seqs": 16, "max_batched_tokens": 2048})
    fast, general, handled = run_both(monkeypatch, work)
    assert_same_run(fast, general, work)
    prefills = [it for it in fast.engines[0].iterations if it[3]]
    assert max(it[4] for it in prefills) > 1 and handled > 0
    # The token budget holds, but for a prompt longer than it, alone.
    assert all(it[3] <= 2048 or it[4] == 1 for it in prefills)


def test_preemption_rejection_and_shared_prefixes_hand_over_to_the_general_loop(monkeypatch):
    work = workload(count=80, rate=30.0, prompt=(50, 1200), output=(1, 700),
                    kv_cache={"num_blocks": 120, "block_size": 16},
                    requests__prefix={"groups": 2, "tokens": 300, "fraction": 0.3})
    fast, general, handled = run_both(monkeypatch, work)
    assert_same_run(fast, general, work)
    out = fast.outcome
    assert (out.status == 2).any() and (out.preemptions > 0).any()
    assert fast.engines[0].prefix_hit_tokens > 0 and handled > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 50), rate=st.floats(0.5, 60.0),
       arrival=st.sampled_from(["poisson", "gamma", "burst"]),
       prompt=st.tuples(st.integers(1, 600), st.integers(0, 1500)),
       output=st.tuples(st.integers(1, 40), st.integers(0, 400)),
       blocks=st.sampled_from([None, 60, 150, 400]),
       block_size=st.sampled_from([8, 16]), preemption=st.sampled_from(["recompute", "swap"]),
       max_num_seqs=st.sampled_from([4, 32, 256]),
       max_batched_tokens=st.sampled_from([512, 4096]),
       replicas=st.sampled_from([(1, "round_robin"), (2, "round_robin"), (3, "random")]),
       policy=st.sampled_from(["continuous", "chunked_prefill"]),
       prefix=st.booleans(), seed=st.integers(0, 2**16))
def test_any_run_is_the_same_with_and_without_the_fast_paths(
        monkeypatch, count, rate, arrival, prompt, output, blocks, block_size, preemption,
        max_num_seqs, max_batched_tokens, replicas, policy, prefix, seed):
    process = {"kind": arrival} if arrival == "burst" else \
        {"kind": arrival, "rate": rate, **({"cv": 3} if arrival == "gamma" else {})}
    work = workload(count=count, prompt=(prompt[0], prompt[0] + prompt[1]),
                    output=(output[0], output[0] + output[1]), arrival=process,
                    parallel={"replicas": replicas[0]}, router=replicas[1],
                    scheduler={"policy": policy, "max_num_seqs": max_num_seqs,
                               "max_batched_tokens": max_batched_tokens},
                    kv_cache={"num_blocks": blocks, "block_size": block_size,
                              "preemption": preemption, "swap_space": "100 MiB"},
                    requests__prefix={"groups": 2, "tokens": 200, "fraction": 0.5}
                    if prefix else None)
    fast, general, _ = run_both(monkeypatch, work, seed)
    assert_same_run(fast, general, work)
    finished = fast.outcome.status == 1
    assert (finished | (fast.outcome.status == 2)).all()
    assert (fast.outcome.generated[finished] == fast.requests.output_tokens[finished]).all()


def test_the_fast_path_is_only_for_what_it_reproduces():
    work = workload(count=5)
    result = work.simulate(node(), rng=np.random.default_rng(0))
    assert result.engines[0].fast
    for spec in ({"scheduler": {"policy": "prefix_aware"}}, {"parallel": {"pp": 2}},
                 {"router": "least_outstanding", "parallel": {"replicas": 2}},
                 {"arrival": {"kind": "closed", "users": 2, "think_time": 0.1}}):
        result = workload(count=5, **spec).simulate(node(), rng=np.random.default_rng(0))
        assert not any(e.fast for e in result.engines), spec


def test_runs_of_one_replica_layout_share_the_iteration_caches_and_change_nothing(monkeypatch):
    work = workload(count=40)
    first, second = (work.simulate(node(), rng=np.random.default_rng(0)) for _ in range(2))
    assert first.engines[0].model._fixed_parts is second.engines[0].model._fixed_parts
    slower = workload(count=40, iteration_overhead=0.002)
    other = slower.simulate(node(), rng=np.random.default_rng(0))
    assert other.engines[0].model._fixed_parts is not first.engines[0].model._fixed_parts
    # The same run with every cache empty: the same times.
    monkeypatch.setattr(iteration_cache, "_layouts", OrderedDict())
    fresh = work.simulate(node(), rng=np.random.default_rng(0))
    assert fresh.engines[0].model._fixed_parts is not first.engines[0].model._fixed_parts
    assert fresh.engines[0].iterations == second.engines[0].iterations
    np.testing.assert_array_equal(fresh.outcome.finish_s, second.outcome.finish_s)
    # The overhead is in every iteration: the slower layout's first prefill is 2 ms longer.
    start, end = first.engines[0].iterations[0][:2]
    start_o, end_o = other.engines[0].iterations[0][:2]
    assert (end_o - start_o) - (end - start) == pytest.approx(0.002, rel=1e-9)

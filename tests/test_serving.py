"""The serving engine as stories: one request, many with preemption, budgets, seeds, speed."""

import functools
import json
import math

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import get_model
from clustersim.workloads.serving.iteration import IterationModel
from clustersim.workloads.serving.metrics import request_table, summarise
from clustersim.workloads.serving.replica import VirtualEngine
from clustersim.workloads.serving.workload import ServingWorkload
from serving_spec import serving_workload

REL = 1e-9


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


def workload(**spec):
    return serving_workload(**spec)


def simulate(work, seed=0, record_trace=False):
    return work.simulate(node(), rng=np.random.default_rng(seed), record_trace=record_trace)


# -- one request -------------------------------------------------------------------------------

def test_a_lone_request_gets_its_first_token_after_its_prefill_then_one_token_per_decode():
    result = simulate(workload(requests={"count": 1, "arrival": {"kind": "burst"},
                                         "prompt_tokens": 700, "output_tokens": 50}))
    engine, out = result.engines[0], result.outcome
    model = engine.model
    assert math.isclose(out.first_token_s[0], model.prefill_s(700), rel_tol=REL)
    assert [(it[2], it[3]) for it in engine.iterations] == [(0, 700)] + [(1, 0)] * 49
    # Decode k writes token 700 + k and attends to 701 + k keys.
    finish = out.first_token_s[0] + sum(model.decode_iteration(1, 701 + k).latency_s
                                        for k in range(49))
    assert math.isclose(out.finish_s[0], finish, rel_tol=REL)
    assert out.generated[0] == 50 and engine.emitted == 50


def test_a_lone_prefill_costs_the_layer_ops_of_its_prompt():
    cluster = node()
    gpu, model = cluster.devices[0], get_model("llama2-7b")
    iteration = IterationModel(model, gpu)
    layer = sum(gpu.op_time(op) for op in tfm.layer_forward(model, micro_batch=1, seq_len=300))
    assert math.isclose(iteration.linear_s(300) + iteration.prefill_attention_s(300, 300), layer,
                        rel_tol=REL)
    assert math.isclose(iteration.prefill_s(300), 32 * layer + iteration.embedding_s(300)
                        + iteration.head_s(1), rel_tol=REL)


def test_decode_attention_reads_the_kv_of_the_whole_batch():
    iteration = IterationModel(get_model("llama2-70b"), node().devices[0], tp=8)
    one = iteration.decode_attention_s(64, 4096)
    # Memory-bound: 64 sequences of 4096 tokens read 64 x 4096 x 40 KiB / 80 layers per layer.
    kv_bytes = 64 * 4096 * 2 * 128 * 2
    assert one > kv_bytes / node().devices[0].hbm_bandwidth_bytes_per_s
    longer = iteration.decode_attention_s(64, 8192)
    assert longer > 1.9 * iteration.decode_attention_s(64, 4096) - 1e-5


def test_a_pipeline_passes_a_lone_prefill_through_every_stage_and_send():
    result = simulate(workload(parallel={"tp": 2, "pp": 2},
                               requests={"count": 1, "arrival": {"kind": "burst"},
                                         "prompt_tokens": 500, "output_tokens": 2}))
    timing = result.engines[0].model.iteration(chunks=[(500, 500)])
    assert len(timing.stages_s) == 2 and timing.sends_s[0] > 0
    assert math.isclose(result.outcome.first_token_s[0], timing.latency_s, rel_tol=REL)


# -- many requests -----------------------------------------------------------------------------

@pytest.fixture
def checked_every_iteration(monkeypatch):
    """Check the KV block accounting after every allocation and every completion."""
    original = VirtualEngine._note_kv
    checks = []

    def note_kv(self, now):
        self.blocks.check()
        assert self.blocks.used <= self.blocks.total
        checks.append(self.blocks.used)
        original(self, now)

    monkeypatch.setattr(VirtualEngine, "_note_kv", note_kv)
    return checks


@pytest.mark.parametrize("policy, preemption", [("continuous", "recompute"),
                                                ("continuous", "swap"),
                                                ("chunked_prefill", "recompute"),
                                                ("chunked_prefill", "swap")])
def test_preempted_or_not_every_request_produces_exactly_its_output_tokens(
        checked_every_iteration, policy, preemption):
    work = workload(scheduler={"policy": policy},
                    kv_cache={"num_blocks": 300, "preemption": preemption},
                    requests={"count": 120, "arrival": {"kind": "burst"},
                              "prompt_tokens": {"kind": "uniform", "min": 50, "max": 600},
                              "output_tokens": {"kind": "uniform", "min": 50, "max": 800}})
    result = simulate(work)
    out, requests = result.outcome, result.requests
    engine = result.engines[0]
    assert engine.preemptions > 10 and (out.preemptions > 0).sum() > 5
    assert (out.status == 1).all()
    assert (out.generated == requests.output_tokens).all()
    assert engine.emitted == requests.output_tokens.sum()
    assert (out.finish_s >= out.first_token_s).all()
    if preemption == "swap":
        assert engine.swapped_out_blocks == engine.swapped_in_blocks > 0
    else:
        assert engine.recomputed_tokens > 0
    # Conserved at every step, never above capacity, and all returned at the end.
    assert len(checked_every_iteration) > 100 and max(checked_every_iteration) <= 300
    assert engine.blocks.held == 0
    # Preemption shows as latency: a stall from each preemption to the request's next token,
    # inside its decode phase, and none for requests never preempted.
    preempted = out.preemptions > 0
    assert (out.stall_s[preempted] > 0).all() and (out.stall_s[~preempted] == 0).all()
    assert (out.stall_s <= out.finish_s - out.first_token_s).all()
    metrics = summarise(result, work.slo)
    assert metrics["preemption_stall_mean_s"] > 0
    assert 0 < metrics["preemption_stall_share_of_e2e"] < 1


def test_chunked_prefill_never_exceeds_its_token_budget():
    result = simulate(workload(scheduler={"policy": "chunked_prefill", "max_num_seqs": 64,
                                          "max_batched_tokens": 256},
                               kv_cache={"num_blocks": 400, "preemption": "swap"},
                               requests__count=100))
    tokens = [decodes + prefill for _, _, decodes, prefill, _ in result.engines[0].iterations]
    assert max(tokens) == 256
    assert all(0 < t <= 256 for t in tokens)


def test_the_same_seed_gives_the_same_metrics_and_another_seed_does_not():
    work = workload(kv_cache={"num_blocks": 500})
    first, again, other = (summarise(simulate(work, seed), work.slo) for seed in (3, 3, 4))
    assert first == again
    assert first != other


def test_a_request_that_can_never_fit_is_rejected_with_its_reason_and_counted(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_time,prompt_tokens,output_tokens\n"
                     "0.0,100,10\n0.1,3000,500\n0.2,3000,2000\n0.3,100,10\n")
    work = workload(kv_cache={"num_blocks": 200}, requests={"trace": str(trace)})
    result = simulate(work)
    table = request_table(result)
    assert table["status"].tolist() == ["finished", "rejected", "rejected", "finished"]
    assert "prompt 3000 + output 500 - 1 tokens need 219 KV blocks of 16 tokens, but an " \
           "engine has 198 usable" in table.reason[1]
    assert "exceed the context window of 4096" in table.reason[2]
    metrics = summarise(result, work.slo)
    assert (metrics["finished"], metrics["rejected"]) == (2, 2)


def test_swapping_costs_time_on_the_host_link():
    work = workload(kv_cache={"num_blocks": 200, "preemption": "swap"},
                    requests={"count": 40, "arrival": {"kind": "burst"}, "prompt_tokens": 200,
                              "output_tokens": 400})
    result = simulate(work, record_trace=True)
    spans = result.trace.spans.query("stream == 'kv swap'")
    assert len(spans)
    block_bytes = result.setup.layout.block_bytes_per_gpu
    pcie = node().devices[0].host_link_bandwidth_bytes_per_s
    for row in spans.itertuples():
        expected = max(row.out_blocks, row.in_blocks) * block_bytes / pcie
        assert math.isclose(row.end_s - row.start_s, expected, rel_tol=1e-6)
    links = result.trace.links
    assert (links["link"] == "gpu0.host.d2h").any() and (links["link"] == "gpu0.host.h2d").any()
    metrics = summarise(result, work.slo)
    assert metrics["swapped_out_bytes"] == metrics["swapped_in_bytes"] > 0
    assert metrics["swap_time_s"] == pytest.approx((spans.end_s - spans.start_s).sum())


def test_static_batching_forms_a_batch_only_when_the_previous_one_is_done():
    result = simulate(workload(scheduler={"policy": "static", "max_num_seqs": 8},
                               requests={"count": 20, "arrival": {"kind": "burst"},
                                         "prompt_tokens": 100,
                                         "output_tokens": {"kind": "uniform", "min": 5,
                                                           "max": 40}}))
    iterations = result.engines[0].iterations
    prefills = [i for i, it in enumerate(iterations) if it[3]]
    assert len(prefills) == 3                                     # 8 + 8 + 4
    assert all(iterations[i][2] == 0 for i in prefills)           # nothing decoding meanwhile
    assert [iterations[i][4] for i in prefills] == [8, 8, 4]
    assert result.engines[0].preemptions == 0


def test_shared_prefixes_are_computed_once_and_held_once():
    def run(prompt_tokens, prefix):
        return simulate(workload(requests={"count": 16, "arrival": {"kind": "burst"},
                                           "prompt_tokens": prompt_tokens, "output_tokens": 20,
                                           "prefix": prefix}))
    shared = run(100, {"groups": 1, "tokens": 1600})     # 1600 shared + 100 own tokens
    alone = run(1700, None)
    engine = shared.engines[0]
    assert engine.blocks.prefix_hits == 15 and engine.blocks.prefix_misses == 1
    assert engine.prefix_hit_tokens == 15 * 1600
    assert sum(it[3] for it in engine.iterations) == 16 * 1700 - 15 * 1600
    # Each request ends holding 1719 tokens: 108 blocks, 100 of them the shared prefix.
    assert max(u for _, u in engine.kv_timeline) == 100 + 16 * 8
    assert max(u for _, u in alone.engines[0].kv_timeline) == 16 * 108


def test_prefix_aware_grouping_reuses_more_cached_prefixes_than_arrival_order():
    spec = dict(kv_cache={"num_blocks": 1500},
                requests={"count": 300, "arrival": {"kind": "poisson", "rate": 40},
                          "prompt_tokens": {"kind": "uniform", "min": 20, "max": 300},
                          "output_tokens": {"kind": "uniform", "min": 10, "max": 200},
                          "prefix": {"groups": 24, "tokens": 1200}})
    fcfs = simulate(workload(scheduler={"policy": "chunked_prefill"}, **spec))
    grouped = simulate(workload(scheduler={"policy": "prefix_aware"}, **spec))
    assert grouped.engines[0].prefix_hit_tokens > 1.2 * fcfs.engines[0].prefix_hit_tokens


def test_chunked_prefill_shrinks_pipeline_bubbles():
    spec = dict(parallel={"tp": 2, "pp": 4},
                requests={"count": 150, "arrival": {"kind": "poisson", "rate": 15},
                          "prompt_tokens": {"kind": "lognormal", "mean": 1500, "max": 3800},
                          "output_tokens": {"kind": "uniform", "min": 50, "max": 250}})
    bubbles = {policy: summarise(simulate(workload(scheduler={"policy": policy}, **spec)),
                                 ServingWorkload.model_fields["slo"].default_factory()
                                 )["pipeline_bubble_fraction"]
               for policy in ("continuous", "chunked_prefill")}
    assert bubbles["chunked_prefill"] < bubbles["continuous"]


def test_closed_loop_users_never_have_more_than_one_request_in_flight():
    result = simulate(workload(requests={"count": 24, "arrival": {"kind": "closed", "users": 4,
                                                                   "think_time": "0.5 s"},
                                         "prompt_tokens": 300, "output_tokens": 30}))
    assert result.engines[0].max_running <= 4
    table = request_table(result)
    assert table["status"].eq("finished").all()
    # Request i (i >= 4) was sent 0.5 s after some earlier request finished.
    finishes = np.sort(table["finish_s"].to_numpy())
    arrivals = np.sort(table["arrival_s"].to_numpy())[4:]
    assert np.allclose(arrivals, finishes[:20] + 0.5)


def test_a_decode_iteration_is_a_few_events_whatever_the_batch(monkeypatch):
    counted = []
    original = simpy.Environment.schedule

    def schedule(self, event, priority=1, delay=0):
        counted.append(1)
        return original(self, event, priority, delay)

    monkeypatch.setattr(simpy.Environment, "schedule", schedule)
    per_iteration = {}
    for batch in (16, 256):
        counted.clear()
        result = simulate(workload(requests={"count": batch, "arrival": {"kind": "burst"},
                                             "prompt_tokens": 64, "output_tokens": 200}))
        per_iteration[batch] = len(counted) / len(result.engines[0].iterations)
    assert per_iteration[256] < 3 and per_iteration[16] < 3


def test_the_trace_has_iterations_per_stage_and_kv_counters(tmp_path):
    work = workload(parallel={"tp": 2, "pp": 2}, requests__count=30)
    result = work.run(node(), rng=np.random.default_rng(0), record_trace=True)
    spans = result.trace.spans
    assert set(spans.loc[spans.stream == "iterations", "device"]) == {"gpu0", "gpu2"}
    path = result.trace.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e["ph"] == "C" and e["name"].startswith("KV blocks") for e in events)
    assert any(e["ph"] == "X" and e["name"] in ("prefill", "decode", "mixed") for e in events)
    memory = result.trace.memory.query("device == 'gpu0' and tier == 'hbm'")
    assert memory.used_bytes.max() > memory.used_bytes.iloc[0]       # KV on top of weights
    for stem, draw in result.plots.items():
        draw(str(tmp_path / f"{stem}.png"))
        assert (tmp_path / f"{stem}.png").stat().st_size > 0


# -- bad layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, key, message", [
    ({"parallel": {"tp": 3}}, "workload.parallel.tp", "tp=3 must divide"),
    ({"parallel": {"tp": 4, "replicas": 3}}, "workload.parallel", "12 GPUs, but the cluster has 8"),
    ({"model": "llama2-70b"}, "workload.parallel", "no room for a KV cache"),
    ({"model": "llama2-70b", "parallel": {"tp": 2, "pp": 3}}, "workload.parallel.pp", "80 layers"),
    ({"scheduler": {"policy": "chunked_prefill", "max_batched_tokens": 64}},
     "workload.scheduler.max_batched_tokens", "token budget"),
])
def test_impossible_layouts_are_refused_before_the_run(spec, key, message):
    with pytest.raises(ConfigError, match=message) as error:
        workload(**spec).check(node())
    assert error.value.key == key


def test_the_aggregate_decode_group_matches_per_request_bookkeeping():
    """benchmarks/serving.py holds a reference simulator that tracks every request every
    iteration (the design Vidur uses); with preemptions, both give the same finish times."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "serving.py"
    spec = importlib.util.spec_from_file_location("serving_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work = workload(kv_cache={"num_blocks": 400},
                    requests={"count": 300, "arrival": {"kind": "poisson", "rate": 40},
                              "prompt_tokens": {"kind": "uniform", "min": 10, "max": 1500},
                              "output_tokens": {"kind": "uniform", "min": 1, "max": 600}})
    result = simulate(work)
    assert result.engines[0].preemptions > 20
    requests = result.requests
    finish = bench.per_request_loop(
        requests.arrival_s, requests.prompt_tokens, requests.output_tokens,
        bench.iteration_model(work, node()), total_blocks=400,
        max_batched_tokens=work.policy_settings(result.setup.model)["max_batched_tokens"])
    assert np.allclose(finish, result.outcome.finish_s, rtol=1e-9, atol=0)


@pytest.mark.parametrize("router", ["round_robin", "random", "least_outstanding"])
def test_replicas_share_the_requests_by_the_router(router):
    result = simulate(workload(parallel={"tp": 2, "replicas": 3}, router=router,
                               requests__count=90))
    engines = result.outcome.engine
    counts = np.bincount(engines, minlength=3)
    assert (result.outcome.status == 1).all() and counts.sum() == 90
    assert counts.min() > 10
    if router == "round_robin":
        assert counts.tolist() == [30, 30, 30]


def test_collective_times_are_the_idle_fabric_cost_of_their_flow_steps():
    from clustersim.sim.engine import Simulation
    from clustersim.workloads.serving.iteration import fabric_timing, idle_steps_s

    cluster = node()
    fabric = Simulation(**cluster.simulation_kwargs(), record_trace=False).fabric
    collective_s, _ = fabric_timing(cluster, fabric, [0, 1, 2, 3], [0])
    for size in (2 * 8192, 3e6, 7.5e8):
        steps = cluster.collective("all_reduce", [0, 1, 2, 3], size)
        assert math.isclose(collective_s("all_reduce", size), idle_steps_s(fabric, steps),
                            rel_tol=1e-9)
    # Ring all-reduce on NVLink: 2 (n - 1) steps of S / n bytes each.
    nvlink = fabric.capacity[0]
    assert collective_s("all_reduce", 7.5e8) > 2 * 3 * 7.5e8 / 4 / nvlink


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["static", "continuous", "chunked_prefill", "prefix_aware"]),
       layout=st.sampled_from([(1, 1, 1), (2, 2, 1), (1, 4, 1), (2, 1, 3)]),
       arrival=st.sampled_from([{"kind": "poisson", "rate": 80}, {"kind": "burst"},
                                {"kind": "gamma", "rate": 40, "cv": 4},
                                {"kind": "closed", "users": 6, "think_time": 0.1}]),
       blocks=st.sampled_from([90, 300, None]), preemption=st.sampled_from(["recompute", "swap"]),
       block_size=st.sampled_from([8, 16, 32]),
       prefix=st.sampled_from([None, {"groups": 3, "tokens": 400, "fraction": 0.7}]),
       seed=st.integers(0, 2**16))
def test_any_deployment_finishes_every_request_and_returns_every_block(
        policy, layout, arrival, blocks, preemption, block_size, prefix, seed):
    tp, pp, replicas = layout
    work = workload(parallel={"tp": tp, "pp": pp, "replicas": replicas},
                    scheduler={"policy": policy, "max_num_seqs": 32},
                    kv_cache={"num_blocks": blocks, "preemption": preemption,
                              "block_size": block_size, "swap_space": "200 MiB"},
                    requests={"count": 40, "arrival": arrival, "prefix": prefix,
                              "prompt_tokens": {"kind": "uniform", "min": 1, "max": 1200},
                              "output_tokens": {"kind": "uniform", "min": 1, "max": 700}})
    result = simulate(work, seed)
    out, requests = result.outcome, result.requests
    finished = out.status == 1
    assert (finished | (out.status == 2)).all()
    assert (out.generated[finished] == requests.output_tokens[finished]).all()
    assert sum(e.emitted for e in result.engines) == requests.output_tokens[finished].sum()
    for engine in result.engines:
        engine.blocks.check()
        assert engine.blocks.held == 0 and engine.blocks.host_free == engine.blocks.host_total


def no_fast_path(self, clock):
    """``VirtualEngine._continuous_run`` switched off (a generator that yields nothing)."""
    return clock
    yield


@pytest.mark.parametrize("spec", [
    {},
    {"scheduler": {"policy": "chunked_prefill"}, "kv_cache": {"num_blocks": 300}},
    {"kv_cache": {"num_blocks": 300, "preemption": "swap"}},
    {"parallel": {"replicas": 2}, "router": "least_outstanding",
     "requests": {"count": 60, "arrival": {"kind": "closed", "users": 8, "think_time": 0.05}}},
    {"pools": [{"role": "prefill"}, {"role": "decode"}], "kv_cache": {"num_blocks": 400}},
])
def test_back_to_back_decode_runs_give_the_same_times_as_iteration_by_iteration(monkeypatch, spec):
    fast = simulate(workload(**spec))
    monkeypatch.setattr(VirtualEngine, "_decode_run", lambda self, clock: clock)
    monkeypatch.setattr(VirtualEngine, "_continuous_run", no_fast_path)
    slow = simulate(workload(**spec))
    for name in ("first_token_s", "finish_s", "stall_s"):
        np.testing.assert_allclose(getattr(fast.outcome, name), getattr(slow.outcome, name),
                                   rtol=1e-12, atol=0)
    assert [e.iterations for e in fast.engines] == [e.iterations for e in slow.engines]
    assert [e.kv_timeline for e in fast.engines] == [e.kv_timeline for e in slow.engines]


def test_a_model_whose_decode_timing_is_extended_turns_the_fast_path_off(monkeypatch):
    original = IterationModel.decode_iteration

    def slower(self, decodes, decode_context, pad_decodes_to=0, sampled=None):
        timing = original(self, decodes, decode_context, pad_decodes_to, sampled)
        return timing._replace(stages_s=tuple(t + 1e-3 for t in timing.stages_s))

    monkeypatch.setattr(IterationModel, "decode_iteration", slower)
    fast = simulate(workload())
    monkeypatch.setattr(VirtualEngine, "_decode_run", lambda self, clock: clock)
    monkeypatch.setattr(VirtualEngine, "_continuous_run", no_fast_path)
    slow = simulate(workload())
    np.testing.assert_allclose(fast.outcome.finish_s, slow.outcome.finish_s, rtol=1e-12)
    assert not fast.engines[0].steady

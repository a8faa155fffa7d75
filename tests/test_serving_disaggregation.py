"""Pools of replicas: disaggregated prefill and decode with KV transfers over the fabric."""

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.sim.program import FlowStep
from clustersim.workloads.serving.disaggregation import transfer_pairs
from clustersim.workloads.serving.iteration import idle_steps_s
from clustersim.workloads.serving.metrics import summarise
from clustersim.workloads.serving.workload import ServingWorkload

REL = 1e-9
SPLIT = [{"role": "prefill", "tp": 2}, {"role": "decode", "tp": 2}]


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


def workload(**spec):
    base = {"model": "llama2-7b",
            "requests": {"count": 50, "arrival": {"kind": "poisson", "rate": 30},
                         "prompt_tokens": {"kind": "uniform", "min": 100, "max": 900},
                         "output_tokens": {"kind": "uniform", "min": 1, "max": 300}}}
    base.update(spec)
    return ServingWorkload.model_validate(base)


def run(work, seed=0):
    return work.simulate(node(), rng=np.random.default_rng(seed))


def lone(**spec):
    return workload(requests={"count": 1, "arrival": {"kind": "burst"}, "prompt_tokens": 700,
                              "output_tokens": 50}, **spec)


def test_a_lone_requests_ttft_is_its_prefill_plus_the_kv_transfer():
    result = run(lone(pools=SPLIT))
    prefill, decode = result.engines
    out = result.outcome
    kv_bytes = 700 * prefill.layout.bytes_per_token
    pairs = transfer_pairs(prefill.placement.devices, decode.placement.devices)
    assert pairs == ((0, 2), (1, 3))
    transfer = idle_steps_s(prefill.sim.fabric, (FlowStep(pairs, kv_bytes / 2),))
    assert math.isclose(out.first_token_s[0], prefill.model.prefill_s(700) + transfer,
                        rel_tol=REL)
    assert math.isclose(out.kv_transfer_s[0], transfer, rel_tol=REL) and out.kv_wait_s[0] == 0
    # Then 49 decode iterations on the decode replica, token 700 + k attending to 701 + k keys.
    finish = out.first_token_s[0] + sum(decode.model.decode_iteration(1, 701 + k).latency_s
                                        for k in range(49))
    assert math.isclose(out.finish_s[0], finish, rel_tol=REL)
    assert [(it[2], it[3]) for it in prefill.iterations] == [(0, 700)]
    assert [(it[2], it[3]) for it in decode.iterations] == [(1, 0)] * 49
    metrics = summarise(result, result.setup and lone().slo)
    assert math.isclose(metrics["kv_transfer_share_of_ttft"], transfer / out.first_token_s[0],
                        rel_tol=REL)


def test_layerwise_transfer_hides_all_but_the_last_layers_share_behind_the_prefill():
    after = run(lone(pools=SPLIT)).outcome.first_token_s[0]
    result = run(lone(pools=SPLIT, kv_transfer={"mode": "layerwise"}))
    prefill = result.engines[0]
    transfer = after - prefill.model.prefill_s(700)
    latency = idle_steps_s(prefill.sim.fabric, (FlowStep(((0, 2), (1, 3)), 0.0),))
    # NVLink drains 700 tokens' KV faster than the prefill computes it: one layer of 32 is left.
    assert math.isclose(result.outcome.kv_transfer_s[0], latency + (transfer - latency) / 32,
                        rel_tol=REL)
    assert result.outcome.first_token_s[0] < after


def test_one_mixed_pool_is_colocated_serving_exactly():
    colocated = run(workload(parallel={"tp": 2, "replicas": 2}))
    pooled = run(workload(pools=[{"role": "mixed", "tp": 2, "replicas": 2}]))
    for name in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(pooled.outcome, name),
                                   getattr(colocated.outcome, name), rtol=REL)
    assert (pooled.outcome.kv_transfer_s == 0).all()


def test_each_pool_runs_on_its_own_gpu_model():
    result = run(lone(pools=[{"role": "prefill", "tp": 2},
                             {"role": "decode", "tp": 2, "gpu": "H200-SXM-141GB"}]))
    prefill, decode = result.engines
    assert prefill.model.device.name.startswith("H100")
    assert decode.model.device.name.startswith("H200")
    assert decode.blocks.total > prefill.blocks.total          # 141 GB of HBM against 80 GB


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_tokens_and_blocks_are_conserved_through_transfers_reservations_and_preemption(preemption):
    work = workload(pools=[{"role": "prefill", "tp": 1, "replicas": 2},
                           {"role": "decode", "tp": 2}],
                    kv_cache={"num_blocks": 300, "preemption": preemption},
                    requests={"count": 80, "arrival": {"kind": "burst"},
                              "prompt_tokens": {"kind": "uniform", "min": 50, "max": 600},
                              "output_tokens": {"kind": "uniform", "min": 1, "max": 600}})
    result = run(work)
    out, requests = result.outcome, result.requests
    assert (out.status == 1).all()
    assert (out.generated == requests.output_tokens).all()
    assert sum(e.emitted for e in result.engines) == requests.output_tokens.sum()
    decode = result.engines[-1]
    assert decode.preemptions > 0 and out.kv_wait_s.max() > 0     # the decode pool was full
    for engine in result.engines:
        engine.blocks.check()
        assert engine.blocks.held == 0 and engine.reserved == 0 and engine.in_transfer == 0
    metrics = summarise(result, work.slo)
    assert metrics["gpus"] == 4 and 0 < metrics["decode_busy_fraction"] <= 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["continuous", "chunked_prefill"]),
       mode=st.sampled_from(["after_prefill", "layerwise"]),
       arrival=st.sampled_from([{"kind": "poisson", "rate": 80}, {"kind": "burst"},
                                {"kind": "gamma", "rate": 40, "cv": 4}]),
       blocks=st.sampled_from([120, 400, None]), preemption=st.sampled_from(["recompute", "swap"]),
       sizes=st.sampled_from([(1, 1), (2, 1), (1, 3)]), seed=st.integers(0, 2**16))
def test_any_disaggregated_deployment_finishes_every_request_and_returns_every_block(
        policy, mode, arrival, blocks, preemption, sizes, seed):
    work = workload(pools=[{"role": "prefill", "replicas": sizes[0]},
                           {"role": "decode", "replicas": sizes[1]}],
                    kv_transfer={"mode": mode},
                    scheduler={"policy": policy, "max_num_seqs": 32},
                    kv_cache={"num_blocks": blocks, "preemption": preemption,
                              "swap_space": "200 MiB"},
                    requests={"count": 40, "arrival": arrival,
                              "prompt_tokens": {"kind": "uniform", "min": 1, "max": 1200},
                              "output_tokens": {"kind": "uniform", "min": 1, "max": 500}})
    result = run(work, seed)
    out, requests = result.outcome, result.requests
    finished = out.status == 1
    assert (finished | (out.status == 2)).all()
    assert (out.generated[finished] == requests.output_tokens[finished]).all()
    assert sum(e.emitted for e in result.engines) == requests.output_tokens[finished].sum()
    assert (out.first_token_s[finished] <= out.finish_s[finished]).all()
    for engine in result.engines:
        engine.blocks.check()
        assert engine.blocks.held == 0 and engine.reserved == 0 and engine.in_transfer == 0


@pytest.mark.parametrize("spec, key", [
    ({"pools": [{"role": "prefill"}]}, "workload.pools"),
    ({"pools": [{"role": "mixed"}, {"role": "decode"}]}, "workload.pools"),
    ({"pools": SPLIT, "parallel": {"tp": 2}}, "workload.parallel"),
    ({"pools": [{"role": "prefill", "tp": 3}, {"role": "decode"}]}, "workload.pools[0].tp"),
    ({"pools": [{"role": "prefill", "replicas": 8}, {"role": "decode"}]}, "workload.pools"),
    ({"pools": [{"role": "prefill", "gpu": "Z9000"}, {"role": "decode"}]}, "workload.pools"),
])
def test_impossible_pools_are_refused_before_the_run(spec, key):
    with pytest.raises(ConfigError) as error:
        workload(**spec).check(node())
    assert error.value.key == key


def test_tp_all_reduces_on_an_idle_fabric_take_their_closed_form_time():
    closed = run(lone(parallel={"tp": 4}))
    flows = run(lone(parallel={"tp": 4}, tp_collectives="fabric"))
    np.testing.assert_allclose(flows.outcome.finish_s, closed.outcome.finish_s, rtol=REL)
    np.testing.assert_allclose(flows.outcome.first_token_s, closed.outcome.first_token_s,
                               rtol=REL)


def test_tp_all_reduces_on_the_fabric_slow_down_when_kv_transfers_share_their_links(
        monkeypatch):
    from clustersim.workloads.serving.replica import VirtualEngine

    timed = []
    original = VirtualEngine._on_fabric

    def on_fabric(self, clock, seconds, tokens):
        end = yield from original(self, clock, seconds, tokens)
        timed.append((self.role, seconds, end - clock))
        return end

    monkeypatch.setattr(VirtualEngine, "_on_fabric", on_fabric)
    spec = {"pools": [{"role": "prefill", "tp": 2, "replicas": 2}, {"role": "decode", "tp": 4}],
            "tp_collectives": "fabric",
            "requests": {"count": 60, "arrival": {"kind": "poisson", "rate": 60},
                         "prompt_tokens": {"kind": "uniform", "min": 1500, "max": 3000},
                         "output_tokens": {"kind": "uniform", "min": 20, "max": 100}}}
    result = run(workload(**spec))
    assert (result.outcome.status == 1).all()
    decode = [(idle, actual) for role, idle, actual in timed if role == "decode"]
    # Never faster than on an idle fabric; slower when the decode GPUs' NVLink ports also
    # receive KV from the prefill replicas.
    assert all(actual >= idle * (1 - REL) for idle, actual in decode)
    assert sum(actual > idle * (1 + 1e-6) for idle, actual in decode) > 10

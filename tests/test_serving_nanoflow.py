"""NanoFlow nano-batch overlap: streams on one device sharing SMs and HBM."""

import functools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.models import get_model
from clustersim.workloads.serving.iteration import IterationModel
from clustersim.workloads.serving.nanoflow import (COMPUTE, MEMORY, NETWORK, Kernel,
                                                   NanoFlowConfig, pipeline_s, speeds)
from clustersim.workloads.serving.workload import ServingWorkload

CONFIG = NanoFlowConfig()


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


def nvlink_like(kind, size_bytes):
    return 5e-6 + size_bytes / 300e9


def models(k):
    gpu, model = node().devices[0], get_model("llama2-70b")
    plain = IterationModel(model, gpu, tp=8, collective_s=nvlink_like)
    overlapped = IterationModel(model, gpu, tp=8, collective_s=nvlink_like,
                                overlap=NanoFlowConfig(nano_batches=k))
    return plain, overlapped


def test_one_nano_batch_is_the_sequential_iteration():
    plain, one = models(1)
    for decodes, context in ((8, 900), (700, 1500)):
        assert math.isclose(one.decode_iteration(decodes, decodes * context).latency_s,
                            plain.decode_iteration(decodes, decodes * context).latency_s,
                            rel_tol=1e-9)
    mixed = {"decodes": 300, "decode_context": 300 * 1200, "chunks": [(512, 2048)]}
    assert math.isclose(one.iteration(**mixed).latency_s, plain.iteration(**mixed).latency_s,
                        rel_tol=1e-9)


def test_a_large_mixed_batch_gains_from_overlap_and_a_small_one_falls_back():
    plain, two = models(2)
    mixed = {"decodes": 1024, "decode_context": 1024 * 1500, "chunks": [(512, 512)]}
    assert two.iteration(**mixed).latency_s < 0.97 * plain.iteration(**mixed).latency_s
    # A small decode batch would only read the weights twice: no overlap, the same time.
    assert math.isclose(two.decode_iteration(16, 16 * 500).latency_s,
                        plain.decode_iteration(16, 16 * 500).latency_s, rel_tol=1e-9)


def test_concurrent_kernels_share_sms_and_a_saturated_hbm():
    gemm, attention, reduce = (Kernel(COMPUTE, 1.0, 0.5), Kernel(MEMORY, 1.0, 1.0),
                               Kernel(NETWORK, 1.0, 0.0))
    net, mem = CONFIG.network_sm_fraction, CONFIG.memory_sm_fraction
    # Alone, each runs at full speed.
    assert speeds([gemm], CONFIG) == [1.0] and speeds([attention], CONFIG) == [1.0]
    # The all-reduce takes its SMs, attention what it needs of the rest, the GEMM the remainder;
    # GEMM (half of HBM) + attention (all of it) ask for more than the HBM has: both slow.
    rates = speeds([gemm, attention, reduce], CONFIG)
    gemm_sms = 1 - net - min(mem, 1 - net)
    demand = gemm_sms * 0.5 + min(1.0, (1 - net) / mem) * 1.0
    assert math.isclose(rates[0], gemm_sms / demand, rel_tol=1e-12)
    assert math.isclose(rates[2], 1.0 / demand, rel_tol=1e-12)


kernels = st.builds(Kernel, st.sampled_from([COMPUTE, MEMORY, NETWORK]),
                    st.floats(1e-6, 1e-3), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(chain=st.lists(kernels, min_size=1, max_size=5), batches=st.integers(1, 4),
       layers=st.integers(1, 4), net=st.floats(0.05, 0.5), mem=st.floats(0.1, 1.0))
def test_overlap_is_never_slower_than_running_the_same_kernels_one_after_another(
        chain, batches, layers, net, mem):
    config = NanoFlowConfig(network_sm_fraction=net, memory_sm_fraction=mem)
    chains = [[list(chain) for _ in range(batches)] for _ in range(layers)]
    serial = sum(k.seconds for k in chain) * batches * layers
    makespan = pipeline_s(chains, config)
    assert makespan <= serial * (1 + 1e-9)
    # and never faster than the busiest stream, nor than one nano-batch's chain.
    busiest = max(sum(k.seconds for k in chain if k.stream == s) for s in (0, 1, 2))
    assert makespan >= busiest * batches * layers * (1 - 1e-9)


def test_a_serving_run_with_overlap_is_never_slower():
    spec = {"model": "llama3-8b", "scheduler": {"policy": "chunked_prefill",
                                                  "max_batched_tokens": 2048,
                                                  "max_num_seqs": 512},
            "requests": {"count": 300, "arrival": {"kind": "burst"},
                         "prompt_tokens": {"kind": "uniform", "min": 200, "max": 1000},
                         "output_tokens": {"kind": "uniform", "min": 100, "max": 300}}}
    plain = ServingWorkload.model_validate(spec).simulate(node(), rng=np.random.default_rng(0))
    over = ServingWorkload.model_validate({**spec, "nanoflow": {"nano_batches": 2}}).simulate(
        node(), rng=np.random.default_rng(0))
    assert over.makespan_s <= plain.makespan_s * (1 + 1e-9)
    assert (over.outcome.generated == plain.outcome.generated).all()

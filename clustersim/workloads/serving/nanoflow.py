"""Intra-device overlap of nano-batches (NanoFlow, Zhu et al., OSDI '25, arXiv 2408.12757).

NanoFlow splits an iteration's batch into nano-batches so that one nano-batch's compute-bound
GEMMs, another's memory-bound decode attention and a third's network-bound all-reduce run at the
same time on one GPU, each kernel on its own share of the SMs. This module times one layer that
way: per nano-batch a chain of four kernels,

    C_pre (norm, QKV, RoPE, and its share of prefill attention) -> M (decode attention of its
    sequences) -> C_post (output projection, MLP) -> N (both tensor-parallel all-reduces)

and the next layer's C_pre of the same nano-batch after N. Each kind runs on its own stream
(one kernel at a time, in the order kernels become ready), and concurrent kernels share the
device by this contention model:

* SMs: a network kernel takes ``network_sm_fraction`` of them, a memory kernel up to
  ``memory_sm_fraction``, a compute kernel the rest; a kernel runs at
  ``min(1, its SMs / the SMs it needs at full speed)`` of its speed alone (a compute kernel
  needs all of them, a memory kernel ``memory_sm_fraction``, a network kernel
  ``network_sm_fraction``);
* HBM: a kernel alone uses ``m`` of the bandwidth (its bytes over the achievable bandwidth, over
  its time alone; 1 for decode attention); when the running kernels ask for more than all of
  it, every one slows by the same factor.

Since every kernel gets at least its SM share of speed, running kernels together never makes
progress slower than running them one after another (``test_serving_nanoflow`` checks it), and
a layer costs ``min(sequential, overlapped)``: NanoFlow's parameter search falls back to no
overlap ("non-overlap" configs) where nano-batching does not pay, e.g. when splitting a small
decode batch only re-reads the weights twice.

Parameters and sources: ``network_sm_fraction`` 24/132 and ``memory_sm_fraction`` 104/132, the
SMs NanoFlow's auto-search gave its all-reduce and decode-attention kernels for LLaMA-2-70B on
H100 (efeslab/Nanoflow, nanoflow/auto_search/result_json/70B_search_result_reverse_v3.json,
``p_value``); ``nano_batches`` 2, as its LLaMA-2-70B configs (config_all/llama2-70B/768.json:
global batch 768, nano-batch 384). Layers beyond the eighth are extrapolated from the steady
increment between the fourth and the eighth (the pipeline repeats layer after layer).

Fidelity: analytical per kernel (the op model), event-level between kernels.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from clustersim.workloads import transformer as tfm

COMPUTE, MEMORY, NETWORK = 0, 1, 2


class NanoFlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    nano_batches: int = Field(2, ge=1, le=16, description="nano-batches per iteration (NanoFlow's "
                                                           "LLaMA-2-70B configs use 2)")
    network_sm_fraction: float = Field(24 / 132, gt=0, lt=1, description=(
        "SM share of an all-reduce kernel (NanoFlow's search: 24 of 132 H100 SMs)"))
    memory_sm_fraction: float = Field(104 / 132, gt=0, le=1, description=(
        "SM share at which decode attention reaches full speed (NanoFlow's search: 104 of 132)"))


@dataclass(frozen=True)
class Kernel:
    """One kernel of the pipeline: its stream, seconds alone, and HBM share used alone."""

    stream: int
    seconds: float
    hbm: float


def speeds(running: list[Kernel], config: NanoFlowConfig) -> list[float]:
    """Fraction of its alone speed each running kernel (at most one per stream) gets."""
    network = config.network_sm_fraction
    left = 1.0
    shares = {}
    for kernel in sorted(running, key=lambda k: -k.stream):     # network, memory, then compute
        if kernel.stream == NETWORK:
            shares[id(kernel)] = min(network, left)
        elif kernel.stream == MEMORY:
            shares[id(kernel)] = min(config.memory_sm_fraction, left)
        else:
            shares[id(kernel)] = left
        left -= shares[id(kernel)]
    need = {COMPUTE: 1.0, MEMORY: config.memory_sm_fraction, NETWORK: network}
    rates = [min(1.0, shares[id(k)] / need[k.stream]) for k in running]
    demand = sum(rate * k.hbm for rate, k in zip(rates, running))
    if demand > 1.0:
        rates = [rate / demand for rate in rates]
    return rates


def pipeline_s(chains: list[list[list[Kernel]]], config: NanoFlowConfig) -> float:
    """Makespan of ``chains[layer][nano_batch]`` (each a list of kernels in order; a nano-batch's
    first kernel of a layer waits for its last of the layer before) on three streams."""
    order: list[tuple[int, int, int]] = []          # (layer, nano-batch, position)
    kernels: dict[tuple[int, int, int], Kernel] = {}
    for layer, batches in enumerate(chains):
        for nb, chain in enumerate(batches):
            for pos, kernel in enumerate(chain):
                kernels[(layer, nb, pos)] = kernel
                order.append((layer, nb, pos))
    rank = {key: i for i, key in enumerate(order)}
    ready: list[list[tuple[int, tuple]]] = [[], [], []]      # per stream: (rank, key)

    def successor(key):
        layer, nb, pos = key
        if pos + 1 < len(chains[layer][nb]):
            return (layer, nb, pos + 1)
        if layer + 1 < len(chains) and nb < len(chains[layer + 1]):
            return (layer + 1, nb, 0)
        return None

    for nb in range(len(chains[0])):
        first = (0, nb, 0)
        heapq.heappush(ready[kernels[first].stream], (rank[first], first))
    running: dict[int, list] = {}                   # stream -> [key, remaining alone-seconds]
    now = 0.0
    while True:
        for stream in (COMPUTE, MEMORY, NETWORK):
            if stream not in running and ready[stream]:
                _, key = heapq.heappop(ready[stream])
                running[stream] = [key, kernels[key].seconds]
        if not running:
            return now
        active = list(running.values())
        rates = speeds([kernels[key] for key, _ in active], config)
        # A kernel left no SMs waits (its rate is 0); the others always get some.
        step = min(left / rate for (_, left), rate in zip(active, rates) if rate > 0)
        now += step
        for (entry, rate) in zip(active, rates):
            entry[1] -= rate * step
        for stream, (key, left) in list(running.items()):
            if left <= 1e-15 * max(1.0, kernels[key].seconds):
                del running[stream]
                nxt = successor(key)
                if nxt is not None:
                    heapq.heappush(ready[kernels[nxt].stream], (rank[nxt], nxt))


class NanoBatchOverlap:
    """Per-layer time of an iteration with nano-batch overlap, for one ``IterationModel``."""

    def __init__(self, config: NanoFlowConfig, iteration_model):
        self.config, self.im = config, iteration_model
        device = iteration_model.device
        rate = getattr(device, "hbm_bandwidth_bytes_per_s", None) \
            or device.tier_for("weights").bandwidth_bytes_per_s
        self.hbm_bytes_per_s = rate * getattr(device, "memory_efficiency", 1.0)
        self._parts: dict[int, tuple[Kernel, Kernel, float]] = {}
        self._layers: dict[tuple, float] = {}
        self.evaluations = 0

    def _token_parts(self, tokens: int) -> tuple[Kernel, Kernel, float]:
        """C_pre and C_post kernels and the all-reduce seconds of ``tokens`` tokens."""
        key = max(1, tokens)
        parts = self._parts.get(key)
        if parts is None:
            im = self.im
            ops = tfm.layer_forward(im.model, micro_batch=1, seq_len=key, tp=im.tp,
                                    dtype=im.dtype)
            cut = next(i for i, op in enumerate(ops) if op.name == "attn_core")
            kernels = []
            for group in (ops[:cut], ops[cut + 1:]):
                compute = [op for op in group if not op.kind.is_communication]
                seconds = sum(im.device.op_time(op) for op in compute)
                moved = sum(op.bytes_read + op.bytes_written for op in compute)
                kernels.append(Kernel(COMPUTE, seconds, min(1.0, moved / self.hbm_bytes_per_s
                                                            / seconds) if seconds else 0.0))
            network = im._time([op for op in ops if op.kind.is_communication])
            parts = self._parts[key] = (kernels[0], kernels[1], network)
        return parts

    def layer_s(self, tokens: int, decodes: int, mean_context: float,
                prefill_attention_s: float) -> float:
        """One layer: min(sequential, overlapped) (see the module docstring). The overlapped
        time is computed at the token bucket and at the context grid points around
        ``mean_context``, and interpolated between them, as attention times are."""
        from clustersim.workloads.serving.iteration import bucket, context_grid

        im, k = self.im, self.config.nano_batches
        decode_s = im.decode_attention_s(decodes, mean_context) if decodes else 0.0
        sequential = im.linear_s(tokens) + decode_s + prefill_attention_s
        if k == 1 or tokens < k:
            return sequential
        tokens = bucket(tokens)
        if not decodes:
            return min(sequential, self._cached(tokens, 0, 0, prefill_attention_s))
        lo, hi = context_grid(max(mean_context, 1.0))
        lo = max(lo, 1)
        overlapped = self._cached(tokens, decodes, lo, prefill_attention_s)
        if mean_context > lo:
            high = self._cached(tokens, decodes, hi, prefill_attention_s)
            overlapped += (high - overlapped) * (mean_context - lo) / (hi - lo)
        return min(sequential, overlapped)

    def _cached(self, tokens: int, decodes: int, context: int, prefill_s: float) -> float:
        key = (tokens, decodes, context, prefill_s)
        value = self._layers.get(key)
        if value is None:
            value = self._layers[key] = self._overlapped(tokens, decodes, context, prefill_s)
        return value

    def _overlapped(self, tokens: int, decodes: int, mean_context: float,
                    prefill_attention_s: float) -> float:
        im, k = self.im, self.config.nano_batches
        self.evaluations += 1
        chains_one_layer = []
        for j in range(k):
            share = tokens * (j + 1) // k - tokens * j // k
            mine = decodes * (j + 1) // k - decodes * j // k
            pre, post, network = self._token_parts(share)
            pre = Kernel(COMPUTE, pre.seconds + prefill_attention_s / k, pre.hbm)
            chain = [pre]
            if mine:
                chain.append(Kernel(MEMORY, im.decode_attention_s(mine, mean_context), 1.0))
            chain.append(post)
            if network > 0:
                chain.append(Kernel(NETWORK, network, 0.0))
            chains_one_layer.append(chain)
        layers = im.layers_per_stage
        if layers <= 8:
            return pipeline_s([chains_one_layer] * layers, self.config) / layers
        four = pipeline_s([chains_one_layer] * 4, self.config)
        eight = pipeline_s([chains_one_layer] * 8, self.config)
        return (eight + (layers - 8) * (eight - four) / 4) / layers

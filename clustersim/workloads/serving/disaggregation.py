"""Serving pools and disaggregated prefill/decode (Splitwise, Patel et al., ISCA '24; DistServe,
Zhong et al., OSDI '24).

A deployment is one or more pools of replicas, each with its own size, parallelism and GPU
model. A ``mixed`` pool serves requests whole (colocated serving: the default, one pool from
``parallel``). A ``prefill`` pool computes prompts and their first token; a ``decode`` pool
generates the rest. When a prefill ends, the request's KV cache moves to a decode replica:

1. the decode replica with the least work reserves the request's blocks (above its watermark,
   and within its ``max_num_seqs``; if they do not fit, the request waits in that replica's
   reservation queue, first come first served, while its prefill replica keeps holding the
   KV: back-pressure, as DistServe's decode instances pull KV only when they have room);
2. the KV crosses the fabric as one coflow: the whole model's KV of the context, split evenly
   over ``max(prefill GPUs, decode GPUs)`` flows pairing the replicas' GPUs in rank order (each
   GPU sends its own layers' and heads' share); NVLink inside a node, the NICs and the network
   between nodes, sharing links with every other flow (max-min fair);
3. the prefill replica frees the blocks, the decode replica adds the request to its decode
   batch, and the first token counts as delivered (TTFT includes the transfer, as Splitwise
   measures it). A request with one output token ends at its prefill.

``kv_transfer: layerwise`` overlaps the transfer with prefill layer by layer (Splitwise's
layer-wise pipelining): layer l's KV can leave as soon as layer l is computed, so only the last
layer's share, or the backlog the link could not drain during the prefill, is left when it
ends. The overlapped part is taken to drain at the idle-fabric rate; the exposed remainder is a
timed flow like the rest (an approximation, stated in the metrics' docs).

Fidelity: event-level (transfers are fabric flows; reservations are block-exact).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clustersim.sim.program import FlowStep
from clustersim.workloads.serving.iteration import idle_steps_s
from clustersim.workloads.serving.kv_cache import KVLayout

_STRICT = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(BaseModel):
    model_config = _STRICT

    name: str | None = Field(None, description="pool name in metrics (default: its role, or "
                                               "role + index when a role repeats)")
    role: Literal["mixed", "prefill", "decode"] = Field(
        description="mixed: whole requests (colocated); prefill: prompts and first tokens; "
                    "decode: the remaining tokens, after the KV transfer")
    replicas: int = Field(1, ge=1, description="replicas in the pool")
    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per stage")
    pp: int = Field(1, ge=1, description="pipeline stages per replica")
    gpu: str | None = Field(None, description="GPU preset of this pool's GPUs (e.g. "
                                              "H200-SXM-141GB); default the cluster's")


class KVTransferConfig(BaseModel):
    model_config = _STRICT

    mode: Literal["after_prefill", "layerwise"] = Field(
        "after_prefill", description="after_prefill: the whole KV moves when the prefill ends "
                                     "(DistServe); layerwise: pipelined with the prefill's "
                                     "layers (Splitwise)")


@dataclass(frozen=True)
class PoolSetup:
    """A resolved pool: its replicas occupy devices ``first_device`` onwards."""

    name: str
    role: str
    tp: int
    pp: int
    replicas: int
    layout: KVLayout
    first_device: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.replicas


def pool_names(pools) -> list[str]:
    """Each pool's name: given, else its role (with its index when the role repeats)."""
    roles = [p.role for p in pools]
    return [p.name or (p.role if roles.count(p.role) == 1 else f"{p.role}{i}")
            for i, p in enumerate(pools)]


def with_pool_devices(cluster, pools) -> object:
    """The cluster with each pool's devices replaced by its ``gpu`` preset (if any); host
    memory and host links stay the node's."""
    from clustersim.hardware.presets import load_gpu

    if not any(p.gpu for p in pools):
        return cluster
    devices = list(cluster.devices)
    first = 0
    for pool in pools:
        count = pool.replicas * pool.tp * pool.pp
        if pool.gpu:
            base = cluster.devices[first]
            gpu = load_gpu(pool.gpu, host_memory_bytes=getattr(base, "host_memory_bytes", None),
                           host_link_bandwidth_bytes_per_s=getattr(
                               base, "host_link_bandwidth_bytes_per_s", None))
            devices[first:first + count] = [gpu] * count
        first += count
    return dataclasses.replace(cluster, devices=devices)


def transfer_pairs(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Flows of one KV transfer: GPUs paired in rank order, ``max(len)`` flows."""
    n = max(len(src), len(dst))
    return tuple((src[i % len(src)], dst[i % len(dst)]) for i in range(n))


class KVHandoff:
    """Moves requests from prefill engines to decode engines (see the module docstring)."""

    def __init__(self, deployment, decode_engines, *, mode: str):
        self.deployment = deployment
        self.sim, self.env = deployment.sim, deployment.sim.env
        self.fabric = self.sim.fabric
        self.decode_engines = decode_engines
        self.mode = mode
        self.waiting: dict[int, deque] = {e.index: deque() for e in decode_engines}
        self._pairs: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
        self._idle_s: dict[tuple[int, int], float] = {}     # idle seconds per byte, per route
        self.transfers = 0
        self.bytes_moved = 0.0

    # -- the prefill side -------------------------------------------------------------------
    def prefilled(self, seq, source, now: float) -> None:
        """``source`` finished ``seq``'s prefill at ``now`` (its first token is computed)."""
        target = min(self.decode_engines,
                     key=lambda e: e.outstanding() + len(self.waiting[e.index]))
        seq.handoff_s = now
        self.waiting[target.index].append((seq, source))
        self.admit(target, now)

    # -- the decode side --------------------------------------------------------------------
    def admit(self, target, now: float) -> None:
        """Reserve ``target``'s blocks for the waiting handoffs that fit, in order, and start
        their transfers."""
        queue = self.waiting[target.index]
        blocks = target.blocks
        slots = target.policy.max_num_seqs
        while queue:
            seq, source = queue[0]
            need = -(-seq.context // target.block_size)
            if blocks.available - need < blocks.watermark or target.running() >= slots:
                return
            queue.popleft()
            blocks.allocate(need)
            target.reserved += 1
            self.env.process(self._transfer(seq, source, target, now))

    def _transfer(self, seq, source, target, now: float):
        env = self.env
        if now > env.now:               # engines may run ahead of the simpy clock
            yield env.timeout(now - env.now)
        seq.kv_wait_s = env.now - seq.handoff_s
        start = env.now
        total = seq.context * source.layout.bytes_per_token
        pairs = self._route(source, target)
        size = total / len(pairs)
        if self.mode == "layerwise":
            size *= self._exposed_fraction(seq, source, target, pairs, size, start)
        yield self.fabric.coflow(pairs, size)
        self.transfers += 1
        self.bytes_moved += size * len(pairs)
        seq.kv_transfer_s = env.now - start
        source.release_transferred(seq, env.now)
        target.accept(seq, env.now)
        if self.sim.record_trace:
            self.sim.recorder.span(source.placement.names[0], "kv transfer", "kv transfer",
                                   start, env.now, "transfer", request=seq.rid,
                                   to=target.name, bytes=size * len(pairs))

    def _route(self, source, target) -> tuple[tuple[int, int], ...]:
        key = (source.placement.index, target.placement.index)
        pairs = self._pairs.get(key)
        if pairs is None:
            pairs = self._pairs[key] = transfer_pairs(source.placement.devices,
                                                      target.placement.devices)
        return pairs

    def _exposed_fraction(self, seq, source, target, pairs, size: float, now: float) -> float:
        """Layer-wise: the share of the bytes left when the prefill ends. With L layers computed
        over a window W and the bytes draining in T on the idle fabric, layer l's KV leaves as
        layer l is done, so max(T / L, T - W (L - 1) / L) of drain time remains (and the path
        latency, paid once)."""
        key = (source.placement.index, target.placement.index)
        per_byte = self._idle_s.get(key)
        if per_byte is None:        # drain seconds per byte (the idle time is affine in bytes)
            one, two = (idle_steps_s(self.fabric, (FlowStep(pairs, size),))
                        for size in (2.0**20, 2.0**21))
            per_byte = self._idle_s[key] = (two - one) / 2**20
        transfer_s = per_byte * size
        if transfer_s <= 0:
            return 1.0
        layers = source.model.model.num_layers
        window = max(0.0, seq.handoff_s - seq.prefill_start_s)
        exposed = max(transfer_s / layers, transfer_s - window * (layers - 1) / layers)
        return min(1.0, exposed / transfer_s)

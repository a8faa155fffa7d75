"""A serving deployment on a cluster: replicas, their engines, the router and the arrivals.

``simulate(setup, cluster, rng=..., record_trace=...)`` builds one ``Simulation`` whose fabric is
the cluster's plus one host link per GPU and direction (the swap path), places replica ``r`` on
GPUs ``r * tp * pp`` onwards (TP fastest, then stages), starts every virtual engine, feeds
requests in arrival order (or, closed loop, one per user at a time), runs until every request
has finished or been rejected, and returns a ``ServingResult``.

Events: none per request when arrivals are open loop and routing is fixed (round robin or
random over one-engine replicas): each engine takes its requests as its clock passes their
arrival times. Otherwise one per distinct arrival time (or per closed-loop request). At most a
handful per iteration (see ``replica.py``).
A request that can never fit (prompt + output - 1 tokens above the KV capacity, or above the
model's context window) is rejected at arrival with its reason; it is counted, never dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clustersim.errors import DeadlockError
from clustersim.hardware.cluster import Cluster
from clustersim.schedules.serving import make_policy
from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Link
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.serving.cluster_router import FIXED_ROUTERS, ClusterRouter
from clustersim.workloads.serving.disaggregation import KVHandoff, PoolSetup
from clustersim.workloads.serving.iteration import IterationModel, fabric_timing, idle_steps_s
from clustersim.workloads.serving.kv_cache import BlockManager, KVLayout
from clustersim.workloads.serving.replica import Outcome, Pipeline, ReplicaPlacement, VirtualEngine
from clustersim.workloads.serving.requests import RequestSet
from clustersim.workloads.serving.sequence import Seq


@dataclass(frozen=True)
class Setup:
    """Everything a run needs, resolved from the workload config (see ``workload.py``)."""

    model: ModelConfig
    max_model_len: int
    dtype: str
    kv_dtype: str
    tp: int
    pp: int
    replicas: int
    router: str
    policy: str
    policy_settings: dict[str, Any]
    layout: KVLayout
    watermark: float
    prefix_caching: bool
    preemption: str
    swap_space_bytes: float
    iteration_overhead_s: float
    requests: RequestSet
    # Pools of replicas (disaggregation.py); empty: one mixed pool of ``replicas`` x tp x pp.
    pools: tuple[PoolSetup, ...] = ()
    kv_transfer: str = "after_prefill"
    router_imbalance_threshold: int = 16
    nanoflow: Any = None          # a NanoFlowConfig: nano-batch overlap inside each iteration
    tp_collectives: str = "closed_form"   # or "fabric": all-reduces as flows on the fabric

    def resolved_pools(self) -> tuple[PoolSetup, ...]:
        return self.pools or (PoolSetup("mixed", "mixed", self.tp, self.pp, self.replicas,
                                        self.layout, 0),)


class _HostLinks:
    """Routes GPU <-> host transfers over the GPU's own host link (endpoint ``n + gpu`` is GPU
    ``gpu``'s host side); everything else goes as the cluster routes it."""

    def __init__(self, router, num_devices: int, first_link: int):
        self.router, self.n, self.first = router, num_devices, first_link
        self.static = bool(getattr(router, "static", False))

    def paths(self, src: int, dst: int, fabric):
        n = self.n
        if dst >= n:
            return [((self.first + 2 * src,), 1.0)]
        if src >= n:
            return [((self.first + 2 * dst + 1,), 1.0)]
        return self.router.paths(src, dst, fabric)


def host_links(cluster: Cluster) -> list[Link]:
    links = []
    for name, device in zip(cluster.names, cluster.devices):
        rate = getattr(device, "host_link_bandwidth_bytes_per_s", None) or 1.0
        links.append(Link(f"{name}.host.d2h", rate, tier="host"))
        links.append(Link(f"{name}.host.h2d", rate, tier="host"))
    return links


@dataclass
class ServingResult:
    """One run: per-request outcomes, per-engine statistics, and the trace if recorded."""

    setup: Setup
    requests: RequestSet          # with the arrival times that happened (closed loop included)
    outcome: Outcome
    engines: list[VirtualEngine]
    pipelines: list[Pipeline]
    makespan_s: float
    trace: Any = None
    router: Any = None            # the ClusterRouter, with the load each replica saw


class _Deployment:
    def __init__(self, setup: Setup, cluster: Cluster, rng: np.random.Generator,
                 record_trace: bool):
        self.setup, self.cluster, self.rng = setup, cluster, rng
        n = cluster.num_devices
        links = list(cluster.links) + host_links(cluster)
        memory = cluster.memory()
        resident = {}
        self.pools = setup.resolved_pools()
        for pool in self.pools:
            for device in range(pool.first_device, pool.first_device + pool.gpus):
                tier = cluster.devices[device].tier_for("weights").name
                resident[cluster.names[device]] = {tier: pool.layout.weight_bytes_per_gpu}
        self.sim = Simulation(device_names=cluster.names, memory=memory, resident=resident,
                              links=links, router=_HostLinks(cluster.router, n, len(cluster.links)),
                              record_trace=record_trace)
        # A copy: closed-loop arrivals are filled in as they happen.
        arrival = np.array(setup.requests.arrival_s, dtype=float)
        self.requests = dataclasses.replace(setup.requests, arrival_s=arrival)
        self.outcome = Outcome.empty(len(setup.requests))
        # Python lists: per-request scalar reads are several times faster than from numpy.
        self._prompt = self.requests.prompt_tokens.tolist()
        self._output = self.requests.output_tokens.tolist()
        self._prefix_id = self.requests.prefix_id.tolist()
        self._prefix_tokens = self.requests.prefix_tokens.tolist()
        self._hashes = self.requests.block_hashes
        self._hash_tokens = self.requests.hash_block_tokens
        # KV blocks per hashed block of a trace with hash ids (radix-tree nodes), else 0.
        self._node_blocks = (self._hash_tokens // setup.layout.block_size
                             if self._hashes is not None else 0)
        self.engines: list[VirtualEngine] = []
        self.pipelines: list[Pipeline] = []
        self.replica_engines: list[list[VirtualEngine]] = []     # where requests arrive
        decode_engines: list[VirtualEngine] = []
        for pool in self.pools:
            for r in range(pool.replicas):
                engines = self._build_replica(pool, r)
                if pool.role == "decode":
                    decode_engines.extend(engines)
                else:
                    self.replica_engines.append(engines)
        self.router = ClusterRouter(setup.router, self.replica_engines, rng,
                                    imbalance_threshold=setup.router_imbalance_threshold)
        self.handoff = None
        if decode_engines:
            self.handoff = KVHandoff(self, decode_engines, mode=setup.kv_transfer)
            for engine in self.engines:
                engine.handoff = self.handoff
        self._next_closed = 0
        self._closed = setup.requests.closed

    def _build_replica(self, pool: PoolSetup, r: int) -> list[VirtualEngine]:
        setup, cluster = self.setup, self.cluster
        per_replica = pool.tp * pool.pp
        first = pool.first_device + r * per_replica
        devices = tuple(range(first, first + per_replica))
        lead = cluster.devices[devices[0]]
        offload = lead.tier_for("offload")
        index = len(self.pipelines)
        placement = ReplicaPlacement(index, devices, tuple(cluster.names[d] for d in devices),
                                     pool.tp, pool.pp, kv_tier=lead.tier_for("kv").name,
                                     offload_tier=offload.name if offload else None)
        collective_s, send_s = fabric_timing(cluster, self.sim.fabric, devices[:pool.tp],
                                             placement.stage_leads)
        model = IterationModel(setup.model, lead, tp=pool.tp,
                               pp=pool.pp, dtype=setup.dtype, kv_dtype=setup.kv_dtype,
                               collective_s=collective_s, send_s=send_s,
                               overhead_s=setup.iteration_overhead_s, overlap=setup.nanoflow,
                               # the idle fabric of this cluster times its collectives, sends
                               cache_key=(id(cluster), devices[:pool.tp], placement.stage_leads),
                               cache_anchors=(cluster,))
        pipeline = Pipeline(pool.pp)
        self.pipelines.append(pipeline)
        layout = pool.layout
        blocks_per_engine = layout.blocks // pool.pp
        host_blocks = int(setup.swap_space_bytes // layout.block_bytes_per_gpu) // pool.pp \
            if setup.preemption == "swap" else 0
        engines = []
        for k in range(pool.pp):
            name = f"replica{index}" if pool.pp == 1 else f"replica{index}.ve{k}"
            blocks = BlockManager(blocks_per_engine,
                                  watermark_blocks=int(setup.watermark * blocks_per_engine),
                                  prefix_caching=setup.prefix_caching, host_blocks=host_blocks,
                                  node_blocks=self._node_blocks)
            engine = VirtualEngine(
                sim=self.sim, name=name, index=len(self.engines), placement=placement,
                policy=make_policy(setup.policy, **setup.policy_settings), blocks=blocks,
                layout=layout, model=model, pipeline=pipeline, outcome=self.outcome,
                on_done=self._on_done, swap=setup.preemption == "swap",
                host_endpoint=lambda g, n=cluster.num_devices: n + g, role=pool.role,
                pool=pool.name, fabric_collectives=self._fabric_collectives(devices[:pool.tp]))
            engines.append(engine)
            self.engines.append(engine)
        return engines

    def _fabric_collectives(self, group: tuple[int, ...]):
        """For ``tp_collectives: fabric``: the all-reduce's idle-fabric line over ``group``
        (intercept, seconds per byte; the same two probes ``fabric_timing`` uses, so the two
        agree exactly on an idle fabric) and its flow steps for a size."""
        if self.setup.tp_collectives != "fabric" or len(group) < 2:
            return None
        cluster, fabric, probe = self.cluster, self.sim.fabric, float(2**20)

        def steps(size_bytes: float):
            return cluster.collective("all_reduce", list(group), size_bytes)

        one, two = (idle_steps_s(fabric, steps(size)) for size in (probe, 2 * probe))
        return one - (two - one), (two - one) / probe, steps

    # -- arrivals and routing ---------------------------------------------------------------
    def _arrivals(self):
        env = self.sim.env
        arrival = self.requests.arrival_s
        known = np.flatnonzero(~np.isnan(arrival))
        if self._closed is not None:
            self._next_closed = len(known)
        times = arrival[known].tolist()
        for i, time_s in zip(known.tolist(), times):
            wait = time_s - env.now
            if wait > 0:
                yield env.timeout(wait)
            self._dispatch(i)

    def _on_done(self, rid: int, now: float) -> None:
        """Request ``rid`` ended (or was rejected) at ``now``: a closed-loop user thinks, then
        sends its next request. ``now`` may be ahead of the simpy clock (engines run iterations
        inline when nothing else is due)."""
        closed = self._closed
        if closed is None or self._next_closed >= len(self.requests):
            return
        i = self._next_closed
        self._next_closed += 1
        # Always through an event, so that a run of rejections does not recurse.
        delay = max(0.0, now + closed.think_s(self.rng) - self.sim.env.now)
        self.sim.env.timeout(delay).callbacks.append(lambda _event: self._dispatch(i))

    def _dispatch(self, i: int, now: float | None = None,
                  engine: VirtualEngine | None = None) -> None:
        """Request ``i`` arrives at ``now`` (default: the simpy clock): rejected, or queued on
        ``engine`` (default: the router's choice)."""
        req, out = self.requests, self.outcome
        if now is None:
            now = self.sim.env.now
        if self._closed is not None and math.isnan(req.arrival_s[i]):
            req.arrival_s[i] = now
        prompt, output = self._prompt[i], self._output[i]
        reason = self._rejection(prompt, output)
        if reason is not None:
            out.status[i] = 2
            out.reasons[i] = reason
            out.finish_s[i] = now
            self._on_done(i, now)
            return
        seq = self._sequence(i, prompt, output)
        if engine is None:
            engine = self.router.choose(seq)
        out.engine[i] = engine.index
        engine.submit(seq)
        self.router.note(now, engine.placement.index, engine.outstanding())

    def _sequence(self, i: int, prompt: int, output: int) -> Seq:
        """Request ``i`` as an engine sequence with its shareable prefix: the hashed blocks that
        lie wholly before its last prompt token (a trace with hash ids), or its ``prefix_id``'s
        full blocks."""
        if self._node_blocks:
            path = self._hashes[i][:(prompt - 1) // self._hash_tokens]
            if path:     # grouped by its first block: prefix id -2 - hash (never -1, "none")
                return Seq(i, prompt, output, -2 - path[0], len(path) * self._node_blocks, path)
        prefix_id = self._prefix_id[i]
        prefix_blocks = 0
        if prefix_id >= 0:
            prefix_blocks = min(self._prefix_tokens[i], prompt - 1) // self.setup.layout.block_size
        return Seq(i, prompt, output, prefix_id if prefix_blocks else -1, prefix_blocks)

    def _rejection(self, prompt: int, output: int) -> str | None:
        setup = self.setup
        total = prompt + output
        if total > setup.max_model_len:
            return (f"prompt {prompt} + output {output} tokens exceed the context window of "
                    f"{setup.max_model_len} tokens")
        size = setup.layout.block_size
        for engine in self._smallest_engines:
            blocks = engine.blocks
            usable = blocks.total - blocks.watermark
            # A prefill engine holds the prompt; the others the whole request.
            prefill = engine.role == "prefill"
            need = -(-(prompt if prefill else total - 1) // size)
            if need > usable:
                what = f"prompt {prompt} tokens" if prefill else \
                    f"prompt {prompt} + output {output} - 1 tokens"
                where = "an engine" if len(self.pools) == 1 else \
                    f"an engine of the {engine.pool} pool"
                return (f"{what} need {need} KV blocks of {size} tokens, but {where} has "
                        f"{usable} usable ({blocks.total} minus the {blocks.watermark}-block "
                        "watermark)")
        return None

    @functools.cached_property
    def _smallest_engines(self) -> list[VirtualEngine]:
        """The engine with the fewest blocks of each pool."""
        pools: dict[str, VirtualEngine] = {}
        for engine in self.engines:
            known = pools.get(engine.pool)
            if known is None or engine.blocks.total < known.blocks.total:
                pools[engine.pool] = engine
        return list(pools.values())

    # -- the run ----------------------------------------------------------------------------
    def _feed_engines(self) -> bool:
        """Open-loop arrivals with a fixed route (round robin or random over one-engine
        replicas) need no events: each engine takes its requests as its clock passes their
        arrival times. Returns False when routing depends on the state at arrival."""
        if self._closed is not None or self.setup.router not in FIXED_ROUTERS \
                or any(len(engines) > 1 for engines in self.replica_engines):
            return False
        arrival = self.requests.arrival_s
        order = np.argsort(arrival, kind="stable")
        route = self.router.fixed_routes(len(order))
        plain = self._plain_requests()
        for r, engines in enumerate(self.replica_engines):
            mine = order[route == r]
            engines[0].feed(arrival[mine].tolist(), mine.tolist(), self._dispatch, plain,
                            self.router.samples)
        return True

    def _plain_requests(self) -> tuple[list, list, list] | None:
        """(flags, prompt tokens, output tokens) per request, the flag set when ``_dispatch``
        would accept the request and give it no shared prefix (so an engine may queue it
        itself): ``_rejection`` and ``_sequence`` for the whole trace at once."""
        if self._node_blocks:
            return None
        setup, req = self.setup, self.requests
        prompt, output = req.prompt_tokens.astype(np.int64), req.output_tokens.astype(np.int64)
        size = setup.layout.block_size
        ok = prompt + output <= setup.max_model_len
        for engine in self._smallest_engines:
            held = prompt if engine.role == "prefill" else prompt + output - 1
            ok &= -(-held // size) <= engine.blocks.total - engine.blocks.watermark
        prefix_blocks = np.minimum(req.prefix_tokens, prompt - 1) // size
        ok &= (req.prefix_id < 0) | (prefix_blocks <= 0)
        return ok.tolist(), self._prompt, self._output

    def run(self) -> ServingResult:
        env = self.sim.env
        if not self._feed_engines():
            env.process(self._arrivals())
        env.run()
        pending = np.flatnonzero(self.outcome.status == 0)
        if len(pending):
            states = "; ".join(f"{e.name}: {len(e.queue)} waiting, {len(e.prefilling)} "
                               f"prefilling, {e.group.n} decoding, {len(e.swapped)} swapped"
                               for e in self.engines)
            raise DeadlockError(f"serving run stopped at t={env.now:.6g} s with {len(pending)} "
                                f"requests unfinished (first: {pending[:5].tolist()}); {states}")
        for engine in self.engines:
            engine.blocks.check()
        trace = self.sim.trace() if self.sim.record_trace else None
        return ServingResult(self.setup, self.requests, self.outcome, self.engines, self.pipelines,
                             env.now, trace, self.router)


def simulate(setup: Setup, cluster: Cluster, *, rng: np.random.Generator,
             record_trace: bool = False) -> ServingResult:
    """Run the deployment described by ``setup`` on ``cluster`` to completion."""
    return _Deployment(setup, cluster, rng, record_trace).run()

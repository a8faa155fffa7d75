"""Workload ``coe``: composition of experts served from a capacity tier through a weights tier.

After Samba-CoE (Prabhakar et al., "SambaNova SN40L: Scaling the AI Memory Wall with Dataflow
and Composition of Experts", arXiv 2405.07518, 2024): many expert models (7B-class) wait in the
device's offload tier (an RDU's DDR, a GPU node's host DDR behind PCIe); a router sends each
request to one expert; the experts in use are kept in the weights tier (HBM) as an LRU cache;
a request for an absent expert first switches it in (evicting the least recently used).

    workload:
      kind: coe
      expert: llama2-7b            # every expert's shape (preset or mapping)
      experts: 150
      requests: 64
      mix: zipf                    # uniform | zipf (expert i drawn with p ~ 1 / (i + 1)^skew)
      skew: 1.0
      prompt_tokens: 256
      output_tokens: 32
      execution: fused             # fused (a decoder layer as one graph) | kernels

Fidelity: event-level. One node serves one expert at a time with tensor parallelism over all
its devices; requests run one after another in arrival order (all arrive at t = 0, router time
is not modelled). Each device runs, per request, an optional eviction and switch on its
``switch`` stream, then the request on its ``compute`` stream::

    switch_s  = device.copy_time_s(expert_bytes / tp, offload tier, weights tier)
              = bytes / min(bandwidths) (+ the RDU's DMA setup latency)
    request_s = prefill(prompt) + sum over output tokens of one decode step
    step      = layers x (layer cost, ``fused_dataflow``) + TP all-reduces (idle-fabric closed
                form) + the LM head

Every switch allocates the expert's share on the weights tier and every eviction frees it, so
the engine's memory pools check that capacities are never exceeded; the trace shows the
switches beside the compute. Metrics: HBM hit rate, switches, switch time, share of the run
spent switching, throughput, latency (switch + service; mean and p99), and the nodes needed
to hold every expert in the weights tier, or in the offload tier.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
from pydantic import Field

from clustersim import ops
from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.ops import dtype_bytes
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program
from clustersim.workloads.fused_dataflow import layer_cost
from clustersim.workloads.models import ModelConfig, get_model
from clustersim.workloads.workload import RunResult, Workload


class CoeWorkload(Workload, kind="coe"):
    kind: Literal["coe"] = "coe"
    expert: str | dict[str, Any] = Field("llama2-7b", description="each expert's model shape")
    experts: int = Field(150, ge=1, description="number of expert models")
    requests: int = Field(64, ge=1, description="requests, each routed to one expert")
    mix: Literal["uniform", "zipf"] = Field("zipf", description="how the router spreads requests")
    skew: float = Field(1.0, ge=0, description="zipf exponent (0 = uniform)")
    prompt_tokens: int = Field(256, ge=1, description="prompt length of every request")
    output_tokens: int = Field(32, ge=1, description="tokens generated per request")
    execution: Literal["fused", "kernels"] = Field(
        "kernels", description="fused: a decoder layer as one dataflow graph; kernels: op by op")
    weights_fraction: float = Field(0.9, gt=0, le=1, description="share of the weights tier "
                                    "that holds resident experts (the rest: KV, activations)")
    dtype: Literal["bf16", "fp16"] = Field("bf16", description="weight and compute dtype")
    route_seed: int | None = Field(
        0, description="seed of the router's draws, so that every point of a sweep sees the "
                       "same requests; null: draw from the run's generator")

    # -- setup ----------------------------------------------------------------------------------
    def model(self) -> ModelConfig:
        return get_model(self.expert) if isinstance(self.expert, str) else \
            ModelConfig.from_dict(self.expert)

    def expert_bytes(self) -> float:
        return self.model().params_total * dtype_bytes(self.dtype)

    def plan(self, cluster: Cluster) -> dict[str, Any]:
        """Tiers, per-device sizes and cache slots; ConfigError when the experts do not fit."""
        device = cluster.devices[0]
        tp = cluster.gpus_per_node
        weights, offload = device.tier_for("weights"), device.tier_for("offload")
        if offload is None:
            raise ConfigError(f"{device.name} has no offload tier (tiers: "
                              f"{[t.name for t in device.memory_tiers]}); experts must wait "
                              "in host DDR or device DDR: use a node with host memory or an RDU",
                              key="cluster.node")
        per_device = self.expert_bytes() / tp
        slots = int(self.weights_fraction * weights.capacity_bytes // per_device)
        if slots < 1:
            raise ConfigError(f"one expert ({self.expert_bytes() / 2**30:.1f} GiB, "
                              f"{per_device / 2**30:.2f} GiB per device at tp={tp}) fits no "
                              f"tier: {weights.name} holds {weights.capacity_bytes / 2**30:.1f} GiB "
                              f"per device; use more devices per node or a smaller expert",
                              key="workload.expert")
        needed = self.experts * per_device
        if needed > offload.capacity_bytes:
            nodes = math.ceil(needed / offload.capacity_bytes)
            raise ConfigError(f"{self.experts} experts need {needed / 2**30:.0f} GiB of "
                              f"{offload.name} per device, the node has "
                              f"{offload.capacity_bytes / 2**30:.0f} GiB ({nodes} nodes would "
                              "hold them); lower workload.experts", key="workload.experts")
        return {"device": device, "tp": tp, "weights": weights.name, "offload": offload.name,
                "per_device": per_device, "slots": slots,
                "weights_node_bytes": weights.capacity_bytes * tp,
                "offload_node_bytes": offload.capacity_bytes * tp}

    def check(self, cluster: Cluster) -> None:
        try:
            self.model()
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.expert") from None
        try:
            cluster.devices[0].peak_flops(self.dtype)
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.dtype") from None
        self.plan(cluster)

    def route(self, rng: np.random.Generator) -> np.ndarray:
        """The expert of every request (the router), drawn from ``route_seed``'s generator, or
        from the run's when it is null."""
        if self.route_seed is not None:
            rng = np.random.default_rng(self.route_seed)
        if self.mix == "uniform" or self.skew == 0:
            return rng.integers(0, self.experts, size=self.requests)
        weights = 1.0 / np.arange(1, self.experts + 1) ** self.skew
        return rng.choice(self.experts, size=self.requests, p=weights / weights.sum())

    # -- timing ---------------------------------------------------------------------------------
    def request_time_s(self, cluster: Cluster, fabric, tp: int) -> float:
        """Prefill then every decode step of one request on the node (batch of one)."""
        from clustersim.workloads.serving.iteration import idle_steps_s

        model, device, eb = self.model(), cluster.devices[0], dtype_bytes(self.dtype)
        group = list(range(tp))

        def all_reduce_s(tokens: int) -> float:
            if tp == 1:
                return 0.0
            steps = cluster.collective("all_reduce", group, tokens * model.hidden_size * eb)
            return idle_steps_s(fabric, steps)

        def step_s(tokens: int, context: int) -> float:
            layer = layer_cost(device, model, tokens=tokens, context=context, tp=tp,
                               dtype=self.dtype, execution=self.execution)
            head = ops.matmul(1, math.ceil(model.vocab_size / tp), model.hidden_size,
                              dtype=self.dtype, shared_b=True, name="lm_head")
            return model.num_layers * (layer.time_s + 2 * all_reduce_s(tokens)) + \
                device.op_time(head)

        total = step_s(self.prompt_tokens, self.prompt_tokens)
        for t in range(1, self.output_tokens):
            total += step_s(1, self.prompt_tokens + t)
        return total

    # -- run ------------------------------------------------------------------------------------
    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        self.check(cluster)
        plan = self.plan(cluster)
        tp, per_device, device = plan["tp"], plan["per_device"], plan["device"]
        names = cluster.names[:tp]
        memory = {n: cluster.memory()[n] for n in names}
        resident = {n: {plan["offload"]: self.experts * per_device} for n in names}
        sim = Simulation(device_names=names, memory=memory, resident=resident,
                         links=cluster.links, router=cluster.router, record_trace=True)
        service_s = self.request_time_s(cluster, sim.fabric, tp)
        switch_s = device.copy_time_s(per_device, plan["offload"], plan["weights"])
        program = Program()
        for name in names:
            program.device(name)
        cache: OrderedDict[int, None] = OrderedDict()
        last = [() for _ in names]                  # each device's previous request task
        hits, latency = 0, []
        routed = self.route(rng)
        for request, expert in enumerate(routed.tolist()):
            hit = expert in cache
            if hit:
                cache.move_to_end(expert)
                hits += 1
            else:
                victims = []
                while len(cache) >= plan["slots"]:
                    victims.append(cache.popitem(last=False)[0])
                cache[expert] = None
            labels = {"request": request, "expert": expert}
            for d in range(tp):
                deps = last[d]
                if not hit:
                    if victims:
                        deps = (program.compute(d, "switch", f"evict {victims}", 0.0, deps=deps,
                                                free=[(plan["weights"], per_device * len(victims))],
                                                category="tier_copy", labels=labels),)
                    deps = (program.compute(d, "switch", f"switch in expert {expert}", switch_s,
                                            deps=deps, alloc=[(plan["weights"], per_device)],
                                            category="tier_copy",
                                            labels={**labels, "bytes": per_device,
                                                    "src": plan["offload"],
                                                    "dst": plan["weights"]}),)
                last[d] = (program.compute(d, "compute", f"expert {expert}", service_s,
                                           deps=deps, labels=labels),)
            latency.append(service_s + (0.0 if hit else switch_s))
        trace = sim.run_program(program)
        makespan = sim.env.now
        switches = self.requests - hits
        total_bytes = self.experts * self.expert_bytes()
        metrics = {
            "device": device.name, "devices": tp, "experts": self.experts, "mix": self.mix,
            "skew": self.skew, "execution": self.execution, "hbm_slots": plan["slots"],
            "hbm_hit_rate": hits / self.requests, "switches": switches,
            "switch_time_s": switch_s,
            "switching_share": switches * switch_s / makespan,
            "service_time_s": service_s,
            "throughput_tokens_per_s": self.requests * self.output_tokens / makespan,
            "latency_mean_s": float(np.mean(latency)),
            "latency_p99_s": float(np.percentile(latency, 99)),
            "makespan_s": makespan,
            "nodes_to_hold_all_in_weights_tier": math.ceil(
                total_bytes / (self.weights_fraction * plan["weights_node_bytes"])),
            "nodes_to_hold_all_in_offload_tier": math.ceil(total_bytes / plan["offload_node_bytes"]),
            "peak_weights_tier_gib": max(sim.pools[n, plan["weights"]].peak_bytes
                                         for n in names) / 2**30,
        }
        return RunResult(metrics, trace if record_trace else None)

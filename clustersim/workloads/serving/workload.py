"""The ``serving`` workload: a deployment of an LLM under a request workload.

YAML::

    workload:
      kind: serving
      model: llama2-70b            # a preset name, or a mapping of ModelConfig fields
      max_model_len: null          # context window; default the model's max_seq_len
      dtype: bf16
      parallel: {tp: 4, pp: 1, replicas: 2}
      # or pools instead of parallel, e.g. disaggregated prefill and decode:
      # pools: [{role: prefill, replicas: 2, tp: 2}, {role: decode, replicas: 1, tp: 4,
      #          gpu: H200-SXM-141GB}]
      # kv_transfer: {mode: after_prefill}     # or layerwise
      router: round_robin          # round_robin | least_outstanding | random | prefix_aware
      tp_collectives: closed_form  # or fabric: all-reduces as flows on the shared fabric
      nanoflow: null               # or {nano_batches: 2}: NanoFlow's intra-device overlap
      scheduler: {policy: chunked_prefill, max_num_seqs: 256, max_batched_tokens: 512}
      kv_cache: {block_size: 16, gpu_memory_utilization: 0.9, preemption: swap, swap_space: 4 GiB}
      requests:
        count: 2000
        arrival: {kind: poisson, rate: 10}
        prompt_tokens: {kind: lognormal, mean: 1024, sigma: 0.8, max: 4000}
        output_tokens: {kind: lognormal, mean: 256, sigma: 0.8, max: 1000}
      slo: {ttft: 2 s, tpot: 100 ms}
      iteration_overhead: 0 s

Metrics: TTFT, TPOT and end-to-end latency (mean, p50, p90, p99), throughput in tokens/s,
goodput under the SLOs, KV capacity and use (mean, peak), preemptions, recomputed tokens,
swapped bytes, prefix-cache hits, preemption stalls, iterations and batch sizes, pipeline
bubbles (pp > 1); with pools, per-pool GPUs, busy fraction and KV use, the KV transfer's share
of TTFT, and goodput per GPU; with several replicas, how evenly the router spread the load.
Plots: latency CDFs, KV use over time, and each replica's load over time. ``simulate`` returns the full ``ServingResult``
(per-request table via ``metrics.request_table``) for notebooks.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.units import Seconds
from clustersim.workloads.models import ModelConfig, get_model
from clustersim.workloads.serving.config import (KVCacheConfig, ParallelConfig, SchedulerConfig,
                                                 SLOConfig)
from clustersim.workloads.serving.deployment import ServingResult, Setup, simulate
from clustersim.workloads.serving.disaggregation import (KVTransferConfig, PoolConfig, PoolSetup,
                                                         pool_names, with_pool_devices)
from clustersim.workloads.serving.kv_cache import activation_reserve_bytes, plan_layout
from clustersim.workloads.serving.nanoflow import NanoFlowConfig
from clustersim.workloads.serving.requests import RequestsConfig
from clustersim.workloads.workload import RunResult, Workload


class ServingWorkload(Workload, kind="serving"):
    kind: Literal["serving"] = "serving"
    model: str | dict[str, Any] = Field(description="model preset name or a mapping of its shape")
    max_model_len: int | None = Field(
        None, ge=1, description="context window in tokens (vLLM's max_model_len); default the "
                                "model's max_seq_len; larger values model a long-context "
                                "variant of the same shape (e.g. LLaMA-3.1's 128K)")
    dtype: Literal["bf16", "fp16", "fp8"] = Field("bf16", description="weights and compute dtype")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="the layout")
    router: Literal["round_robin", "least_outstanding", "random", "prefix_aware"] = Field(
        "round_robin", description="how arrivals are spread over replicas (prefix_aware: where "
                                   "their prefix is cached, while the load is balanced)")
    router_imbalance_threshold: int = Field(
        16, ge=0, description="prefix_aware: route by load instead when the busiest and idlest "
                              "replicas differ by more than this many outstanding requests")
    pools: list[PoolConfig] | None = Field(
        None, description="pools of replicas instead of `parallel`: mixed (colocated), or "
                          "prefill + decode (disaggregated), each with its replicas, tp, pp and "
                          "gpu; placed on the cluster's GPUs in order")
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig,
                                          description="prefill-to-decode KV transfer (pools)")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig,
                                       description="the batch policy and its limits")
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig, description="KV cache settings")
    requests: RequestsConfig = Field(description="the request workload")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="latency targets for goodput")
    tp_collectives: Literal["closed_form", "fabric"] = Field(
        "closed_form", description="closed_form: TP all-reduces timed on an idle fabric; "
                                   "fabric: each iteration's all-reduces run as flows on the "
                                   "fabric shared with KV transfers and other replicas (pp=1)")
    nanoflow: NanoFlowConfig | None = Field(
        None, description="overlap nano-batches' compute, memory and network kernels inside "
                          "each iteration (NanoFlow); default: ops in series")
    iteration_overhead: Seconds = Field(
        0.0, description="CPU time per iteration (scheduling, sampling) added to its first stage")

    # -- resolution --------------------------------------------------------------------------
    def model_config_(self) -> ModelConfig:
        if isinstance(self.model, str):
            return get_model(self.model)
        return ModelConfig.from_dict(self.model)

    def context_window(self, model: ModelConfig) -> int:
        return self.max_model_len or model.max_seq_len

    def policy_settings(self, model: ModelConfig) -> dict[str, Any]:
        sched = self.scheduler
        settings: dict[str, Any] = {"max_num_seqs": sched.max_num_seqs}
        if sched.policy == "continuous":
            settings["max_batched_tokens"] = (sched.max_batched_tokens
                                              or max(2048, self.context_window(model)))
        elif sched.policy in ("chunked_prefill", "prefix_aware"):
            settings["token_budget"] = sched.max_batched_tokens or 512
        return settings

    def _iteration_tokens(self, model: ModelConfig) -> int:
        settings = self.policy_settings(model)
        return settings.get("max_batched_tokens") or settings.get("token_budget") \
            or self.context_window(model)

    def setup(self, cluster: Cluster, rng: np.random.Generator) -> Setup:
        model = self.model_config_()
        return self._setup(model, self.pool_cluster(cluster), self.requests.load(rng))

    def pool_cluster(self, cluster: Cluster) -> Cluster:
        """The cluster with each pool's GPUs of its own preset (when ``pools`` name one)."""
        return with_pool_devices(cluster, self.pools) if self.pools else cluster

    def _layout(self, model: ModelConfig, device, tp: int, pp: int):
        kv = self.kv_cache
        reserve = kv.activation_reserve
        if reserve == "auto":
            reserve = activation_reserve_bytes(model, tp=tp,
                                               max_batched_tokens=self._iteration_tokens(model),
                                               max_num_seqs=self.scheduler.max_num_seqs,
                                               dtype=self.dtype)
        return plan_layout(model, hbm_bytes=device.tier_for("kv").capacity_bytes,
                           tp=tp, pp=pp, block_size=kv.block_size, dtype=self.dtype,
                           kv_dtype=kv.dtype or self.dtype,
                           gpu_memory_utilization=kv.gpu_memory_utilization,
                           activation_reserve=float(reserve), num_blocks=kv.num_blocks)

    def _pools(self, model: ModelConfig, cluster: Cluster) -> tuple[PoolSetup, ...]:
        if not self.pools:
            return ()
        pools, first = [], 0
        for name, pool in zip(pool_names(self.pools), self.pools):
            layout = self._layout(model, cluster.devices[first], pool.tp, pool.pp)
            pools.append(PoolSetup(name, pool.role, pool.tp, pool.pp, pool.replicas, layout,
                                   first))
            first += pool.replicas * pool.tp * pool.pp
        return tuple(pools)

    def _setup(self, model: ModelConfig, cluster: Cluster, requests) -> Setup:
        kv = self.kv_cache
        kv_dtype = kv.dtype or self.dtype
        pools = self._pools(model, cluster)
        if pools:
            par = ParallelConfig(tp=pools[0].tp, pp=pools[0].pp, replicas=pools[0].replicas)
            layout = pools[0].layout
        else:
            par = self.parallel
            layout = self._layout(model, cluster.devices[0], par.tp, par.pp)
        return Setup(model=model, max_model_len=self.context_window(model), dtype=self.dtype,
                     kv_dtype=kv_dtype, tp=par.tp, pp=par.pp, replicas=par.replicas,
                     router=self.router, policy=self.scheduler.policy,
                     policy_settings=self.policy_settings(model), layout=layout,
                     watermark=kv.watermark, prefix_caching=kv.prefix_caching,
                     preemption=kv.preemption, swap_space_bytes=kv.swap_space,
                     iteration_overhead_s=self.iteration_overhead, requests=requests,
                     pools=pools, kv_transfer=self.kv_transfer.mode,
                     router_imbalance_threshold=self.router_imbalance_threshold,
                     nanoflow=self.nanoflow, tp_collectives=self.tp_collectives)

    # -- validation ---------------------------------------------------------------------------
    def check(self, cluster: Cluster) -> None:
        try:
            model = self.model_config_()
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.model") from None
        groups = self._layouts_to_check()
        gpus = sum(par.replicas * par.tp * par.pp for _, par in groups)
        if gpus > cluster.num_devices:
            key, par = groups[0]
            what = (f"replicas x tp x pp = {par.replicas} x {par.tp} x {par.pp} = {gpus} GPUs"
                    if len(groups) == 1 else f"the pools need {gpus} GPUs")
            raise ConfigError(f"{what}, but the cluster has {cluster.num_devices}; lower them or "
                              "raise cluster.nodes",
                              key=key if len(groups) == 1 else "workload.pools")
        for key, par in groups:
            for name, value in (("num_heads", model.num_heads),
                                ("num_kv_heads", model.num_kv_heads),
                                ("ffn_hidden_size", model.ffn_hidden_size)):
                if value % par.tp:
                    raise ConfigError(f"tp={par.tp} must divide {model.name}'s {name} ({value})",
                                      key=f"{key}.tp")
            if model.num_layers % par.pp:
                raise ConfigError(f"{model.num_layers} layers of {model.name} do not split evenly "
                                  f"over pp={par.pp} stages", key=f"{key}.pp")
        try:
            cluster = self.pool_cluster(cluster)
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.pools") from None
        if self.tp_collectives == "fabric" and self.nanoflow is not None:
            raise ConfigError("tp_collectives: fabric and nanoflow do not combine yet (NanoFlow "
                              "overlaps the all-reduces inside the device model); drop one",
                              key="workload.tp_collectives")
        if self.tp_collectives == "fabric" and any(par.pp > 1 for _, par in groups):
            raise ConfigError("tp_collectives: fabric runs single-stage replicas only; use "
                              "pp: 1 or tp_collectives: closed_form", key="workload.tp_collectives")
        sched = self.scheduler
        settings = self.policy_settings(model)
        if settings.get("token_budget", sched.max_num_seqs) < sched.max_num_seqs:
            raise ConfigError(f"{sched.policy} needs max_batched_tokens (the token budget, "
                              f"{settings['token_budget']}) >= max_num_seqs "
                              f"({sched.max_num_seqs}), since each running decode takes one token "
                              "of it",
                              key="workload.scheduler.max_batched_tokens")
        device = cluster.devices[0]
        try:
            device.peak_flops(self.dtype)
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.dtype") from None
        from clustersim.ops import attention

        try:    # attention runs in the KV cache's dtype, which the device must take too
            device.op_time(attention(1, 1, 1, 1, 1, 1, dtype=self.kv_cache.dtype or self.dtype))
        except ValueError as exc:
            raise ConfigError(f"{exc}; set kv_cache.dtype to a dtype {device.name} takes",
                              key="workload.kv_cache.dtype") from None
        if self.kv_cache.preemption == "swap" and not getattr(
                device, "host_link_bandwidth_bytes_per_s", None):
            raise ConfigError(f"preemption: swap needs a host link, but {device.name} has no "
                              "host_link_bandwidth_bytes_per_s; use preemption: recompute",
                              key="workload.kv_cache.preemption")
        try:
            requests = self.requests.load(np.random.default_rng(0)) if self.requests.trace else None
        except ConfigError as exc:
            raise ConfigError(exc.detail, file=exc.file, key=exc.key or "workload.requests.trace") \
                from None
        hashed = requests is not None and requests.block_hashes is not None
        if hashed and requests.hash_block_tokens % self.kv_cache.block_size:
            raise ConfigError(f"the trace's hash blocks of {requests.hash_block_tokens} tokens do "
                              f"not split into KV blocks of {self.kv_cache.block_size}; use a "
                              "block_size that divides them", key="workload.kv_cache.block_size")
        self._check_capacity(model, cluster, requests)

    def _layouts_to_check(self) -> list[tuple[str, ParallelConfig]]:
        """(key, layout) of every pool, or of ``parallel``; pools must be all mixed, or prefill
        and decode."""
        if not self.pools:
            return [("workload.parallel", self.parallel)]
        roles = {pool.role for pool in self.pools}
        if "mixed" in roles and len(roles) > 1 or roles == {"prefill"} or roles == {"decode"}:
            raise ConfigError(f"pools have roles {sorted(roles)}; give mixed pools (colocated) "
                              "or at least one prefill and one decode pool (disaggregated)",
                              key="workload.pools")
        if self.parallel != ParallelConfig():
            raise ConfigError("give either `parallel` or `pools`, not both",
                              key="workload.parallel")
        return [(f"workload.pools[{i}]", ParallelConfig(tp=p.tp, pp=p.pp, replicas=p.replicas))
                for i, p in enumerate(self.pools)]

    def _check_capacity(self, model: ModelConfig, cluster: Cluster, requests) -> None:
        setup = self._setup(model, cluster, requests)
        for (key, par), pool in zip(self._layouts_to_check(), setup.resolved_pools()):
            layout = pool.layout
            if layout.blocks // par.pp >= 1:
                continue
            gib = 2**30
            raise ConfigError(
                f"no room for a KV cache on {cluster.devices[pool.first_device].name}: "
                f"{model.name} at tp={par.tp}, pp={par.pp} needs "
                f"{layout.weight_bytes_per_gpu / gib:.1f} GiB of weights + "
                f"{layout.activation_reserve_bytes / gib:.1f} GiB of activations per GPU, and "
                f"gpu_memory_utilization leaves {layout.usable_bytes / gib:.1f} GiB; raise tp or "
                "pp, or use a GPU with more memory", key=key)

    # -- running -------------------------------------------------------------------------------
    def simulate(self, cluster: Cluster, *, rng: np.random.Generator,
                 record_trace: bool = False) -> ServingResult:
        """Run and return everything (per-request outcomes, engines, trace)."""
        self.check(cluster)
        return simulate(self.setup(cluster, rng), self.pool_cluster(cluster), rng=rng,
                        record_trace=record_trace)

    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        from clustersim.workloads.serving import plots
        from clustersim.workloads.serving.metrics import replica_load, request_table, summarise

        result = self.simulate(cluster, rng=rng, record_trace=record_trace)
        metrics = summarise(result, self.slo)
        par = self.parallel
        title = (f"{metrics['model']} {metrics['policy']} TP={par.tp} PP={par.pp} "
                 f"x{par.replicas}, {metrics['requests']} requests")
        table = request_table(result)
        figures = {
            "latency_cdf": lambda path: plots.plot_latency_cdfs(table, path, title=title),
            "kv_usage": lambda path: plots.plot_kv_usage(result, path, title=title),
        }
        if len(result.router.replicas) > 1:
            load = replica_load(result)
            figures["replica_load"] = lambda path: plots.plot_replica_load(load, path,
                                                                           title=title)
        return RunResult(metrics, result.trace, figures, tables={"requests": table})

"""The ``serving`` workload: a deployment of an LLM under a request workload.

YAML::

    workload:
      kind: serving
      model: llama2-70b            # a preset name, or a mapping of ModelConfig fields
      max_model_len: null          # context window; default the model's max_seq_len
      dtype: bf16
      parallel: {tp: 4, pp: 1, replicas: 2}
      router: round_robin          # round_robin | least_outstanding | random
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
swapped bytes, prefix-cache hits, iterations and batch sizes, pipeline bubbles (pp > 1).
Plots: latency CDFs and KV use over time. ``simulate`` returns the full ``ServingResult``
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
from clustersim.workloads.serving.kv_cache import activation_reserve_bytes, plan_layout
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
    router: Literal["round_robin", "least_outstanding", "random"] = Field(
        "round_robin", description="how arrivals are spread over replicas")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig,
                                       description="the batch policy and its limits")
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig, description="KV cache settings")
    requests: RequestsConfig = Field(description="the request workload")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="latency targets for goodput")
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
        return self._setup(model, cluster, self.requests.load(rng))

    def _setup(self, model: ModelConfig, cluster: Cluster, requests) -> Setup:
        par, kv = self.parallel, self.kv_cache
        kv_dtype = kv.dtype or self.dtype
        reserve = kv.activation_reserve
        if reserve == "auto":
            reserve = activation_reserve_bytes(model, tp=par.tp,
                                               max_batched_tokens=self._iteration_tokens(model),
                                               max_num_seqs=self.scheduler.max_num_seqs,
                                               dtype=self.dtype)
        device = cluster.devices[0]
        layout = plan_layout(model, hbm_bytes=device.tier_for("kv").capacity_bytes,
                             tp=par.tp, pp=par.pp, block_size=kv.block_size, dtype=self.dtype,
                             kv_dtype=kv_dtype, gpu_memory_utilization=kv.gpu_memory_utilization,
                             activation_reserve=float(reserve), num_blocks=kv.num_blocks)
        return Setup(model=model, max_model_len=self.context_window(model), dtype=self.dtype,
                     kv_dtype=kv_dtype, tp=par.tp, pp=par.pp, replicas=par.replicas,
                     router=self.router, policy=self.scheduler.policy,
                     policy_settings=self.policy_settings(model), layout=layout,
                     watermark=kv.watermark, prefix_caching=kv.prefix_caching,
                     preemption=kv.preemption, swap_space_bytes=kv.swap_space,
                     iteration_overhead_s=self.iteration_overhead, requests=requests)

    # -- validation ---------------------------------------------------------------------------
    def check(self, cluster: Cluster) -> None:
        try:
            model = self.model_config_()
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.model") from None
        par = self.parallel
        gpus = par.replicas * par.tp * par.pp
        if gpus > cluster.num_devices:
            raise ConfigError(f"replicas x tp x pp = {par.replicas} x {par.tp} x {par.pp} = {gpus} "
                              f"GPUs, but the cluster has {cluster.num_devices}; lower them or "
                              "raise cluster.nodes", key="workload.parallel")
        for name, value in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads),
                            ("ffn_hidden_size", model.ffn_hidden_size)):
            if value % par.tp:
                raise ConfigError(f"tp={par.tp} must divide {model.name}'s {name} ({value})",
                                  key="workload.parallel.tp")
        if model.num_layers % par.pp:
            raise ConfigError(f"{model.num_layers} layers of {model.name} do not split evenly over "
                              f"pp={par.pp} stages", key="workload.parallel.pp")
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
        self._check_capacity(model, cluster, requests)

    def _check_capacity(self, model: ModelConfig, cluster: Cluster, requests) -> None:
        setup = self._setup(model, cluster, requests)
        layout, par = setup.layout, self.parallel
        if layout.blocks // par.pp < 1:
            gib = 2**30
            raise ConfigError(
                f"no room for a KV cache on {cluster.devices[0].name}: {model.name} at "
                f"tp={par.tp}, pp={par.pp} needs {layout.weight_bytes_per_gpu / gib:.1f} GiB of weights + "
                f"{layout.activation_reserve_bytes / gib:.1f} GiB of activations per GPU, and "
                f"gpu_memory_utilization leaves {layout.usable_bytes / gib:.1f} GiB; raise tp or "
                "pp, or use a GPU with more memory", key="workload.parallel")

    # -- running -------------------------------------------------------------------------------
    def simulate(self, cluster: Cluster, *, rng: np.random.Generator,
                 record_trace: bool = False) -> ServingResult:
        """Run and return everything (per-request outcomes, engines, trace)."""
        self.check(cluster)
        return simulate(self.setup(cluster, rng), cluster, rng=rng, record_trace=record_trace)

    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        from clustersim.workloads.serving import plots
        from clustersim.workloads.serving.metrics import request_table, summarise

        result = self.simulate(cluster, rng=rng, record_trace=record_trace)
        metrics = summarise(result, self.slo)
        par = self.parallel
        title = (f"{metrics['model']} {metrics['policy']} TP={par.tp} PP={par.pp} "
                 f"x{par.replicas}, {metrics['requests']} requests")
        table = request_table(result)
        return RunResult(metrics, result.trace, {
            "latency_cdf": lambda path: plots.plot_latency_cdfs(table, path, title=title),
            "kv_usage": lambda path: plots.plot_kv_usage(result, path, title=title),
        })

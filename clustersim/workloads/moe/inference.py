"""The ``moe_inference`` workload: memory-limited MoE inference with offloaded experts.

One GPU (the cluster's first) serves a batch: a prefill of ``prompt_len`` tokens per sequence,
then ``output_len`` decode steps, with routed experts in host memory behind PCIe and an HBM
expert cache (``offload.py``). YAML::

    workload:
      kind: moe_inference
      model: mixtral-8x7b
      batch_size: 8
      prompt_len: 256
      output_len: 32
      moe: {distribution: zipf, zipf_s: 0.8, affinity: 0.5}   # routing (workload.moe)
      offload:
        cache_fraction: 0.5        # share of all (layer, expert) weights kept in HBM
        policy: lru                # lru | score
        prefetch: next_layer       # none | next_layer
        prefetch_experts: 2
        cpu_execution: false       # run missed experts on the host CPU when that is sooner

Metrics: TTFT, TPOT, hit rate, prefetch hits, stall time, bytes fetched, CPU expert runs, and
the same batch with every expert in HBM (``tpot_all_on_gpu_s``, same routing draws): the
reference offloading is measured against, whether or not HBM could hold it.

The host CPU (for ``cpu_execution``) is one socket of a DGX H100's two Intel Xeon Platinum
8480C: 56 cores, 2.0 GHz base clock, AVX-512 with BF16, 8 channels of DDR5-4800 =
307.2 GB/s (Intel ARK, Xeon Platinum 8480+ specifications; NVIDIA DGX H100 datasheet). AMX tile
units are not modelled (``hardware/cpu.py`` counts vector FMA lanes), so CPU GEMMs are
conservative; decode-sized expert GEMMs are bound by DDR bandwidth either way.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.cpu import CPU
from clustersim.ops import dtype_bytes
from clustersim.workloads.models import ModelConfig, get_model
from clustersim.workloads.moe.config import MoEConfig
from clustersim.workloads.moe.offload import OffloadOptions, OffloadRun
from clustersim.workloads.moe.routing import routing_model
from clustersim.workloads.workload import RunResult, Workload

HOST_CPU = dict(name="Xeon Platinum 8480C (one socket)", cores=56, clock_hz=2.0e9,
                memory_bandwidth_bytes_per_s=307.2e9, simd_bits=512, fma_units_per_core=2,
                native_dtypes=("fp32", "fp64", "bf16"))


class OffloadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cache_fraction: float = Field(1.0, gt=0, le=1, description="share of the routed experts' "
                                                               "weights (all layers) cached in HBM")
    policy: Literal["lru", "score"] = Field("lru", description="cache eviction policy")
    prefetch: Literal["none", "next_layer"] = Field("none", description="prefetch the next "
                                                                       "layer's predicted experts")
    prefetch_experts: int = Field(2, ge=1, description="experts prefetched per layer")
    cpu_execution: bool = Field(False, description="run a missed expert on the host CPU when "
                                                   "that finishes before fetching it would")


class MoEInferenceWorkload(Workload, kind="moe_inference"):
    kind: Literal["moe_inference"] = "moe_inference"
    model: str | dict[str, Any] = Field(description="MoE model preset or a mapping of its shape")
    batch_size: int = Field(8, ge=1, description="sequences decoded together")
    prompt_len: int = Field(256, ge=1, description="prompt tokens per sequence")
    output_len: int = Field(32, ge=1, description="generated tokens per sequence")
    dtype: Literal["bf16", "fp16", "fp8"] = Field("bf16", description="weight and compute dtype")
    moe: MoEConfig = Field(default_factory=MoEConfig, description="routing (workload.moe)")
    offload: OffloadConfig = Field(default_factory=OffloadConfig, description="expert cache")
    ep: int = Field(1, ge=1, description="expert parallelism: experts over ep GPUs, attention "
                                         "data parallel with batch_size sequences on each "
                                         "(DeepSeek-V3 serving); all-to-all per layer")

    @property
    def model_config_(self) -> ModelConfig:
        return get_model(self.model) if isinstance(self.model, str) else \
            ModelConfig.from_dict(self.model)

    def cache_experts(self, model: ModelConfig) -> int:
        return int(round(self.offload.cache_fraction * model.num_layers * model.num_experts))

    def hbm_bytes(self, model: ModelConfig, cache_experts: int) -> dict[str, float]:
        """What HBM must hold: non-expert weights, the expert cache, the KV cache."""
        eb = dtype_bytes(self.dtype)
        dense = model.params_total - model.num_layers * model.num_experts * model.params_expert
        kv = (2 * model.num_layers * model.kv_dim * eb * self.batch_size
              * (self.prompt_len + self.output_len))
        return {"dense": dense * eb, "cache": cache_experts * model.params_expert * eb, "kv": kv}

    def check(self, cluster: Cluster) -> None:
        try:
            model = self.model_config_
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.model") from None
        if not model.is_moe:
            raise ConfigError(f"{model.name} is dense; moe_inference needs experts",
                              key="workload.model")
        if self.prompt_len + self.output_len > model.max_seq_len:
            raise ConfigError(f"prompt_len + output_len exceeds {model.name}'s max_seq_len "
                              f"{model.max_seq_len}", key="workload.output_len")
        self.moe.routing_spec(model)
        if self.ep > 1:
            self._check_ep(model, cluster)
            return
        gpu = cluster.devices[0]
        host = gpu.tier_for("offload")
        if host is None:
            raise ConfigError(f"{gpu.name} has no offload tier (host memory behind PCIe) to keep "
                              "experts in; use a node preset with host memory",
                              key="workload.offload")
        experts_bytes = model.num_layers * model.num_experts * model.params_expert \
            * dtype_bytes(self.dtype)
        if experts_bytes > host.capacity_bytes:
            raise ConfigError(f"the experts ({experts_bytes / 2**30:.1f} GiB) do not fit the "
                              f"{host.capacity_bytes / 2**30:.1f} GiB host tier",
                              key="workload.offload")
        need = self.hbm_bytes(model, self.cache_experts(model))
        hbm = gpu.tier_for("weights").capacity_bytes
        if sum(need.values()) > hbm:
            spare = hbm - need["dense"] - need["kv"]
            most = max(0.0, spare / (model.num_layers * model.num_experts * model.params_expert
                                     * dtype_bytes(self.dtype)))
            raise ConfigError(f"the expert cache ({need['cache'] / 2**30:.1f} GiB) plus dense "
                              f"weights ({need['dense'] / 2**30:.1f} GiB) and KV "
                              f"({need['kv'] / 2**30:.1f} GiB) exceed the "
                              f"{hbm / 2**30:.1f} GiB of {gpu.name}; cache_fraction can be at "
                              f"most {most:.3f}", key="workload.offload.cache_fraction")

    def _check_ep(self, model: ModelConfig, cluster: Cluster) -> None:
        key = "workload.ep"
        if model.num_experts % self.ep:
            raise ConfigError(f"ep={self.ep} must divide the {model.num_experts} experts of "
                              f"{model.name}", key=key)
        if self.ep > cluster.num_devices:
            raise ConfigError(f"ep={self.ep} needs {self.ep} GPUs; the cluster has "
                              f"{cluster.num_devices}", key=key)
        if self.offload.cache_fraction < 1.0:
            raise ConfigError("expert offloading is modelled on one GPU (ep: 1); with ep > 1 "
                              "every expert is in HBM", key="workload.offload.cache_fraction")
        gpu = cluster.devices[0]
        eb = dtype_bytes(self.dtype)
        experts = -(-model.num_experts // self.ep) * model.num_layers * model.params_expert * eb
        need = self.hbm_bytes(model, 0)
        hbm = gpu.tier_for("weights").capacity_bytes
        if experts + need["dense"] + need["kv"] > hbm:
            raise ConfigError(f"each GPU needs {(experts + need['dense'] + need['kv']) / 2**30:.1f}"
                              f" GiB (its experts, the dense weights and its KV) but has "
                              f"{hbm / 2**30:.1f} GiB; raise ep or lower batch_size", key=key)

    def _run_once(self, model, gpu, cpu, cache_experts, seed_state, options=None):
        rng = np.random.default_rng(seed_state)
        spec = self.moe.routing_spec(model)
        routing = routing_model(spec, model.num_layers, rng)
        o = self.offload
        opts = options or OffloadOptions(cache_experts, o.policy, o.prefetch, o.prefetch_experts,
                                         o.cpu_execution)
        return OffloadRun(model, routing, gpu, cpu, batch=self.batch_size,
                          prompt_len=self.prompt_len, output_len=self.output_len,
                          dtype=self.dtype, options=opts, rng=rng).run()

    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        model = self.model_config_
        if self.ep > 1:
            from clustersim.workloads.moe.ep_inference import run_ep_inference

            metrics = run_ep_inference(model, cluster, ep=self.ep, batch=self.batch_size,
                                       prompt_len=self.prompt_len, output_len=self.output_len,
                                       dtype=self.dtype, options=self.moe.options(model), rng=rng)
            return RunResult({"model": model.name, "gpu": cluster.devices[0].name, **metrics})
        gpu = cluster.devices[0]
        host = gpu.tier_for("offload")
        cpu = CPU(memory_capacity_bytes=host.capacity_bytes, **HOST_CPU)
        seed = int(rng.integers(2**63))      # both runs draw the same routing
        cache = self.cache_experts(model)
        metrics = self._run_once(model, gpu, cpu, cache, seed)
        every = model.num_layers * model.num_experts
        reference = self._run_once(model, gpu, cpu, every, seed, OffloadOptions(every))
        metrics.update({
            "model": model.name, "gpu": gpu.name, "cache_experts": cache,
            "cache_fraction": cache / every, "policy": self.offload.policy,
            "prefetch": self.offload.prefetch, "cpu_execution": self.offload.cpu_execution,
            "tpot_all_on_gpu_s": reference["tpot_s"], "ttft_all_on_gpu_s": reference["ttft_s"],
            "tpot_vs_all_on_gpu": metrics["tpot_s"] / reference["tpot_s"],
            "hbm_gib": sum(self.hbm_bytes(model, cache).values()) / 2**30,
        })
        return RunResult(metrics)

"""The ``training`` workload: one optimizer step of a decoder model under TP x PP x DP.

YAML::

    workload:
      kind: training
      model: llama2-7b            # a preset name, or a mapping of ModelConfig fields
      seq_len: 4096
      micro_batch_size: 1
      global_batch_size: 8        # sequences per step = micro_batch_size x microbatches x dp
      parallel: {tp: 8, pp: 1, dp: 1, sequence_parallel: false}
      recompute: none             # none | selective | full
      schedule: 1f1b              # any name in clustersim.schedules (pp > 1)

Metrics: step time, tokens/s, MFU (model FLOPs per token of ``transformer.model_flops_per_token``
over the GPUs' dense peak for the dtype), peak memory per GPU, time in compute vs communication
(busy time of each kind per GPU, averaged) and the pipeline bubble fraction.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.sim.engine import Simulation
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig, get_model
from clustersim.workloads.parallel_layout import ParallelLayout
from clustersim.workloads.training_step import StepConfig, compile_training_step
from clustersim.workloads.workload import RunResult, Workload


class ParallelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(1, ge=1, description="tensor-parallel size (Megatron column/row splits)")
    pp: int = Field(1, ge=1, description="pipeline-parallel stages")
    dp: int = Field(1, ge=1, description="data-parallel replicas")
    sequence_parallel: bool = Field(False, description="Megatron sequence parallelism with TP")
    virtual_stages: int = Field(1, ge=1, description="model chunks per stage (interleaved, V)")
    zero_stage: Literal[0, 1] = Field(0, description="ZeRO stage: 1 shards optimizer states over dp")


class TrainingWorkload(Workload, kind="training"):
    kind: Literal["training"] = "training"
    model: str | dict[str, Any] = Field(description="model preset name or a mapping of its shape")
    seq_len: int = Field(ge=1, description="tokens per sequence")
    micro_batch_size: int = Field(1, ge=1, description="sequences per micro-batch")
    global_batch_size: int = Field(ge=1, description="sequences per optimizer step")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="the layout")
    recompute: Literal["none", "selective", "full"] = Field(
        "none", description="activation recomputation (Korthikanti et al. 2022)")
    schedule: str = Field("1f1b", description="pipeline schedule (see clustersim.schedules)")
    dtype: Literal["bf16", "fp16", "fp8"] = Field("bf16", description="compute dtype")
    overlap_grad_reduce: bool = Field(True, description="start each chunk's gradient reduction as "
                                                        "soon as its backward is done")
    granularity: Literal["op", "layer"] = Field(
        "op", description="op: a task per op, TP collectives on the fabric; layer: a task per "
                          "layer pass with TP folded (for large runs)")
    replicas: Literal["all", "one"] = Field(
        "all", description="one: simulate one DP replica and report it for all (symmetric)")

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingWorkload":
        per_step = self.micro_batch_size * self.parallel.dp
        if self.global_batch_size % per_step:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"micro_batch_size x dp = {per_step}")
        return self

    # -- derived -------------------------------------------------------------------------------
    @property
    def model_config_(self) -> ModelConfig:
        if isinstance(self.model, str):
            return get_model(self.model)
        return ModelConfig.from_dict(self.model)

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.parallel.dp)

    @property
    def layout(self) -> ParallelLayout:
        return ParallelLayout(self.parallel.tp, self.parallel.pp, self.parallel.dp)

    def check(self, cluster: Cluster) -> None:
        par = self.parallel
        try:
            model = self.model_config_
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.model") from None
        world = par.tp * par.pp * par.dp
        if world != cluster.num_devices:
            raise ConfigError(f"tp x pp x dp = {par.tp} x {par.pp} x {par.dp} = {world} GPUs, but the "
                              f"cluster has {cluster.num_devices}; change the layout or cluster.nodes",
                              key="workload.parallel")
        chunks = par.pp * par.virtual_stages
        if model.num_layers % chunks:
            raise ConfigError(f"{model.num_layers} layers of {model.name} cannot be split evenly "
                              f"over pp x virtual_stages = {chunks} model chunks",
                              key="workload.parallel.pp")
        for name, value in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads),
                            ("ffn_hidden_size", model.ffn_hidden_size)):
            if value % par.tp:
                raise ConfigError(f"tp={par.tp} must divide the model's {name} ({value})",
                                  key="workload.parallel.tp")
        if par.sequence_parallel and par.tp == 1:
            raise ConfigError("sequence_parallel needs tp > 1", key="workload.parallel.sequence_parallel")
        if self.seq_len > model.max_seq_len:
            raise ConfigError(f"seq_len {self.seq_len} exceeds {model.name}'s max_seq_len "
                              f"{model.max_seq_len}", key="workload.seq_len")
        self._stage_actions()  # an unknown schedule or an impossible (p, m, v) fails here

    def _stage_actions(self):
        par, m = self.parallel, self.num_microbatches
        if par.pp == 1 and par.virtual_stages == 1:
            actions = [SimpleNamespace(kind=kind, microbatch=mb, chunk=0)
                       for mb in range(m) for kind in ("F", "BW")]
            return [actions], (lambda stage, chunk: 0)
        try:
            from clustersim.schedules import make_schedule, virtual_stage_fn
        except ImportError:
            raise ConfigError("pipeline schedules (pp > 1) are not available in this build",
                              key="workload.schedule") from None
        try:
            schedule = make_schedule(self.schedule, p=par.pp, m=m, v=par.virtual_stages)
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]), key="workload.schedule") from None
        return schedule.actions, virtual_stage_fn(schedule)

    # -- run -----------------------------------------------------------------------------------
    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        model, par = self.model_config_, self.parallel
        cfg = StepConfig(model=model, layout=self.layout, micro_batch=self.micro_batch_size,
                         num_microbatches=self.num_microbatches, seq_len=self.seq_len,
                         num_chunks=par.virtual_stages, sequence_parallel=par.sequence_parallel,
                         recompute=self.recompute, zero_stage=par.zero_stage, dtype=self.dtype,
                         overlap_grad_reduce=self.overlap_grad_reduce,
                         granularity=self.granularity, replicas=self.replicas)
        actions, virtual_stage = self._stage_actions()
        program, info = compile_training_step(cfg, cluster, actions, virtual_stage)
        resident = self._resident_bytes(model, cluster)
        kwargs = cluster.simulation_kwargs()
        sim = Simulation(**kwargs, resident=resident, record_trace=record_trace)
        trace = sim.run_program(program)
        metrics = self._metrics(model, cluster, sim, trace, program, info)
        plots = {}
        if record_trace:
            from clustersim.sim.timeline import plot_timeline

            plots["timeline"] = lambda path: plot_timeline(trace, path, title=self._title(model))
        return RunResult(metrics, trace if record_trace else None, plots)

    def _title(self, model: ModelConfig) -> str:
        p = self.parallel
        return (f"{model.name} training step: TP={p.tp} PP={p.pp} DP={p.dp}, "
                f"{self.num_microbatches} micro-batches of {self.micro_batch_size}x{self.seq_len}")

    def _resident_bytes(self, model: ModelConfig, cluster: Cluster) -> dict[str, dict[str, float]]:
        """Weights, gradients and optimizer states per GPU, present for the whole step."""
        par, lay = self.parallel, self.layout
        layers_per_stage = model.num_layers // par.pp
        resident = {}
        for stage in range(par.pp):
            per_rank = 0.0
            parts = [("layer", layers_per_stage)]
            if stage == 0:
                parts.append(("embedding", 1))
            if stage == par.pp - 1:
                parts.append(("lm_head", 1))
            for part, count in parts:
                per_rank += count * (
                    tfm.weight_bytes(model, part=part, tp=par.tp, dtype=self.dtype)
                    + tfm.gradient_bytes(model, part=part, tp=par.tp)
                    + tfm.optimizer_bytes(model, part=part, tp=par.tp, dp=par.dp,
                                          zero_stage=par.zero_stage))
            for dp_rank in range(par.dp):
                for tp_rank in range(par.tp):
                    device = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    resident[cluster.names[device]] = {"hbm": per_rank}
        return resident

    def _metrics(self, model, cluster, sim, trace, program, info) -> dict[str, Any]:
        step_s = sim.env.now
        tokens = self.global_batch_size * self.seq_len
        gpu = cluster.devices[0]
        peak = gpu.tensor_rate(self.dtype) if hasattr(gpu, "tensor_rate") else float("nan")
        model_flops = tfm.model_flops_per_token(model, self.seq_len) * tokens
        simulated = sorted({task.device for task in program.tasks})
        busy = _busy_by_category(program, trace, simulated) if trace is not None else {}
        hbm_peaks = [sim.pools[cluster.names[d], "hbm"].peak_bytes for d in simulated
                     if (cluster.names[d], "hbm") in sim.pools]
        n = len(simulated)
        compute_s = busy.get("compute", 0.0) / n if busy else float("nan")
        comm_s = busy.get("comm", 0.0) / n if busy else float("nan")
        par = self.parallel
        return {
            "model": model.name, "gpu": cluster.devices[0].name, "gpus": cluster.num_devices,
            "tp": par.tp, "pp": par.pp, "dp": par.dp, "schedule": self.schedule if par.pp > 1 else "none",
            "microbatches": self.num_microbatches,
            "step_time_s": step_s,
            "tokens_per_s": tokens / step_s,
            "mfu": model_flops / (step_s * cluster.num_devices * peak),
            "peak_memory_gib": max(hbm_peaks) / 2**30 if hbm_peaks else float("nan"),
            "activation_gib_per_layer": info.activation_bytes_per_layer / 2**30,
            "compute_time_s": compute_s,
            "communication_time_s": comm_s,
            "exposed_communication_s": step_s - compute_s if busy else float("nan"),
            "compute_idle_fraction": 1.0 - compute_s / step_s if busy else float("nan"),
            "devices_simulated": n,
            "tasks": len(program.tasks),
        }


def _busy_by_category(program, trace, devices) -> dict[str, float]:
    """Busy seconds summed over devices: compute (+optimizer) and communication (TP, DP, p2p)."""
    result = {}
    groups = {"compute": ("compute", "optimizer"), "comm": ("comm", "p2p")}
    for name, categories in groups.items():
        result[name] = float(trace.busy_time_s(categories).sum())
    return result

"""The ``training`` workload: one optimizer step of a decoder model under TP x PP x DP.

YAML::

    workload:
      kind: training
      model: llama2-7b            # a preset name, or a mapping of ModelConfig fields
      seq_len: 4096
      micro_batch_size: 1
      global_batch_size: 8        # sequences per step = micro_batch_size x microbatches x dp
      parallel: {tp: 8, pp: 1, dp: 1, sequence_parallel: false}   # zero_stage: 0-3 (3: FSDP)
      recompute: none             # none | selective | full
      schedule: 1f1b              # any name in clustersim.schedules (pp > 1)

Metrics: step time, tokens/s, MFU (model FLOPs per token of ``transformer.model_flops_per_token``
over the GPUs' dense peak for the dtype), peak memory per GPU, time in compute vs communication
(busy time of each kind per GPU, averaged) and the pipeline bubble fraction.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clustersim.errors import ConfigError, OutOfMemory
from clustersim.hardware.cluster import Cluster
from clustersim.sim.engine import Simulation
from clustersim.workloads import transformer as tfm
from clustersim.workloads.kernels import KernelsSpec
from clustersim.workloads.models import ModelConfig, get_model
from clustersim.workloads.moe.config import MoEConfig, check_ep
from clustersim.workloads.parallel_layout import ParallelLayout
from clustersim.workloads.step_spans import StepSpans
from clustersim.workloads.training_step import StepConfig, compile_training_step
from clustersim.workloads.workload import RunResult, Workload
from clustersim.workloads.zero_sharding import state_bytes_per_param


class ParallelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(1, ge=1, description="tensor-parallel size (Megatron column/row splits)")
    pp: int = Field(1, ge=1, description="pipeline-parallel stages")
    dp: int = Field(1, ge=1, description="data-parallel replicas")
    sequence_parallel: bool = Field(False, description="Megatron sequence parallelism with TP")
    virtual_stages: int = Field(1, ge=1, description="model chunks per stage (interleaved, V)")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO stage: 1 shards optimizer states over dp, 2 also gradients, 3 also "
                       "parameters (FSDP FULL_SHARD: per-layer all-gathers; pp: 1 only)")
    ep: int = Field(1, ge=1, description="expert-parallel size: MoE experts split over ep of the "
                                         "dp ranks, tokens exchanged by all-to-all (Megatron-Core)")


class TrainingWorkload(Workload, kind="training"):
    kind: Literal["training"] = "training"
    model: str | dict[str, Any] = Field(description="model preset name or a mapping of its shape")
    seq_len: int = Field(ge=1, description="tokens per sequence")
    micro_batch_size: int = Field(1, ge=1, description="sequences per micro-batch")
    global_batch_size: int = Field(ge=1, description="sequences per optimizer step")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="the layout")
    recompute: Literal["none", "selective", "full"] = Field(
        "none", description="activation recomputation (Korthikanti et al. 2022)")
    schedule: str = Field("1f1b", description="pipeline schedule: gpipe, 1f1b, interleaved, zb-h1, "
                                              "zb-h2, v-min, v-half, v-zb, bitpipe, vocab-1f1b, vocab-v-half")
    schedule_options: dict[str, Any] = Field(default_factory=dict,
                                             description="generator options, e.g. {algorithm: 2}")
    dtype: Literal["bf16", "fp16", "fp8"] = Field("bf16", description="compute dtype")
    overlap_grad_reduce: bool = Field(True, description="start each chunk's gradient reduction as "
                                                        "soon as its backward is done")
    overlap_param_gather: bool = Field(
        False, description="ZeRO-1/2: all-gather the updated parameters during the next step's "
                           "first forward pass, each bucket before its first layer (Megatron-Core "
                           "overlap_param_gather; Megatron-Bridge sets it when dp > 1); false: "
                           "after the optimizer step, exposed (Megatron-Core's default, DeepSpeed)")
    grad_bucket_params: float = Field(40e6, gt=0, description="parameters per gradient bucket; "
                                      "each bucket is reduced as soon as its backward is done")
    granularity: Literal["op", "layer"] = Field(
        "op", description="op: a task per op, TP collectives on the fabric; layer: a task per "
                          "layer pass with TP folded (for large runs)")
    replicas: Literal["all", "one"] = Field(
        "all", description="one: simulate one DP replica and report it for all (symmetric)")
    kernels: KernelsSpec = Field(default_factory=KernelsSpec,
                                 description="kernel implementations the run assumes (attention "
                                             "flash | unfused, dropout, fusions)")
    zero_prefetch: bool = Field(True, description="ZeRO-3: all-gather the next FSDP unit during "
                                                  "this one's compute (false: no overlap)")
    zero_reduce_dtype: Literal["bf16", "fp32"] = Field(
        "bf16", description="ZeRO-3: dtype gradients are reduce-scattered in (FSDP reduce_dtype; "
                            "Composer's mixed_precision DEFAULT reduces in fp32, PURE in bf16)")
    moe: MoEConfig | None = Field(None, description="MoE routing, expert placement and all-to-all "
                                                    "options (clustersim.workloads.moe.config)")

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingWorkload":
        per_step = self.micro_batch_size * self.parallel.dp
        if self.global_batch_size % per_step:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"micro_batch_size x dp = {per_step}")
        return self

    @model_validator(mode="after")
    def _overlap_needs_sequence_parallel(self) -> "TrainingWorkload":
        if self.kernels.tp_comm_overlap is not None and not (
                self.parallel.sequence_parallel and self.granularity == "layer"):
            raise ValueError("kernels.tp_comm_overlap (Megatron-Core userbuffers) needs "
                             "parallel.sequence_parallel: true and granularity: layer")
        if self.kernels.tp_async_backward and self.granularity != "layer":
            raise ValueError("kernels.tp_async_backward is modelled at granularity: layer only; "
                             "set granularity: layer or drop tp_async_backward")
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
        return ParallelLayout(self.parallel.tp, self.parallel.pp, self.parallel.dp, self.parallel.ep)

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
        for name, value in (("num_heads", model.num_heads), ("num_kv_heads", model.num_kv_heads),
                            ("ffn_hidden_size", model.ffn_hidden_size)):
            if value % par.tp:
                raise ConfigError(f"tp={par.tp} must divide the model's {name} ({value})",
                                  key="workload.parallel.tp")
        check_ep(model, ep=par.ep, dp=par.dp, granularity=self.granularity,
                 replicas=self.replicas, moe=self.moe)
        if par.sequence_parallel and par.tp == 1:
            raise ConfigError("sequence_parallel needs tp > 1", key="workload.parallel.sequence_parallel")
        if self.seq_len > model.max_seq_len:
            raise ConfigError(f"seq_len {self.seq_len} exceeds {model.name}'s max_seq_len "
                              f"{model.max_seq_len}", key="workload.seq_len")
        from clustersim.workloads.tier_fit import check_training_fits

        from clustersim.workloads.zero_sharding import check_zero_layout

        check_zero_layout(zero_stage=par.zero_stage, pp=par.pp, ep=par.ep,
                          schedule_kinds={a.kind.name for a in self.make_schedule()}
                          if par.zero_stage >= 2 and par.pp == 1 else ())
        check_training_fits(model, cluster, tp=par.tp, pp=par.pp, dp=par.dp,
                            zero_stage=par.zero_stage, ep=par.ep)
        try:
            cluster.devices[0].peak_flops(self.dtype)      # the MFU denominator must exist
        except ValueError as exc:
            raise ConfigError(str(exc), key="workload.dtype") from None
        schedule = self.make_schedule()  # an unknown schedule or an impossible (p, m, v) fails here
        chunks = len(schedule.layout.path(0))
        if model.num_layers % chunks:
            raise ConfigError(f"{model.num_layers} layers of {model.name} cannot be split evenly "
                              f"over the {chunks} model chunks of {schedule.name!r} "
                              f"(pp={par.pp} x {schedule.num_chunks} chunks per stage)",
                              key="workload.parallel.pp")

    def make_schedule(self):
        from clustersim.schedules import make_schedule

        par = self.parallel
        # virtual_stages left unset lets each schedule use its own number of chunks per stage.
        v = par.virtual_stages if "virtual_stages" in par.model_fields_set else None
        try:
            return make_schedule(self.schedule, par.pp, self.num_microbatches, v,
                                 **self.schedule_options)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(str(exc.args[0] if exc.args else exc), key="workload.schedule") from None

    # -- run -----------------------------------------------------------------------------------
    def run(self, cluster: Cluster, *, rng: np.random.Generator, record_trace: bool) -> RunResult:
        model, par = self.model_config_, self.parallel
        cfg = StepConfig(model=model, layout=self.layout, micro_batch=self.micro_batch_size,
                         seq_len=self.seq_len, sequence_parallel=par.sequence_parallel,
                         recompute=self.recompute, zero_stage=par.zero_stage, dtype=self.dtype,
                         overlap_grad_reduce=self.overlap_grad_reduce,
                         grad_bucket_params=self.grad_bucket_params,
                         granularity=self.granularity, replicas=self.replicas,
                         kernels=self.kernels.choices(), zero_prefetch=self.zero_prefetch,
                         zero_reduce_dtype=self.zero_reduce_dtype,
                         overlap_param_gather=self.overlap_param_gather,
                         ep_plan=self._ep_plan(model, cluster, rng))
        schedule = self.make_schedule()
        from clustersim.workloads.tier_fit import plan_training_spill

        spill = plan_training_spill(model, cluster, tp=par.tp, pp=par.pp, dp=par.dp,
                                    zero_stage=par.zero_stage, ep=par.ep)
        # The Adam step pays for spilled state (if any), spread over the step's own ops.
        from clustersim.workloads import kernels as kernel_ops

        adam = kernel_ops.adam_ops(1, weight_dtype="bf16" if self.dtype == "fp8" else self.dtype,
                                   grad_dtype="fp32", fused=cfg.kernels.fused_optimizer)
        cluster = spill.apply(cluster, optimizer_bytes_per_param=sum(op.bytes_total for op in adam))
        program, info = compile_training_step(cfg, cluster, schedule)
        resident = self._resident_bytes(info, cluster, spill, cfg.ep_plan)
        kwargs = cluster.simulation_kwargs()
        try:
            sim = Simulation(**kwargs, resident=resident, record_trace=True)
            trace = sim.run_program(program)
        except OutOfMemory as exc:
            stage = self._stage_of_device(cluster, exc.device)
            overflow = (exc.requested_bytes - exc.free_bytes) / 2**30
            raise OutOfMemory(f"pipeline stage {stage} does not fit: it needs {overflow:.2f} GiB "
                              f"more than the GPU has ({exc})") from None
        metrics = self._metrics(model, cluster, sim, trace, program, info, spill, cfg.ep_plan)
        metrics["spilled"] = "+".join(spill.kinds) or "none"
        plots = {}
        if cfg.ep_plan is not None:
            from clustersim.workloads.moe.metrics import ep_metrics, plot_heatmap

            metrics.update(ep_metrics(cfg.ep_plan, sim, program, cluster))
            plots["moe_heatmap"] = lambda path: plot_heatmap(cfg.ep_plan, cluster.names, path)
        if par.pp > 1:
            stage_devices = {s: cluster.names[self.layout.device(stage=s, tp_rank=0, dp_rank=0)]
                             for s in range(par.pp)}
            tier = cluster.devices[0].tier_for("activations").name
            plots["pipeline"] = lambda path: _plot_pipeline(trace, stage_devices, path,
                                                            title=self._title(model), tier=tier)
        if record_trace:
            from clustersim.sim.timeline import plot_timeline

            plots["timeline"] = lambda path: plot_timeline(trace, path, title=self._title(model))
        return RunResult(metrics, trace if record_trace else None, plots)

    def _ep_plan(self, model: ModelConfig, cluster: Cluster, rng: np.random.Generator):
        """Routing and placement of the MoE layers when they run expert parallel."""
        if self.parallel.ep == 1 and self.moe is None or not model.is_moe:
            return None
        from clustersim.workloads.moe.ep_layer import EPPlan

        lay = self.layout
        return EPPlan(model, tp=lay.tp, dp=lay.dp, ep=lay.ep, micro_batch=self.micro_batch_size,
                      seq_len=self.seq_len, dtype=self.dtype,
                      options=(self.moe or MoEConfig()).options(model), cluster=cluster,
                      device_of=lambda s, t, d: lay.device(stage=s, tp_rank=t, dp_rank=d), rng=rng,
                      activation_tier=None if self.recompute == "full"
                      else cluster.devices[0].tier_for("activations").name)

    def _recompute_flops(self, model: ModelConfig) -> float:
        """FLOPs per token that recomputation adds: a layer forward (full) or the attention core
        (selective), the convention of Narayanan et al. 2021 eq. 3 for hardware FLOPs."""
        attention = 4.0 * model.num_layers * self.seq_len * model.q_dim
        if self.recompute == "full":
            return 2.0 * (model.params_matmul - model.vocab_size * model.hidden_size) + attention
        return attention if self.recompute == "selective" else 0.0

    def _stage_of_device(self, cluster: Cluster, name: str) -> int:
        index = cluster.names.index(name) if name in cluster.names else 0
        return index // (self.parallel.tp * self.parallel.dp)

    def _title(self, model: ModelConfig) -> str:
        p = self.parallel
        schedule = f", {self.schedule}" if p.pp > 1 else ""
        return (f"{model.name} training step{schedule}: TP={p.tp} PP={p.pp} DP={p.dp}, "
                f"{self.num_microbatches} micro-batches of {self.micro_batch_size}x{self.seq_len}")

    def _resident_bytes(self, info, cluster: Cluster, spill,
                        plan=None) -> dict[str, dict[str, float]]:
        """Weights, gradients and optimizer states per GPU, present for the whole step:
        bf16 weights (2 B), fp32 gradients (4 B) and Adam's fp32 states (12 B, sharded over dp
        with ZeRO-1) per parameter (Rajbhandari et al. 2020; Megatron accumulates in fp32)."""
        par, lay = self.parallel, self.layout
        resident = {}
        for stage, params in info.params_per_stage.items():
            for dp_rank in range(par.dp):
                for tp_rank in range(par.tp):
                    device = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    total = (params * 6 + self._optimizer_bytes(params, plan)
                             if par.zero_stage < 2 else
                             params * sum(state_bytes_per_param(dp=par.dp,
                                                                zero_stage=par.zero_stage).values()))
                    resident[cluster.names[device]] = spill.place(cluster.devices[device], params,
                                                                  total_bytes=total)
        return resident

    def _optimizer_bytes(self, params: float, plan) -> float:
        """Adam's 12 B per parameter; ZeRO-1 shards dense parameters over dp and, under expert
        parallelism, the rank's experts over the expert-data-parallel group (dp / ep ranks)."""
        par = self.parallel
        expert = plan.expert_params_per_rank(self.model_config_.num_layers // par.pp) \
            if plan is not None else 0.0
        if par.zero_stage < 1:
            return 12.0 * params
        return 12.0 * ((params - expert) / par.dp + expert / (par.dp // par.ep))

    def _metrics(self, model, cluster, sim, trace, program, info, spill,
                 plan=None) -> dict[str, Any]:
        step_s = sim.env.now
        par = self.parallel
        tokens = self.global_batch_size * self.seq_len
        gpu = cluster.devices[0]
        peak_flops = gpu.peak_flops(self.dtype)
        model_flops = tfm.model_flops_per_token(model, self.seq_len) * tokens
        n = len({task.device for task in program.tasks})
        # Arrays of the recorded spans rather than the trace's DataFrame (same unions, summed
        # in the same order: step_spans.py): a large step has hundreds of thousands of tasks.
        spans = StepSpans(program, sim.recorder, cluster.names)
        compute_s = float(spans.busy_per_device_s(spans.mask("category", ("compute", "optimizer"))).sum()) / n
        comm_s = float(spans.busy_per_device_s(spans.mask("category", ("comm", "p2p"))).sum()) / n
        # Bubble: idle time of the compute streams during the pipeline part of the step
        # (before gradient sync and optimizer), counting blocking TP communication as busy.
        pipeline_s = float(max(spans.end_of_task[task] for task in info.pipeline_end_task.values()))
        busy = spans.union_total_s(spans.mask("stream", ("compute", "tp"))
                                   & spans.mask("category", ("optimizer",), negate=True))
        bubble = 1.0 - busy / (n * pipeline_s) if pipeline_s > 0 else float("nan")
        bubble = 0.0 if abs(bubble) < 1e-12 else bubble  # float noise of a bubble-free step
        metrics = {
            "model": model.name, "gpu": gpu.name, "gpus": cluster.num_devices,
            "tp": par.tp, "pp": par.pp, "dp": par.dp,
            "schedule": self.schedule if par.pp > 1 else "none",
            "microbatches": self.num_microbatches,
            "step_time_s": step_s,
            "tokens_per_s": tokens / step_s,
            "mfu": model_flops / (step_s * cluster.num_devices * peak_flops),
            "tflops_per_gpu": model_flops / (step_s * cluster.num_devices) / 1e12,
            "hardware_tflops_per_gpu": (model_flops + self._recompute_flops(model) * tokens)
            / (step_s * cluster.num_devices) / 1e12,
            "bubble_fraction": bubble,
            "compute_time_s": compute_s,
            "communication_time_s": comm_s,
            "exposed_communication_s": step_s - compute_s,
        }
        per_param = {"weights": 2.0, "gradients": 4.0} if par.zero_stage < 2 else {
            k: v for k, v in state_bytes_per_param(dp=par.dp, zero_stage=par.zero_stage).items()
            if k != "optimizer"}
        peaks = []
        for stage in range(par.pp):
            device = self.layout.device(stage=stage, tp_rank=0, dp_rank=0)
            tier = cluster.devices[device].tier_for("weights").name
            pool = sim.pools[cluster.names[device], tier]
            params = info.params_per_stage[stage]
            resident = (sum(per_param.values()) * params + self._optimizer_bytes(params, plan)
                        - spill.spilled_bytes_per_param * params)
            peaks.append(pool.peak_bytes)
            if par.pp <= 16:
                metrics[f"stage{stage}_peak_gib"] = pool.peak_bytes / 2**30
                metrics[f"stage{stage}_activations_gib"] = (pool.peak_bytes - resident) / 2**30
        stage0 = info.params_per_stage[0]
        metrics.update({
            "peak_memory_gib": max(peaks) / 2**30,
            "stage0_weights_gib": per_param["weights"] * stage0 / 2**30,
            "stage0_gradients_gib": per_param["gradients"] * stage0 / 2**30,
            "stage0_optimizer_gib": self._optimizer_bytes(stage0, plan) / 2**30,
            "activation_gib_per_layer": info.activation_bytes_per_layer / 2**30,
            "devices_simulated": n,
            "tasks": len(program.tasks),
        })
        return metrics


def _plot_pipeline(*args, **kwargs):
    """``training_plots.plot_pipeline``, imported when a plot is drawn: importing pyplot costs
    seconds that a run which only wants metrics should not pay."""
    from clustersim.workloads.training_plots import plot_pipeline

    return plot_pipeline(*args, **kwargs)

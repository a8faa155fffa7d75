"""One training step compiled into a Program: a pipeline schedule x tensor x data parallelism.

Each action of the schedule (``clustersim.schedules``: F, B, W, BW and the vocabulary-parallel
S, T, IF, IB, each for a micro-batch and a model chunk) expands into the ops of the layers its
model slice holds (``transformer.py``), on every device that runs it:

* compute ops on the ``compute`` stream, in the schedule's order;
* tensor-parallel collectives as collective tasks over the stage's TP group (``tp`` stream);
  the next compute op waits for them, as Megatron's blocking TP communication does;
* each cross-stage dependency of the schedule becomes a transfer over the fabric (``send``
  streams: activations forward, gradients backward), and each vocabulary-parallel collective
  (broadcast of the last hidden state, softmax-statistics all-reduce, ...) a collective over
  the pipeline group (``pp`` stream);
* gradient synchronisation per model slice over every device that holds it (the DP replicas,
  and BitPipe's two model replicas) on the ``dp`` stream, started when the slice's last
  weight-gradient pass is done, so it overlaps the rest of the backward pass when enabled;
* the optimizer step on the compute stream after every gradient of the stage has arrived;
* with ZeRO-1/2, the all-gather of each bucket's updated parameter shards (``param_gather.py``):
  after the optimizer step, or overlapped with the step's first forward pass.

Two granularities. ``op``: one task per op and TP collectives on the fabric (exact, small runs).
``layer``: one task per layer pass whose duration sums its ops and its TP collectives timed on
the idle fabric, one device standing for its TP group (TP ranks are symmetric). With
``replicas="one"`` one DP replica stands for all, and gradient collectives are timed by running
all DP groups' collectives together on the idle fabric once. The results say which was used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from clustersim.gc_pause import gc_paused
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.network.nccl import arch_of
from clustersim.ops import Op, OpKind, dtype_bytes, elementwise, matmul
from clustersim.schedules import Action, ActionKind, Link, Schedule, replay
from clustersim.sim.program import Program
from clustersim.workloads import kernels, tp_overlap
from clustersim.workloads.idle_collectives import idle_collective_time_s  # noqa: F401 (re-exported)
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.param_gather import ParamGatherEmitter
from clustersim.workloads.parallel_layout import ParallelLayout
from clustersim.workloads.zero_sharding import FsdpEmitter, unit_of

_NO_PIECE = object()  # a folded task that completes no weight-gradient piece

# Read per action of large schedules: enum ``name``/``value`` and the kind predicates are
# Python-level properties, dict lookups on members (hashed by identity) are not.
_KIND_NAME = {kind: kind.name for kind in ActionKind}
_LINK_VALUE = {link: link.value for link in Link}
_VOCABULARY_KINDS = frozenset(kind for kind in ActionKind if kind.is_vocabulary)
_GRAD_KEY_KIND = {kind: ("slice" if kind.is_weight_grad and kind.is_transformer else
                         "vocab" if kind.is_vocabulary and kind.is_weight_grad else None)
                  for kind in ActionKind}

# Vocabulary-parallel collectives over the pipeline group: (collective, root position).
_VOCAB_COLLECTIVES = {
    Link.EMBEDDING_REDUCE: ("reduce", "first"),
    Link.OUTPUT_BROADCAST: ("broadcast", "last"),
    Link.OUTPUT_REDUCE: ("reduce", "last"),
    Link.SOFTMAX_ALLREDUCE: ("all_reduce", None),
    Link.EMBEDDING_GRAD_BROADCAST: ("broadcast", "first"),
}


@dataclass(frozen=True)
class StepConfig:
    model: ModelConfig
    layout: ParallelLayout
    micro_batch: int
    seq_len: int
    sequence_parallel: bool = False
    recompute: str = "none"
    zero_stage: int = 0
    dtype: str = "bf16"
    overlap_grad_reduce: bool = True
    granularity: str = "op"          # "op" | "layer"
    # Gradients are reduced in buckets of at least this many parameters, each as soon as its
    # last layer's backward is done (Megatron-Core DistributedDataParallelConfig: 40M).
    grad_bucket_params: float = 40e6
    replicas: str = "all"            # "all" | "one" (DP replicas are symmetric)
    # Which kernels the framework runs (attention flash/unfused, dropout, fusions): kernels.py
    kernels: kernels.KernelChoices = field(default_factory=kernels.KernelChoices)
    # Expert parallelism (clustersim.workloads.moe.ep_layer.EPPlan): MoE blocks run on EP groups
    # with all-to-all dispatch; None keeps the experts tensor-sharded on every rank.
    ep_plan: object = None
    # ZeRO-3 / FSDP: gather unit k+1 during unit k's compute (False: every collective exposed)
    zero_prefetch: bool = True
    zero_reduce_dtype: str = "bf16"  # ZeRO-3: dtype of the per-unit gradient reduce-scatter
    # ZeRO-1/2: gather updated parameters during the next forward (param_gather.py) or after
    # the optimizer step (False, Megatron-Core's DistributedDataParallelConfig default)
    overlap_param_gather: bool = False


@dataclass
class StepInfo:
    """What the compiler knows that metrics need."""

    activation_bytes_per_layer: float = 0.0
    layers_per_slice: int = 0
    params_per_stage: dict[int, float] = field(default_factory=dict)
    pipeline_end_task: dict[int, int] = field(default_factory=dict)  # per simulated device


def _slice_layers(model: ModelConfig, schedule: Schedule) -> int:
    slices = len(schedule.layout.path(0))
    if model.num_layers % slices:
        raise ValueError(f"{model.num_layers} layers of {model.name} cannot be split evenly over "
                         f"the {slices} model chunks of schedule {schedule.name!r}")
    return model.num_layers // slices


def _activation_tier(cluster: Cluster) -> str:
    """The tier activations are allocated on: the devices' own choice (``tier_for``)."""
    names = {device.tier_for("activations").name for device in cluster.devices}
    if len(names) != 1:
        raise ValueError(f"devices keep activations on different tiers {sorted(names)}; a "
                         "training step needs one activation tier across its devices")
    return names.pop()


class _StepCompiler:
    def __init__(self, cfg: StepConfig, cluster: Cluster, schedule: Schedule):
        self.cfg, self.cluster, self.schedule = cfg, cluster, schedule
        self.slices = len(schedule.layout.path(0))
        self.layers_per_slice = _slice_layers(cfg.model, schedule)
        self.vocab = schedule.vocab_algorithm
        self.program = Program()
        self.act_tier = _activation_tier(cluster)
        for name in cluster.names:
            self.program.device(name)
        self.fold_tp = cfg.granularity == "layer"
        self.tp_ranks = [0] if self.fold_tp else list(range(cfg.layout.tp))
        self.dp_ranks = [0] if cfg.replicas == "one" else list(range(cfg.layout.dp))
        # fp8 training keeps activations in bf16 and runs the linear GEMMs in fp8 (kernels.py)
        self.op_dtype = "bf16" if cfg.dtype == "fp8" else cfg.dtype
        self.kernel_choices = (dataclasses.replace(
            cfg.kernels, gemm_dtype="fp8",  # Blackwell's fp8 MMA takes both operand layouts
            fp8_transposed_copies=arch_of(cluster.devices[0].name) != "blackwell")
            if cfg.dtype == "fp8" else cfg.kernels)
        self.kw = dict(micro_batch=cfg.micro_batch, seq_len=cfg.seq_len, tp=cfg.layout.tp,
                       sequence_parallel=cfg.sequence_parallel, dtype=self.op_dtype)
        self.hidden_bytes = (cfg.micro_batch * cfg.seq_len * cfg.model.hidden_size
                             * dtype_bytes(self.op_dtype))
        self.act_bytes = tfm.activation_bytes_per_layer(
            cfg.model, micro_batch=cfg.micro_batch, seq_len=cfg.seq_len, tp=cfg.layout.tp,
            sequence_parallel=cfg.sequence_parallel, recompute=cfg.recompute, dtype=self.op_dtype,
            flash_attention=cfg.kernels.flash, dropout=cfg.kernels.dropout)
        if cfg.ep_plan is not None and cfg.ep_plan.activation_tier is not None:
            # under EP each device keeps its own experts' activations (moe.ep_layer)
            self.act_bytes -= cfg.ep_plan.balanced_activation_bytes()
        self.info = StepInfo(activation_bytes_per_layer=self.act_bytes,
                             layers_per_slice=self.layers_per_slice)
        self.finished: dict[tuple, int] = {}      # (action, tp, dp) -> last task
        self.transfers: dict[tuple, int] = {}     # (producer, dst stage, tp, dp) -> transfer
        self.collectives: dict[tuple, dict[int, int]] = {}  # (link, mb, tp, dp) -> stage -> task
        self.grad_ready: dict[tuple, int] = {}    # (stage, chunk, tp, dp) -> last weight-grad task
        self.piece_ready: dict[tuple, int] = {}   # (stage, chunk, piece, tp, dp) -> its wgrad task
        self._pipeline_of = schedule.layout.microbatch_pipeline
        self._slices: dict[tuple[int, int, int], int] = {}  # (stage, chunk, pipeline) -> slice
        self._texts: dict[Action, str] = {}      # str(action) of emitted actions (task names)
        # ZeRO-3 / FSDP FULL_SHARD: per-unit all-gathers and reduce-scatters (zero_sharding.py)
        self.fsdp = FsdpEmitter(self, prefetch=cfg.zero_prefetch,
                                reduce_bytes=dtype_bytes(cfg.zero_reduce_dtype)) if cfg.zero_stage >= 3 else None
        # ZeRO-1/2: all-gathers of the updated parameter shards (param_gather.py)
        self.param_gather = ParamGatherEmitter(self) if 1 <= cfg.zero_stage <= 2 else None

    def device(self, stage: int, tp_rank: int, dp_rank: int) -> int:
        return self.cfg.layout.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)

    # -- ops of one action on one TP rank ------------------------------------------------------
    def _layers(self, slice_index: int) -> range:
        n = self.layers_per_slice
        return range(slice_index * n, (slice_index + 1) * n)

    @functools.cache
    def action_ops(self, kind: ActionKind, slice_index: int | None) -> tuple[tuple[Op, ...], ...]:
        """Ops of one pass grouped per layer (a group is one task at layer granularity)."""
        if kind.is_vocabulary:
            return (tuple(self._vocab_ops(kind)),)
        model, kw = self.cfg.model, self.kw
        first, last = slice_index == 0, slice_index == self.slices - 1
        owns_ends = self.vocab is None
        groups: list[list[Op]] = []
        if kind is ActionKind.F:
            if first and owns_ends:
                groups.append(tfm.embedding_forward(model, **kw))
            groups += [tfm.layer_forward(model, layer=l, **kw) for l in self._layers(slice_index)]
            if last and owns_ends:
                groups.append(tfm.lm_head_forward(model, **kw))
            # the forward pass runs the same kernel choices as the backward's recomputation
            return tuple(tuple(kernels.expand_layer_ops(
                g, self.kernel_choices, bias=model.bias, hidden_size=model.hidden_size,
                tokens=self.cfg.micro_batch * self.cfg.seq_len)) for g in groups)
        if last and owns_ends:
            groups.append(tfm.lm_head_backward(model, **kw))
        groups += [tfm.layer_backward(model, layer=l, recompute=self.cfg.recompute, **kw)
                   for l in reversed(self._layers(slice_index))]
        if first and owns_ends:
            groups.append(tfm.embedding_backward(model, **kw))
        groups = [kernels.expand_layer_ops(g, self.kernel_choices, bias=model.bias,
                                           hidden_size=model.hidden_size,
                                           tokens=self.cfg.micro_batch * self.cfg.seq_len)
                  for g in groups]
        if kind in (ActionKind.B, ActionKind.W):  # zero-bubble split: W is the weight GEMMs
            def is_w(op: Op) -> bool:
                return op.kind is OpKind.MATMUL and op.name.endswith(".wgrad")
            groups = [[op for op in g if is_w(op) == (kind is ActionKind.W)] for g in groups]
            groups = [g for g in groups if g]
        return tuple(tuple(g) for g in groups)

    def _vocab_rows(self) -> int:
        shards = self.cfg.layout.tp * self.cfg.layout.pp
        return -(-self.cfg.model.vocab_size // shards)

    def _vocab_ops(self, kind: ActionKind) -> list[Op]:
        """One stage's 1/(tp x pp) vocabulary shard (Yeung et al. 2024): S and T split the output
        layer's forward and backward, IF and IB the input embedding's."""
        cfg, model = self.cfg, self.cfg.model
        t, h, rows, dt = cfg.micro_batch * cfg.seq_len, model.hidden_size, self._vocab_rows(), self.op_dtype
        labels = {"block": "vocabulary", "phase": "fwd" if kind.is_forward else "bwd"}
        eb = dtype_bytes(dt)
        if kind is ActionKind.S:
            ops = [matmul(t, rows, h, dtype=dt, name="output_shard", shared_b=True, **labels),
                   elementwise(t * rows, kind=OpKind.SOFTMAX, outputs=0, flops_per_element=4.0,
                               dtype=dt, name="softmax_stats", **labels)]
            if self.vocab == 2:  # Algorithm 2 computes the input-gradient partial in S
                ops.append(matmul(t, h, rows, dtype=dt, name="output_shard.dgrad", shared_b=True, **labels))
            return ops
        if kind is ActionKind.T:
            ops = [elementwise(t * rows, kind=OpKind.SOFTMAX, flops_per_element=2.0, dtype=dt,
                               name="softmax_rescale", **labels)]
            if self.vocab == 1:
                ops.append(matmul(t, h, rows, dtype=dt, name="output_shard.dgrad", shared_b=True, **labels))
            ops.append(matmul(h, rows, t, dtype=dt, name="output_shard.wgrad", **labels))
            return ops
        if kind is ActionKind.IF:
            return [Op(OpKind.EMBEDDING, bytes_read=float(8 * t + eb * t * h * rows / model.vocab_size),
                       bytes_written=float(eb * t * h), dtype=dt, shape=(t * h,),
                       name="embedding_shard", labels=labels)]
        return [Op(OpKind.EMBEDDING, flops=float(t * h * rows / model.vocab_size),
                   bytes_read=float(8 * t + eb * t * h),
                   bytes_written=float(eb * t * h * rows / model.vocab_size), dtype=dt,
                   shape=(t * h,), backward=True, name="embedding_shard.bwd", labels=labels)]

    @functools.cache
    def tp_collective_time_s(self, collective: str, size_bytes: float) -> float:
        group = self.cfg.layout.tp_group(stage=0, dp_rank=0)
        return idle_collective_time_s(self.cluster, [(collective, group, size_bytes)])

    @functools.cache
    def action_times(self, kind: ActionKind, slice_index: int | None) -> tuple[tuple[float, ...], ...]:
        """Per group, each op's duration on the device (collectives: 0, the fabric times them),
        computed once per (kind, slice) rather than once per task."""
        device = self.cluster.devices[0]
        return tuple(tuple(0.0 if op.kind.is_communication else device.op_time(op) for op in ops)
                     for ops in self.action_ops(kind, slice_index))

    @functools.cache
    def fused_times(self, kind: ActionKind, slice_index: int | None) -> tuple[float, ...]:
        return tuple(self.fused_time_s(ops) for ops in self.action_ops(kind, slice_index))

    def fused_time_s(self, ops: Sequence[Op]) -> float:
        """Ops in order, TP collectives timed on the idle fabric; with Megatron-Core's TP comm
        overlap the collectives hide behind their GEMMs as ``tp_overlap.py`` models."""
        device = self.cluster.devices[0]
        return tp_overlap.layer_time_s(
            ops, device.op_time,
            lambda op: self.tp_collective_time_s(op.labels["collective"], op.bytes_read),
            self.cfg.kernels.tp_overlap, tp=self.cfg.layout.tp,
            num_sms=getattr(device, "num_sms", None))

    # -- program construction ----------------------------------------------------------------
    def compile(self) -> tuple[Program, StepInfo]:
        replay(self.schedule, self._emit_action)  # a global order where producers come first
        for device in {self.device(s, t, d) for s in range(self.cfg.layout.pp)
                       for t in self.tp_ranks for d in self.dp_ranks}:
            self.info.pipeline_end_task[device] = self.program.streams[(device, "compute")][-1]
        self._emit_gradient_sync_and_optimizer()
        return self.program, self.info

    def _slice_of(self, action: Action) -> int | None:
        # The slice depends on (stage, chunk) and the micro-batch's pipeline only: look it up
        # once per combination, not once per action (hundreds of thousands in a large step).
        if action.kind in _VOCABULARY_KINDS:
            return None
        key = (action.stage, action.chunk, self._pipeline_of[action.microbatch])
        found = self._slices.get(key)
        if found is None:
            found = self._slices[key] = self.schedule.model_slice(action)[0]
        return found

    @functools.cache
    def _folded_plan(self, kind: ActionKind, slice_index: int | None) -> tuple[tuple, ...]:
        """Per layer task of a pass at layer granularity: (layer label, duration, alloc, free,
        weight-gradient piece or None), the same for every micro-batch and replica."""
        groups = self.action_ops(kind, slice_index)
        times = self.fused_times(kind, slice_index)
        marks_piece = kind.is_weight_grad and kind.is_transformer
        plan = []
        for index, ops in enumerate(groups):
            alloc, free = self._memory_effects(kind, ops, index == len(groups) - 1)
            plan.append((ops[0].labels.get("layer", kind.name), times[index], alloc, free,
                         ops[0].labels.get("layer") if marks_piece else _NO_PIECE))
        return tuple(plan)

    def _emit_folded(self, action: Action) -> None:
        """``_emit_action`` at layer granularity (one TP rank stands for its group): the same
        tasks, in the same order, from the pass's cached plan."""
        stage, kind, microbatch, chunk = action.stage, action.kind, action.microbatch, action.chunk
        plan = self._folded_plan(kind, self._slice_of(action))
        text = self._texts[action] = str(action)
        pass_name = _KIND_NAME[kind]
        incoming = self._incoming_ranks(action)
        devices = self._stage_devices(stage)
        compute = self.program.compute
        last: list[int] = [0] * len(devices)
        first = True
        gathers = self.param_gather
        for layer, duration, alloc, free, piece in plan:
            name = f"{text} L{layer}"
            gathered = gathers.forward_deps(action, layer, lambda: {
                device: incoming[dp_rank][0] for dp_rank, device in devices}) if gathers else None
            for position, (dp_rank, device) in enumerate(devices):
                deps = incoming[dp_rank][0] if first else ()
                if gathered:
                    deps = tuple(deps) + tuple(gathered.get(device, ()))
                last[position] = compute(device, "compute", name, duration, deps=deps,
                                         alloc=alloc, free=free,
                                         labels={"stage": stage, "microbatch": microbatch,
                                                 "chunk": chunk, "pass": pass_name,
                                                 "layer": layer})
            first = False
            if piece is not _NO_PIECE:
                for position, (dp_rank, _) in enumerate(devices):
                    self.piece_ready[(stage, action.chunk, piece, 0, dp_rank)] = last[position]
        if not plan:
            return
        grad_kind = _GRAD_KEY_KIND[kind]
        grad_key = ((stage, action.chunk) if grad_kind == "slice" else
                    (stage, "vocab") if grad_kind == "vocab" else None)
        for position, (dp_rank, _) in enumerate(devices):
            self.finished[(action, 0, dp_rank)] = last[position]
            if grad_key is not None:
                self.grad_ready[grad_key + (0, dp_rank)] = last[position]

    @functools.cache
    def _stage_devices(self, stage: int) -> tuple[tuple[int, int], ...]:
        """(dp rank, device) of TP rank 0 of ``stage`` for every simulated DP rank."""
        return tuple((d, self.device(stage, 0, d)) for d in self.dp_ranks)

    def _emit_action(self, action: Action) -> None:
        if self.fold_tp and self.fsdp is None:
            return self._emit_folded(action)
        slice_index = self._slice_of(action)
        groups = self.action_ops(action.kind, slice_index)
        times = (self.fused_times if self.fold_tp else self.action_times)(action.kind, slice_index)
        labels = {"stage": action.stage, "microbatch": action.microbatch, "chunk": action.chunk,
                  "pass": action.kind.name}
        # Layers outer, data-parallel ranks inner: an expert-parallel all-to-all joins the
        # ranks of one EP group, so each layer is emitted on all of them before the next.
        incoming = {d: {t: self._incoming(action, t, d) for t in self.tp_ranks}
                    for d in self.dp_ranks}
        last: dict[int, dict[int, int]] = {d: {} for d in self.dp_ranks}
        for index, ops in enumerate(groups):
            alloc, free = self._memory_effects(action.kind, ops, index == len(groups) - 1)
            first = index == 0
            gathers = None
            gathered = self.param_gather.forward_deps(
                action, ops[0].labels.get("layer"), lambda: {
                    self.device(action.stage, t, d): incoming[d][t]
                    for d in self.dp_ranks for t in self.tp_ranks}) if self.param_gather else None
            if gathered:  # ZeRO-1/2 overlapped: the first forward waits for its bucket's gather
                incoming = {d: {t: list(incoming[d][t] if first else ())
                                + gathered.get(self.device(action.stage, t, d), [])
                                for t in self.tp_ranks} for d in self.dp_ranks}
                first = True
            if self.fsdp is not None:
                unit = unit_of(ops[0].labels)
                gathers = self.fsdp.gather(action.stage, unit, f"fsdp all_gather {action} U{unit}")
                extra_alloc, extra_free = self.fsdp.memory_effects(unit, not action.kind.is_forward)
                alloc, free = alloc + extra_alloc, free + extra_free
                incoming = {d: {t: list(incoming[d][t] if first else ()) + [gathers[(t, d)]]
                                for t in self.tp_ranks} for d in self.dp_ranks}
                first = True   # each unit's first op waits for its gather
            if self.fold_tp:
                layer = ops[0].labels.get("layer", action.kind.name)
                for dp_rank in self.dp_ranks:
                    device = self.device(action.stage, 0, dp_rank)
                    last[dp_rank][0] = self.program.compute(
                        device, "compute", f"{action} L{layer}", times[index],
                        deps=incoming[dp_rank][0] if first else (), alloc=alloc, free=free,
                        labels={**labels, "layer": layer})
            else:
                segments = _moe_segments(ops) if self.cfg.ep_plan is not None else [(False, 0, len(ops))]
                for number, (is_moe, lo, hi) in enumerate(segments):
                    at_end = number == len(segments) - 1
                    seg_alloc, seg_free = (alloc, free) if at_end else ((), ())
                    deps = incoming if first and number == 0 else None
                    if is_moe:
                        self._emit_moe(action, ops[lo], labels, deps, seg_alloc, seg_free, last)
                        continue
                    for dp_rank in self.dp_ranks:
                        self._emit_ops(action.stage, dp_rank, ops[lo:hi], times[index][lo:hi],
                                       labels, deps[dp_rank] if deps else None, seg_alloc,
                                       seg_free, last[dp_rank])
            if self.fsdp is not None:
                ends = {(t, d): last[d][t] for d in self.dp_ranks for t in self.tp_ranks}
                for (t, d), task in ends.items():
                    self.fsdp.computed(t, d, task)
                if not action.kind.is_forward:
                    self.fsdp.reduce(action.stage, unit, f"fsdp reduce_scatter {action} U{unit}",
                                     ends)
            if action.kind.is_weight_grad and action.kind.is_transformer:
                piece = ops[0].labels.get("layer")
                for dp_rank in self.dp_ranks:
                    for tp_rank, task in last[dp_rank].items():
                        self.piece_ready[(action.stage, action.chunk, piece, tp_rank, dp_rank)] = task
        for dp_rank in self.dp_ranks:
            for tp_rank, task in last[dp_rank].items():
                self.finished[(action, tp_rank, dp_rank)] = task
                if action.kind.is_weight_grad and action.kind.is_transformer:
                    self.grad_ready[(action.stage, action.chunk, tp_rank, dp_rank)] = task
                elif action.kind.is_vocabulary and action.kind.is_weight_grad:
                    self.grad_ready[(action.stage, "vocab", tp_rank, dp_rank)] = task

    def _emit_moe(self, action: Action, op: Op, labels, incoming, alloc, free, last) -> None:
        """One MoE block on every EP group of the stage (``moe.ep_layer``)."""
        plan, phase = self.cfg.ep_plan, op.labels.get("phase", "fwd")
        backward = phase == "bwd"
        for group_first in range(0, self.cfg.layout.dp, plan.ep):
            ranks = range(group_first, group_first + plan.ep)
            deps = {(t, d): ([last[d][t]] if t in last[d] else [])
                    + (list(incoming[d][t]) if incoming else []) for t in self.tp_ranks for d in ranks}
            ends = plan.emit(self.program, stage=action.stage, tp_ranks=self.tp_ranks,
                             group_first=group_first, layer=op.labels["layer"],
                             microbatch=action.microbatch, phase=phase,
                             dgrad=not backward or action.kind is not ActionKind.W,
                             wgrad=not backward or action.kind is not ActionKind.B,
                             deps=deps, labels=labels)
            for (t, d), task in ends.items():
                if alloc or free:  # the layer's memory effects, when its MoE block ends it
                    task = self.program.compute(self.device(action.stage, t, d), "compute",
                                                "moe end", 0.0, deps=[task], alloc=alloc,
                                                free=free, labels=labels)
                last[d][t] = task

    def _incoming_ranks(self, action: Action) -> dict[int, dict[int, tuple[int, ...]]]:
        """``_incoming`` of every simulated (dp rank, tp rank), the links grouped once."""
        by_link = self._by_link(action)
        return {d: {t: tuple(self._incoming(action, t, d, by_link)) for t in self.tp_ranks}
                for d in self.dp_ranks}

    def _by_link(self, action: Action) -> dict[Link, list[Action]]:
        """Producers on other streams, grouped by link in the order the links first appear."""
        by_link: dict[Link, list[Action]] = {}
        for dep in self.schedule.dependencies(action):
            link = dep.link
            if link is Link.LOCAL:
                continue
            producers = by_link.get(link)
            if producers is None:
                by_link[link] = [dep.action]
            else:
                producers.append(dep.action)
        return by_link

    def _incoming(self, action: Action, tp_rank: int, dp_rank: int, by_link=None) -> list[int]:
        """Task ids this action waits for on other streams (stream order covers LOCAL ones)."""
        deps = []
        if by_link is None:
            by_link = self._by_link(action)
        for link, producers in by_link.items():
            if link.is_p2p:
                for producer in producers:
                    deps.append(self._transfer(producer, action.stage, link, tp_rank, dp_rank))
            else:
                members = self._vocab_collective(link, action.microbatch, producers, tp_rank, dp_rank)
                deps.append(members[action.stage])
        return deps

    def _transfer(self, producer: Action, dst_stage: int, link: Link, tp_rank: int, dp_rank: int) -> int:
        key = (producer, dst_stage, tp_rank, dp_rank)
        task = self.transfers.get(key)
        if task is None:
            src = self.device(producer.stage, tp_rank, dp_rank)
            dst = self.device(dst_stage, tp_rank, dp_rank)
            # One send stream per direction, as Megatron batches forward and backward p2p
            # separately: a gradient send never queues behind an activation send.
            stream = "send fwd" if link is Link.ACTIVATION else "send bwd"
            text = self._texts.get(producer)
            if text is None:
                text = str(producer)
            task = self.transfers[key] = self.program.transfer(
                src, dst, self.hidden_bytes, stream=stream, name=f"send {_LINK_VALUE[link]} {text}",
                deps=[self.finished[(producer, tp_rank, dp_rank)]],
                labels={"stage": producer.stage, "microbatch": producer.microbatch})
        return task

    def _vocab_collective(self, link: Link, microbatch: int, producers: list[Action],
                          tp_rank: int, dp_rank: int) -> dict[int, int]:
        key = (link, microbatch, tp_rank, dp_rank)
        if key not in self.collectives:
            kind, root = _VOCAB_COLLECTIVES[link]
            pp = self.cfg.layout.pp
            stages = list(range(pp))
            if root == "first" and kind == "reduce" or root == "last" and kind == "broadcast":
                stages = stages[::-1]  # the chain flows away from (broadcast) or into (reduce) the root
            size = (8.0 * self.cfg.micro_batch * self.cfg.seq_len if link is Link.SOFTMAX_ALLREDUCE
                    else self.hidden_bytes)
            by_stage = defaultdict(list)
            for producer in producers:
                by_stage[producer.stage].append(self.finished[(producer, tp_rank, dp_rank)])
            group = [self.device(s, tp_rank, dp_rank) for s in stages]
            algorithm = "broadcast" if kind in ("broadcast", "reduce") else kind
            steps = self.cluster.collective(algorithm, group, size) if pp > 1 else ()
            ids = self.program.collective(
                f"{link.value} {microbatch}", [(d, "pp", by_stage[s]) for d, s in zip(group, stages)],
                steps, labels={"microbatch": microbatch})
            self.collectives[key] = dict(zip(stages, ids))
        return self.collectives[key]

    def _memory_effects(self, kind: ActionKind, ops: Sequence[Op], last_group: bool):
        """Activations: a layer's forward allocates what its backward needs; the pass that
        frees activations (W or BW; T for the output shard's logits) releases them."""
        layer = ops[0].labels.get("layer")
        if kind.is_vocabulary:
            logits = self.cfg.micro_batch * self.cfg.seq_len * self._vocab_rows() * 4.0
            if kind is ActionKind.S:
                return ((self.act_tier, logits),), ()
            if kind is ActionKind.T:
                return (), ((self.act_tier, logits),)
            return (), ()
        if not isinstance(layer, int) or self.act_bytes <= 0:
            return (), ()
        if kind is ActionKind.F:
            return ((self.act_tier, self.act_bytes),), ()
        if kind.frees_activations:
            return (), ((self.act_tier, self.act_bytes),)
        return (), ()

    def _emit_ops(self, stage, dp_rank, ops, times, labels, incoming, alloc, free, last) -> None:
        prog = self.program
        prev: dict[int, int | None] = {t: last.get(t) for t in self.tp_ranks}
        n = len(ops)
        for i, op in enumerate(ops):
            op_labels = {**labels, **op.labels}
            at_end = i == n - 1
            first_deps = {t: (incoming[t] if incoming is not None and i == 0 else [])
                          for t in self.tp_ranks}
            if op.kind.is_communication:
                members = []
                for tp_rank in self.tp_ranks:
                    deps = ([prev[tp_rank]] if prev[tp_rank] is not None else []) + first_deps[tp_rank]
                    members.append((self.device(stage, tp_rank, dp_rank), "tp", deps))
                steps = self.cluster.collective(op.labels["collective"], [m[0] for m in members],
                                                op.bytes_read)
                for tp_rank, task in zip(self.tp_ranks, prog.collective(op.name, members, steps,
                                                                         labels=op_labels)):
                    prev[tp_rank] = task
            else:
                for tp_rank in self.tp_ranks:
                    device = self.device(stage, tp_rank, dp_rank)
                    deps = ([prev[tp_rank]] if prev[tp_rank] is not None else []) + first_deps[tp_rank]
                    prev[tp_rank] = prog.compute(
                        device, "compute", op.name, times[i],
                        deps=deps, alloc=alloc if at_end else (), free=free if at_end else (),
                        labels=op_labels)
        for tp_rank, task in prev.items():
            if task is not None:
                last[tp_rank] = task

    # -- gradients and optimizer -------------------------------------------------------------
    @functools.cache
    def _chunk_slice(self, stage: int, chunk: int) -> int:
        layout = self.schedule.layout
        k = layout.virtual_stage(stage, chunk)
        for path in layout.pipelines:
            if k in path:
                return path.index(k)
        raise ValueError(f"stage {stage} chunk {chunk} is on no pipeline")

    def _slice_params(self, slice_index: int) -> float:
        """Parameters of one TP rank in one model slice (with the embedding / LM head it owns)."""
        model, tp = self.cfg.model, self.cfg.layout.tp
        params = self.layers_per_slice * self._layer_params()
        if self.vocab is None and slice_index == 0:
            params += tfm.params_per_rank(model, part="embedding", tp=tp)
        if self.vocab is None and slice_index == self.slices - 1:
            params += tfm.params_per_rank(model, part="lm_head", tp=tp)
        return float(params)

    def _layer_params(self, part: str = "all") -> float:
        """One layer's parameters on one rank; under EP only the rank's own experts (and the
        replicas it holds) count (``moe.ep_layer.EPPlan.layer_params_per_rank``). ``part``:
        "all", "dense" (reduced over dp) or "experts" (reduced over the expert-DP group)."""
        plan = self.cfg.ep_plan
        if plan is None:
            full = tfm.params_per_rank(self.cfg.model, part="layer", tp=self.cfg.layout.tp)
            return 0.0 if part == "experts" else full
        experts = plan.expert_params_per_rank(1)
        full = plan.layer_params_per_rank()
        return {"all": full, "dense": full - experts, "experts": experts}[part]

    def _vocab_params(self) -> float:
        if self.vocab is None:
            return 0.0
        shards = 1 if self.cfg.model.tied_embeddings else 2
        return float(shards * self._vocab_rows() * self.cfg.model.hidden_size)

    def stage_params(self, stage: int) -> float:
        chunks = self.schedule.num_chunks
        return sum(self._slice_params(self._chunk_slice(stage, c)) for c in range(chunks)) \
            + self._vocab_params()

    def _sync_groups(self) -> dict[object, list[tuple[int, object]]]:
        """Model pieces whose gradients are reduced together -> the (stage, chunk) holding them.

        A model slice held by two stages (BitPipe's two replicas) is one group over both."""
        groups: dict[object, list[tuple[int, object]]] = defaultdict(list)
        for stage in range(self.cfg.layout.pp):
            for chunk in range(self.schedule.num_chunks):
                groups[("slice", self._chunk_slice(stage, chunk))].append((stage, chunk))
            if self.vocab is not None:
                groups[("vocab", stage)].append((stage, "vocab"))
        return groups

    def _buckets(self, key, part: str = "dense") -> list[tuple[float, object]]:
        """(parameters, last piece in backward order) per gradient bucket of a sync group;
        ``part="experts"``: the routed experts' buckets under expert parallelism."""
        if key[0] == "vocab":
            return [(self._vocab_params(), None)]
        slice_index, model, tp = key[1], self.cfg.model, self.cfg.layout.tp
        pieces: list[tuple[object, float]] = []
        experts = part == "experts"
        if self.vocab is None and slice_index == self.slices - 1 and not experts:
            pieces.append(("lm_head", tfm.params_per_rank(model, part="lm_head", tp=tp)))
        layer_params = self._layer_params(part)
        pieces += [(layer, layer_params) for layer in reversed(self._layers(slice_index))]
        if self.vocab is None and slice_index == 0 and not experts:
            pieces.append(("embedding", tfm.params_per_rank(model, part="embedding", tp=tp)))
        buckets, size = [], 0.0
        for piece, params in pieces:
            size += params
            if size >= self.cfg.grad_bucket_params:
                buckets.append((size, piece))
                size = 0.0
        if size:
            buckets.append((size, pieces[-1][0]))
        return buckets

    def _emit_gradient_sync_and_optimizer(self) -> None:
        cfg, lay, prog = self.cfg, self.cfg.layout, self.program
        kind = "reduce_scatter" if cfg.zero_stage >= 1 else "all_reduce"
        syncs: dict[int, list[int]] = defaultdict(list)  # device -> sync tasks it waits for
        if self.fsdp is not None:  # ZeRO-3 reduced each unit's gradients after its backward
            syncs.update(self.fsdp.reduce_tasks)
        for key, holders in (self._sync_groups().items() if self.fsdp is None else ()):
            if len(holders) * lay.dp < 2:
                continue
            for number, (params, piece) in enumerate(self._buckets(key)):
                name = f"grad {kind} {key[0]}{key[1]} bucket{number}"
                self._emit_bucket(name, kind, params * dtype_bytes(self.op_dtype), holders, piece, syncs)
            self._emit_expert_buckets(key, holders, kind, syncs)
        optimizer_task: dict[int, int] = {}
        for stage in range(lay.pp):
            params = self.stage_params(stage)
            self.info.params_per_stage[stage] = params
            optimizer = self._optimizer_ops(params)
            for t in self.tp_ranks:
                for d in self.dp_ranks:
                    device = self.device(stage, t, d)
                    optimizer_task[device] = prog.compute(
                        device, "compute", "optimizer step",
                        sum(map(self.cluster.devices[device].op_time, optimizer)),
                        deps=syncs.get(device, []), category="optimizer", labels={"stage": stage})
        if self.param_gather is not None:  # ZeRO-1/2: each rank updated only its shard
            self.param_gather.after_optimizer(optimizer_task)

    def _emit_expert_buckets(self, key, holders, kind, syncs) -> None:
        """Under EP, routed experts' gradients are reduced only among the ranks holding the same
        experts: the expert-DP group, dp / ep ranks one EP group apart (Megatron-Core)."""
        plan = self.cfg.ep_plan
        if plan is None or key[0] == "vocab" or self.cfg.layout.dp // plan.ep < 2:
            return
        for number, (params, piece) in enumerate(self._buckets(key, part="experts")):
            for position in range(plan.ep):
                name = f"grad {kind} experts {key[1]} bucket{number} ep{position}"
                self._emit_bucket(name, kind, params * dtype_bytes(self.op_dtype), holders,
                                  piece, syncs, dp_ranks=range(position, self.cfg.layout.dp,
                                                               plan.ep))

    def _emit_bucket(self, name, kind, size, holders, piece, syncs, dp_ranks=None,
                     ready=None) -> None:
        """One bucket's collective over every (stage, chunk, dp rank) holding it, per TP rank;
        each device's part waits for ``ready(stage, chunk, tp, dp)`` (default: the bucket's
        gradients are final, ``_ready``)."""
        lay, prog = self.cfg.layout, self.program
        if ready is None:
            def ready(s, c, t, d):
                return [self._ready(s, c, piece, t, d)]
        every = [(s, c, d) for s, c in holders for d in (dp_ranks or range(lay.dp))]
        if self.cfg.replicas == "one" or self.fold_tp:
            groups = [(kind, [self.device(s, t, d) for s, c, d in every], size) for t in range(lay.tp)]
            duration = idle_collective_time_s(self.cluster, groups)
            for t in self.tp_ranks:
                for s, c in holders:
                    for d in self.dp_ranks:
                        device = self.device(s, t, d)
                        syncs[device].append(prog.compute(
                            device, "dp", name, duration, deps=ready(s, c, t, d),
                            category="comm", labels={"stage": s}))
            return
        for t in self.tp_ranks:
            members = [(self.device(s, t, d), "dp", ready(s, c, t, d)) for s, c, d in every]
            steps = self.cluster.collective(kind, [m[0] for m in members], size)
            for (device, _, _), task in zip(members, prog.collective(name, members, steps)):
                syncs[device].append(task)

    def _ready(self, stage: int, chunk, piece, tp_rank: int, dp_rank: int) -> int:
        """The task after which a bucket's gradients on this device are final."""
        if not self.cfg.overlap_grad_reduce:
            return self.info.pipeline_end_task[self.device(stage, tp_rank, dp_rank)]
        if chunk == "vocab" or piece is None:
            return self.grad_ready[(stage, chunk, tp_rank, dp_rank)]
        task = self.piece_ready.get((stage, chunk, piece, tp_rank, dp_rank))
        if task is None:
            # A piece with no weight-gradient matmul of its own (the embedding: its gradient is
            # a scatter-add in the backward pass) is final once its chunk's last W pass has run.
            return self.grad_ready[(stage, chunk, tp_rank, dp_rank)]
        return task

    def _optimizer_ops(self, params: float) -> list[Op]:
        """AdamW on this rank's parameter shard, fp32 master weights and gradients (Rajbhandari
        et al. 2020's 16 bytes/param): fused (one pass) or unfused, as ``cfg.kernels`` says."""
        shard = params / (self.cfg.layout.dp if self.cfg.zero_stage >= 1 else 1)
        return kernels.adam_ops(shard, weight_dtype=self.op_dtype, grad_dtype="fp32",
                                fused=self.cfg.kernels.fused_optimizer,
                                fp16_optimizer_passes=self.cfg.kernels.fp16_optimizer_passes,
                                ddp_bucket_copies=self.cfg.kernels.ddp_bucket_copies)


def _moe_segments(ops: Sequence[Op]) -> list[tuple[bool, int, int]]:
    """(is the MoE block, start, end) runs of a layer's ops: the block is everything from the
    token permutation to the unpermutation (the experts, in any phase)."""
    def inside(op: Op) -> bool:
        return "expert" in op.labels or op.name.split(".")[0] in ("moe_permute", "moe_unpermute")
    out: list[tuple[bool, int, int]] = []
    for i, op in enumerate(ops):
        flag = inside(op)
        if out and out[-1][0] == flag:
            out[-1] = (flag, out[-1][1], i + 1)
        else:
            out.append((flag, i, i + 1))
    return out


def compile_training_step(cfg: StepConfig, cluster: Cluster, schedule: Schedule) -> tuple[Program, StepInfo]:
    # The compile only allocates (tasks, labels, keys) and frees nothing cyclic: cyclic garbage
    # collection passes over a growing heap of hundreds of thousands of tasks find nothing.
    with gc_paused():
        return _StepCompiler(cfg, cluster, schedule).compile()


def idealised_program(schedule: Schedule, duration) -> Program:
    """The schedule alone on the engine: one device per stage, one task per action lasting
    ``duration(action)``, every dependency a plain task dependency (free communication).

    This is the engine-side check of the schedules' closed forms (1F1B bubble and friends)."""
    program = Program()
    for stage in range(schedule.num_stages):
        program.device(f"stage{stage}")
    task_of: dict[Action, int] = {}

    def emit(action: Action) -> None:
        deps = [task_of[d.action] for d in schedule.dependencies(action)]
        task_of[action] = program.compute(action.stage, "compute", str(action), duration(action),
                                          deps=deps, labels={"microbatch": action.microbatch,
                                                             "pass": action.kind.name})

    replay(schedule, emit)
    return program

"""One training step compiled into a Program: pipeline schedule x tensor x data parallelism.

Given per-stage action lists (forward F, backward B, weight-gradient W, or fused BW, each for a
micro-batch and a model chunk), every action expands into the ops of the layers its virtual
stage holds (``transformer.py``), on every device that runs it:

* compute ops on the ``compute`` stream, in order;
* tensor-parallel collectives as collective tasks over the stage's TP group (``tp`` stream);
  the next compute op waits for them, as Megatron's blocking TP communication does;
* activations (forward) and gradients (backward) sent to the neighbouring stage as transfers
  over the fabric (``p2p`` stream);
* gradient synchronisation over the DP group per model chunk (``dp`` stream), started when the
  chunk's last backward is done, so it overlaps the rest of the backward pass when enabled;
* the optimizer step on the compute stream after every gradient has arrived.

Two granularities. ``op``: one task per op and TP collectives on the fabric (exact, small runs).
``layer``: one task per layer pass whose duration sums its ops and its TP collectives timed on
the idle fabric, with one device standing for its TP group (the TP ranks are symmetric), and
optionally one DP replica standing for all (``replicas="one"``): gradient collectives are then
timed by running all DP groups' collectives together on the idle fabric once. This keeps a
GPT-3 run on hundreds of GPUs at tens of thousands of tasks; the results say which was used.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from clustersim.hardware.cluster import Cluster
from clustersim.ops import Op, OpKind, dtype_bytes, elementwise
from clustersim.sim.program import Program
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.parallel_layout import ParallelLayout

HBM = "hbm"


@dataclass(frozen=True)
class StepConfig:
    model: ModelConfig
    layout: ParallelLayout
    micro_batch: int
    num_microbatches: int
    seq_len: int
    num_chunks: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    zero_stage: int = 0
    dtype: str = "bf16"
    overlap_grad_reduce: bool = True
    granularity: str = "op"          # "op" | "layer"
    replicas: str = "all"            # "all" | "one" (DP replicas are symmetric)


@dataclass
class StepInfo:
    """What the compiler knows that metrics need."""

    devices_simulated: list[int] = field(default_factory=list)
    resident_bytes: dict[int, float] = field(default_factory=dict)
    activation_bytes_per_layer: float = 0.0
    layers_per_virtual_stage: int = 0


def _kind(action) -> str:
    kind = action.kind
    return getattr(kind, "name", str(kind))


class _StepCompiler:
    def __init__(self, cfg: StepConfig, cluster: Cluster,
                 stage_actions: Sequence[Sequence[object]],
                 virtual_stage: Callable[[int, int], int]):
        self.cfg, self.cluster = cfg, cluster
        self.actions, self.virtual_stage = stage_actions, virtual_stage
        lay = cfg.layout
        self.num_virtual = lay.pp * cfg.num_chunks
        self.layers_per_vs = cfg.model.num_layers // self.num_virtual
        self.program = Program()
        for name in cluster.names:
            self.program.device(name)
        self.fold_tp = cfg.granularity == "layer"
        self.tp_ranks = [0] if self.fold_tp else list(range(lay.tp))
        self.dp_ranks = [0] if cfg.replicas == "one" else list(range(lay.dp))
        self.kw = dict(micro_batch=cfg.micro_batch, seq_len=cfg.seq_len, tp=lay.tp,
                       sequence_parallel=cfg.sequence_parallel, dtype=cfg.dtype)
        self.info = StepInfo(layers_per_virtual_stage=self.layers_per_vs)

    # -- ops of one action on one TP rank ------------------------------------------------------
    def _layers(self, vs: int) -> range:
        return range(vs * self.layers_per_vs, (vs + 1) * self.layers_per_vs)

    @functools.cache
    def action_ops(self, kind: str, vs: int) -> list[list[Op]]:
        """Ops grouped per layer pass (a group is one task at layer granularity)."""
        model, kw, groups = self.cfg.model, self.kw, []
        first, last = vs == 0, vs == self.num_virtual - 1
        if kind == "F":
            if first:
                groups.append(tfm.embedding_forward(model, **kw))
            groups += [tfm.layer_forward(model, layer=l, **kw) for l in self._layers(vs)]
            if last:
                groups.append(tfm.lm_head_forward(model, **kw))
            return groups
        backward = []
        if last:
            backward.append(tfm.lm_head_backward(model, **kw))
        backward += [tfm.layer_backward(model, layer=l, recompute=self.cfg.recompute, **kw)
                     for l in reversed(self._layers(vs))]
        if first:
            backward.append(tfm.embedding_backward(model, **kw))
        if kind in ("B", "W"):  # zero-bubble split: W is the weight-gradient GEMMs
            is_w = lambda op: op.kind is OpKind.MATMUL and op.name.endswith(".wgrad")
            backward = [[op for op in group if is_w(op) == (kind == "W")] for group in backward]
            backward = [group for group in backward if group]
        return backward

    @functools.cache
    def tp_collective_time_s(self, collective: str, size_bytes: float) -> float:
        group = self.cfg.layout.tp_group(stage=0, dp_rank=0)
        return idle_collective_time_s(self.cluster, [(collective, group, size_bytes)])

    def fused_time_s(self, ops: Sequence[Op]) -> float:
        device = self.cluster.devices[0]
        total = 0.0
        for op in ops:
            if op.kind.is_communication:
                total += self.tp_collective_time_s(op.labels["collective"], op.bytes_read)
            else:
                total += device.op_time(op)
        return total

    # -- program construction ----------------------------------------------------------------
    def compile(self) -> tuple[Program, StepInfo]:
        cfg, lay = self.cfg, self.cfg.layout
        act_bytes = tfm.activation_bytes_per_layer(
            cfg.model, micro_batch=cfg.micro_batch, seq_len=cfg.seq_len, tp=lay.tp,
            sequence_parallel=cfg.sequence_parallel, recompute=cfg.recompute, dtype=cfg.dtype)
        self.info.activation_bytes_per_layer = act_bytes
        self.act_bytes = act_bytes
        # Finishing task of each (action kind, microbatch, virtual stage, tp_rank, dp_rank).
        self.finished: dict[tuple, int] = {}
        self.last_task: dict[int, int] = {}
        self.grad_ready: dict[tuple[int, int], int] = {}
        order = self._global_order()
        for stage, index in order:
            action = self.actions[stage][index]
            for dp_rank in self.dp_ranks:
                self._emit_action(stage, action, dp_rank)
        for stage in range(lay.pp):
            for dp_rank in self.dp_ranks:
                self._emit_gradient_sync_and_optimizer(stage, dp_rank)
        return self.program, self.info

    def _global_order(self) -> list[tuple[int, int]]:
        """Actions of all stages in an order where every cross-stage dependency comes first."""
        heads = [0] * len(self.actions)
        done: set[tuple[str, int, int]] = set()
        order = []
        total = sum(len(a) for a in self.actions)
        while len(order) < total:
            progressed = False
            for stage, actions in enumerate(self.actions):
                while heads[stage] < len(actions):
                    action = actions[heads[stage]]
                    need = self._upstream(action, stage)
                    if need is not None and need not in done:
                        break
                    kind, mb = _kind(action), action.microbatch
                    vs = self.virtual_stage(stage, action.chunk)
                    done.add((kind, mb, vs))
                    if kind == "BW":
                        done.add(("B", mb, vs))
                    order.append((stage, heads[stage]))
                    heads[stage] += 1
                    progressed = True
            if not progressed:
                stuck = [f"stage {s}: {_kind(a[h])}{a[h].microbatch}"
                         for s, (a, h) in enumerate(zip(self.actions, heads)) if h < len(a)]
                from clustersim.errors import DeadlockError
                raise DeadlockError("pipeline schedule deadlocks; stuck actions: " + ", ".join(stuck))
        return order

    def _upstream(self, action, stage: int) -> tuple[str, int, int] | None:
        kind, vs = _kind(action), self.virtual_stage(stage, action.chunk)
        if kind == "F":
            return ("F", action.microbatch, vs - 1) if vs > 0 else None
        if kind in ("B", "BW"):
            if vs < self.num_virtual - 1:
                return ("B", action.microbatch, vs + 1)
            return ("F", action.microbatch, vs)
        if kind == "W":
            return ("B", action.microbatch, vs)
        raise ValueError(f"unknown action kind {kind!r}")

    def _emit_action(self, stage: int, action, dp_rank: int) -> None:
        cfg, lay, prog = self.cfg, self.cfg.layout, self.program
        kind, mb = _kind(action), action.microbatch
        vs = self.virtual_stage(stage, action.chunk)
        groups = self.action_ops(kind, vs)
        labels = {"stage": stage, "microbatch": mb, "chunk": action.chunk, "pass": kind}
        upstream = self._upstream(action, stage)
        incoming: dict[int, list[int]] = {}
        for tp_rank in self.tp_ranks:
            device = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
            deps = []
            if upstream is not None:
                up_kind, up_mb, up_vs = upstream
                src = self.finished.get((up_kind, up_mb, up_vs, tp_rank, dp_rank))
                if src is not None:
                    deps.append(src)
            # Same-stage dependency (B on its own F, W on its B) is implied by stream order.
            incoming[tp_rank] = deps
        last: dict[int, int] = {}
        n_layers = len(groups)
        for g, ops in enumerate(groups):
            layer = ops[0].labels.get("layer")
            alloc, free = self._memory_effects(kind, layer, g, n_layers)
            if self.fold_tp:
                tp_rank = 0
                device = lay.device(stage=stage, tp_rank=0, dp_rank=dp_rank)
                last[0] = prog.compute(device, "compute", f"{kind}{mb} L{layer}", self.fused_time_s(ops),
                                       deps=incoming[0] if g == 0 else (), alloc=alloc, free=free,
                                       labels={**labels, "layer": layer})
            else:
                self._emit_ops(stage, dp_rank, ops, labels, incoming if g == 0 else None,
                               alloc, free, last)
        for tp_rank, task in last.items():
            self.finished[(kind, mb, vs, tp_rank, dp_rank)] = task
            if kind == "BW":
                self.finished[("B", mb, vs, tp_rank, dp_rank)] = task
        # Send to the next virtual stage when it lives on another stage.
        nxt = vs + 1 if kind == "F" else vs - 1
        if kind in ("F", "B", "BW") and 0 <= nxt < self.num_virtual:
            dst_stage = self._stage_of(nxt)
            if dst_stage != stage:
                size = cfg.micro_batch * cfg.seq_len * cfg.model.hidden_size * dtype_bytes(cfg.dtype)
                for tp_rank, task in last.items():
                    src = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    dst = lay.device(stage=dst_stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    what = "activation" if kind == "F" else "gradient"
                    send = prog.transfer(src, dst, size, stream="p2p", name=f"send {what} {mb}",
                                         deps=[task], labels=labels)
                    self.finished[("B" if kind != "F" else "F", mb, vs, tp_rank, dp_rank)] = send
        if kind in ("BW", "W") or (kind == "B" and not self._has_w(stage)):
            for tp_rank, task in last.items():
                self.grad_ready[(stage, action.chunk, tp_rank, dp_rank)] = task

    @functools.cache
    def _stage_of(self, vs: int) -> int:
        for stage in range(self.cfg.layout.pp):
            for chunk in range(self.cfg.num_chunks):
                if self.virtual_stage(stage, chunk) == vs:
                    return stage
        raise ValueError(f"virtual stage {vs} is on no stage")

    @functools.cache
    def _has_w(self, stage: int) -> bool:
        return any(_kind(a) == "W" for a in self.actions[stage])

    def _memory_effects(self, kind: str, layer, group: int, groups: int):
        """Activations: allocated by a layer's forward, freed by its backward (B or BW)."""
        if not isinstance(layer, int) or self.act_bytes <= 0:
            return (), ()
        if kind == "F":
            return ((HBM, self.act_bytes),), ()
        if kind in ("B", "BW"):
            return (), ((HBM, self.act_bytes),)
        return (), ()

    def _emit_ops(self, stage, dp_rank, ops, labels, incoming, alloc, free, last) -> None:
        lay, prog = self.cfg.layout, self.program
        prev: dict[int, int | None] = {t: last.get(t) for t in self.tp_ranks}
        n = len(ops)
        for i, op in enumerate(ops):
            op_labels = {**labels, **op.labels}
            effects_alloc = alloc if i == n - 1 else ()
            effects_free = free if i == n - 1 else ()
            if op.kind.is_communication:
                members = []
                for tp_rank in self.tp_ranks:
                    device = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    deps = [prev[tp_rank]] if prev[tp_rank] is not None else []
                    if incoming is not None and i == 0:
                        deps += incoming[tp_rank]
                    members.append((device, "tp", deps))
                group = [m[0] for m in members]
                steps = self.cluster.collective(op.labels["collective"], group, op.bytes_read)
                ids = prog.collective(op.name, members, steps, labels=op_labels)
                for tp_rank, task in zip(self.tp_ranks, ids):
                    prev[tp_rank] = task
            else:
                for tp_rank in self.tp_ranks:
                    device = lay.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
                    deps = [prev[tp_rank]] if prev[tp_rank] is not None else []
                    if incoming is not None and i == 0:
                        deps += incoming[tp_rank]
                    prev[tp_rank] = prog.compute(
                        device, "compute", op.name, self.cluster.devices[device].op_time(op),
                        deps=deps, alloc=effects_alloc, free=effects_free, labels=op_labels)
        for tp_rank, task in prev.items():
            if task is not None:
                last[tp_rank] = task

    # -- gradients and optimizer -------------------------------------------------------------
    def _grad_bytes(self) -> float:
        """Gradient bytes per rank per model chunk (bf16 reduction, as Megatron's default)."""
        cfg = self.cfg
        per_layer = tfm.params_per_rank(cfg.model, part="layer", tp=cfg.layout.tp)
        return per_layer * self.layers_per_vs * dtype_bytes(cfg.dtype)

    def _emit_gradient_sync_and_optimizer(self, stage: int, dp_rank: int) -> None:
        cfg, lay, prog = self.cfg, self.cfg.layout, self.program
        size = self._grad_bytes()
        kind = "reduce_scatter" if cfg.zero_stage >= 1 else "all_reduce"
        sync_tasks: dict[int, list[int]] = defaultdict(list)
        for chunk in range(cfg.num_chunks):
            if lay.dp == 1:
                continue
            ready = {t: self.grad_ready[(stage, chunk, t, dp_rank)] for t in self.tp_ranks}
            if not cfg.overlap_grad_reduce:
                ready = {t: self.last_compute(stage, t, dp_rank) for t in self.tp_ranks}
            if cfg.replicas == "one" or self.fold_tp:
                groups = [(kind, lay.dp_group(stage=stage, tp_rank=t), size)
                          for t in range(lay.tp)] if dp_rank == 0 else []
                duration = idle_collective_time_s(self.cluster, groups) if groups else 0.0
                for t in self.tp_ranks:
                    device = lay.device(stage=stage, tp_rank=t, dp_rank=dp_rank)
                    sync_tasks[t].append(prog.compute(
                        device, "dp", f"grad {kind} chunk{chunk}", duration, deps=[ready[t]],
                        category="comm", labels={"stage": stage, "chunk": chunk}))
            else:
                if dp_rank != 0:
                    continue  # one collective task set covers all replicas
                for t in self.tp_ranks:
                    members = []
                    for d in self.dp_ranks:
                        device = lay.device(stage=stage, tp_rank=t, dp_rank=d)
                        deps = [self.grad_ready[(stage, chunk, t, d)]] if cfg.overlap_grad_reduce \
                            else [self.last_compute(stage, t, d)]
                        members.append((device, "dp", deps))
                    steps = self.cluster.collective(kind, [m[0] for m in members], size)
                    ids = prog.collective(f"grad {kind} chunk{chunk}", members, steps,
                                          labels={"stage": stage, "chunk": chunk})
                    for d, task in zip(self.dp_ranks, ids):
                        sync_tasks[(t, d)].append(task)
        for t in self.tp_ranks:
            device = lay.device(stage=stage, tp_rank=t, dp_rank=dp_rank)
            deps = list(sync_tasks.get((t, dp_rank), [])) + list(sync_tasks.get(t, []))
            optimizer = self._optimizer_op()
            prog.compute(device, "compute", "optimizer step",
                         self.cluster.devices[device].op_time(optimizer), deps=deps,
                         category="optimizer", labels={"stage": stage})
            if cfg.zero_stage >= 1 and lay.dp > 1:
                # ZeRO-1: gather the updated parameter shards back (bf16).
                gather = prog.compute(device, "dp", "param all_gather", 0.0, deps=[],
                                      category="comm") if False else None

    def last_compute(self, stage: int, tp_rank: int, dp_rank: int) -> int:
        device = self.cfg.layout.device(stage=stage, tp_rank=tp_rank, dp_rank=dp_rank)
        return self.program.streams[(device, "compute")][-1]

    def _optimizer_op(self) -> Op:
        """Adam on this rank's parameter shard: reads and writes weights, grads and 3 states."""
        cfg = self.cfg
        params = tfm.params_per_rank(cfg.model, part="layer", tp=cfg.layout.tp) * self.layers_per_vs \
            * cfg.num_chunks
        shard = params / (cfg.layout.dp if cfg.zero_stage >= 1 else 1)
        # Per parameter: read grad (4) + master, m, v (12), write master, m, v (12) + bf16 weight (2).
        return elementwise(max(int(shard), 1), inputs=4, outputs=4, flops_per_element=10.0,
                           dtype="fp32", kind=OpKind.OPTIMIZER, name="adam")


def idle_collective_time_s(cluster: Cluster, collectives: Sequence[tuple[str, list[int], float]]) -> float:
    """Time for ``collectives`` (kind, group, size) started together on the idle fabric.

    Runs a small simulation of just these collectives, so contention between concurrent groups
    on shared links (NICs, spine uplinks) counts exactly as in the full model.
    """
    from clustersim.sim.engine import Simulation

    if not collectives:
        return 0.0
    program = Program()
    for name in cluster.names:
        program.device(name)
    for kind, group, size in collectives:
        if len(group) < 2 or size <= 0:
            continue
        steps = cluster.collective(kind, group, size)
        program.collective(kind, [(d, "comm", ()) for d in group], steps)
    if not program.tasks:
        return 0.0
    kwargs = cluster.simulation_kwargs()
    kwargs.pop("memory")
    sim = Simulation(**kwargs, record_trace=False)
    sim.run_program(program)
    return sim.env.now


def compile_training_step(cfg: StepConfig, cluster: Cluster, stage_actions, virtual_stage
                          ) -> tuple[Program, StepInfo]:
    return _StepCompiler(cfg, cluster, stage_actions, virtual_stage).compile()

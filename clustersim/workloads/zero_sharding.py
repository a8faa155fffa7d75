"""ZeRO stages 2 and 3 (PyTorch FSDP ``FULL_SHARD``) in a training step: sharded state, and the
per-unit parameter all-gathers and gradient reduce-scatters stage 3 adds (event-level).

State per parameter of a rank's share (Rajbhandari et al., SC 2020, "ZeRO", section 5 and
Figure 1, mixed-precision Adam with K = 12 bytes of optimizer state per parameter):

* stages 0 and 1 keep Megatron's accounting used elsewhere in clustersim: bf16 weights (2 B),
  fp32 gradients (4 B, Megatron accumulates in fp32), Adam's 12 B (/ dp at stage 1);
* stage 2 (P_os+g): bf16 weights 2 B, gradients 2 B / dp, optimizer 12 B / dp;
* stage 3 (P_os+g+p): (2 + 2 + 12) B / dp, the paper's (2 + 2 + K) Psi / N_d.

Stage 2 and 3 gradients are reduced in the compute dtype (2 B), as ZeRO and FSDP's mixed
precision (``reduce_dtype`` = bf16) do, so one gradient byte count serves memory and traffic.

Stage 3 events, per FSDP unit (a transformer layer, the embedding, the LM head: llm-foundry
wraps each block as its own FSDP unit) and per micro-batch, on every DP rank:

* before the unit's forward and again before its backward, an all-gather of the unit's
  parameters over the DP group on the ``fsdp`` stream; the gathered buffer is allocated when
  the gather starts and freed when the unit's compute ends;
* with prefetch (FSDP's ``forward_prefetch`` / ``backward_prefetch=BACKWARD_PRE`` with
  ``limit_all_gathers``), the gather of unit k may start once unit k-2's compute is done, so it
  runs during unit k-1's compute and at most two units are gathered at once; without prefetch
  it waits for unit k-1's compute (no overlap);
* after the unit's backward, a reduce-scatter of its gradients over the DP group on the ``dp``
  stream (every micro-batch: FSDP accumulates into sharded gradients), in ``zero_reduce_dtype``
  (bf16 by default; Composer's ``mixed_precision: DEFAULT`` reduces in fp32); the unsharded
  gradient is allocated by the backward and freed when its reduce-scatter ends.

Collectives use the cluster's collective model (``cluster.collective``), like the DP gradient
collectives of ``training_step.py``. Not modelled: stage 1-2's all-gather of updated parameters
after the optimizer step (clustersim's stage 1 omits it too), pipeline parallelism (refused),
expert parallelism (refused), hybrid sharding (HSDP).
"""

from __future__ import annotations

from clustersim.errors import ConfigError

# Bytes per parameter of a rank's share (ZeRO paper's mixed-precision Adam: K = 12).
OPTIMIZER_BYTES_PER_PARAM = 12.0
SHARDED_GRAD_BYTES_PER_PARAM = 2.0   # stage >= 2: gradients reduced and kept in bf16/fp16


def state_bytes_per_param(*, dp: int, zero_stage: int) -> dict[str, float]:
    """Resident bytes per parameter of a rank's (tp x pp) share, by kind."""
    if zero_stage <= 1:
        return {"weights": 2.0, "gradients": 4.0,
                "optimizer": OPTIMIZER_BYTES_PER_PARAM / (dp if zero_stage >= 1 else 1)}
    return {"weights": 2.0 / (dp if zero_stage >= 3 else 1),
            "gradients": SHARDED_GRAD_BYTES_PER_PARAM / dp,
            "optimizer": OPTIMIZER_BYTES_PER_PARAM / dp}


def check_zero_layout(*, zero_stage: int, pp: int, ep: int, schedule_kinds) -> None:
    """ConfigError, naming the key, for layouts stages 2 and 3 are not modelled with."""
    if zero_stage < 2:
        return
    if pp > 1:
        raise ConfigError(f"parallel.zero_stage {zero_stage} with pp={pp} is not supported "
                          "(DeepSpeed refuses ZeRO-2/3 with pipeline parallelism too); use pp: 1 "
                          "or zero_stage: 1", key="workload.parallel.zero_stage")
    if ep > 1:
        raise ConfigError(f"parallel.zero_stage {zero_stage} with ep={ep} is not modelled (expert "
                          "shards over the expert-data-parallel group); use ep: 1 or zero_stage: 1",
                          key="workload.parallel.zero_stage")
    other = sorted(set(schedule_kinds) - {"F", "BW"})
    if other:
        raise ConfigError(f"parallel.zero_stage {zero_stage} needs a schedule of forward (F) and "
                          f"fused backward (BW) passes; this one also has {other} (split or "
                          "vocabulary passes are not modelled with it): use schedule: 1f1b",
                          key="workload.parallel.zero_stage")


def unit_of(labels) -> object:
    """The FSDP unit a group of ops belongs to: its layer number, or its block name."""
    layer = labels.get("layer")
    return layer if isinstance(layer, int) else labels.get("block", "other")


class FsdpEmitter:
    """Stage-3 all-gathers and reduce-scatters for one compiled step (``training_step``)."""

    def __init__(self, compiler, *, prefetch: bool, reduce_bytes: float = 2.0):
        self.c = compiler
        self.prefetch = prefetch
        self.weights_tier = compiler.cluster.devices[0].tier_for("weights").name
        self.param_bytes = 2.0   # gathered in the compute dtype (FSDP param_dtype bf16)
        # unsharded gradients, cast to FSDP's reduce_dtype for the reduce-scatter
        self.grad_bytes = reduce_bytes
        # (tp, dp) -> the last two units' compute-end tasks, across actions (micro-batches)
        self.history: dict[tuple[int, int], list[int]] = {}
        self.reduce_tasks: dict[int, list[int]] = {}     # device -> reduce-scatter ends

    def unit_params(self, unit) -> float:
        from clustersim.workloads import transformer as tfm

        c = self.c
        if isinstance(unit, int):
            return c._layer_params()
        if unit in ("embedding", "lm_head"):
            return float(tfm.params_per_rank(c.cfg.model, part=unit, tp=c.cfg.layout.tp))
        return 0.0

    def _group(self, stage: int, tp_rank: int) -> list[int]:
        return [self.c.device(stage, tp_rank, d) for d in range(self.c.cfg.layout.dp)]

    def _idle_time_s(self, kind: str, stage: int, size: float) -> float:
        from clustersim.workloads.idle_collectives import idle_collective_time_s

        lay = self.c.cfg.layout
        return idle_collective_time_s(self.c.cluster, [(kind, self._group(stage, t), size)
                                                       for t in range(lay.tp)])

    def _simulated(self) -> bool:
        """True when every DP rank and TP rank has its own tasks (collectives on the fabric)."""
        return not (self.c.cfg.replicas == "one" or self.c.fold_tp)

    def gather(self, stage: int, unit, name: str) -> dict[tuple[int, int], int]:
        """All-gather of ``unit``'s parameters before its compute: (tp, dp) -> gather task."""
        c, prog = self.c, self.c.program
        size = self.unit_params(unit) * self.param_bytes
        alloc = ((self.weights_tier, size),)
        out: dict[tuple[int, int], int] = {}
        lag = 2 if self.prefetch else 1
        if not self._simulated():
            duration = self._idle_time_s("all_gather", stage, size)
        for t in c.tp_ranks:
            members = []
            for d in c.dp_ranks:
                device = c.device(stage, t, d)
                done = self.history.get((t, d), [])
                deps = done[-lag:][:1] if len(done) >= lag else []
                if self._simulated():
                    buf = prog.compute(device, "fsdp", f"{name} buffer", 0.0, deps=deps,
                                       alloc=alloc, category="comm", labels={"stage": stage})
                    members.append((device, "fsdp", [buf]))
                else:
                    out[(t, d)] = prog.compute(device, "fsdp", name, duration, deps=deps,
                                               alloc=alloc, category="comm",
                                               labels={"stage": stage})
            if members:
                steps = c.cluster.collective("all_gather", [m[0] for m in members], size)
                for (device, _, _), d, task in zip(members, c.dp_ranks,
                                                   prog.collective(name, members, steps,
                                                                   labels={"stage": stage})):
                    out[(t, d)] = task
        return out

    def memory_effects(self, unit, backward: bool) -> tuple[tuple, tuple]:
        """(alloc, free) the unit's compute adds: it frees the gathered parameters; a backward
        allocates the unsharded gradient its reduce-scatter frees."""
        params = self.unit_params(unit)
        free = ((self.weights_tier, params * self.param_bytes),)
        alloc = ((self.weights_tier, params * self.grad_bytes),) if backward else ()
        return alloc, free

    def computed(self, tp_rank: int, dp_rank: int, task: int) -> None:
        """Record the end of a unit's compute (the prefetch window moves on)."""
        done = self.history.setdefault((tp_rank, dp_rank), [])
        done.append(task)
        del done[:-2]

    def reduce(self, stage: int, unit, name: str, ends: dict[tuple[int, int], int]) -> None:
        """Reduce-scatter of the unit's gradients after its backward (``ends``: (tp, dp) ->
        the backward's last task); the unsharded gradient is freed when it ends."""
        c, prog = self.c, self.c.program
        size = self.unit_params(unit) * self.grad_bytes
        free = ((self.weights_tier, size),)
        done: dict[tuple[int, int], int] = {}
        if not self._simulated():
            duration = self._idle_time_s("reduce_scatter", stage, size)
            for (t, d), end in ends.items():
                done[(t, d)] = prog.compute(c.device(stage, t, d), "dp", name, duration,
                                            deps=[end], free=free, category="comm",
                                            labels={"stage": stage})
        else:
            for t in c.tp_ranks:
                members = [(c.device(stage, t, d), "dp", [ends[(t, d)]]) for d in c.dp_ranks]
                steps = c.cluster.collective("reduce_scatter", [m[0] for m in members], size)
                tasks = prog.collective(name, members, steps, labels={"stage": stage})
                for (device, _, _), d, task in zip(members, c.dp_ranks, tasks):
                    done[(t, d)] = prog.compute(device, "dp", f"{name} done", 0.0, deps=[task],
                                                free=free, category="comm",
                                                labels={"stage": stage})
        for (t, d), task in done.items():
            self.reduce_tasks.setdefault(c.device(stage, t, d), []).append(task)
            if not self.prefetch:  # no overlap: the next unit's gather waits for this reduction
                self.history[(t, d)][-1] = task

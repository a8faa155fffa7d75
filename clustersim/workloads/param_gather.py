"""The distributed optimizer's parameter all-gather (ZeRO stages 1 and 2), event-level.

With ZeRO-1/2 (Megatron-Core's ``DistributedOptimizer``, DeepSpeed ZeRO-1/2) every data-parallel
rank steps the optimizer on its 1/dp shard of each gradient bucket, so after the step each rank
holds only its shard of the updated parameters: each bucket's parameters are all-gathered over
the bucket's data-parallel group before the next forward pass uses them. Gradient
reduce-scatter plus this all-gather move exactly the bytes of the all-reduce that plain data
parallelism would run (Rajbhandari et al. 2020, section 7.2: ZeRO-1/2 "incur the same
communication volume as baseline data parallelism").

Two ways to run it, as Megatron-Core has them (``DistributedDataParallelConfig``,
megatron/core/distributed/ at NVIDIA/Megatron-LM d98e8a64):

* ``overlap_param_gather: false`` (Megatron-Core's default, and DeepSpeed ZeRO-1/2): after the
  optimizer step, ``DistributedOptimizer.step_with_ready_grads`` launches every bucket's
  all-gather synchronously: the step ends when the last one does (fully exposed).
* ``overlap_param_gather: true`` (Megatron-Bridge's ``CommOverlapConfig`` turns it on whenever
  dp > 1): the gathers run asynchronously during the next step's first forward pass. A forward
  pre-hook waits for the bucket of the module it is about to run and launches the next bucket's
  gather (``_ParamAndGradBucketGroup.finish_param_sync``), so bucket k+1 is gathered while the
  layers of bucket k compute, in forward order (buckets were formed in backward order). A step in
  steady state therefore contains the gathers of the previous step's update, which is how they
  are modelled here: the chain of gathers at the start of the step, each bucket's first layer in
  the first forward pass waiting for its gather. Where the chain starts: with
  ``align_param_gather`` (Megatron-LM's default for interleaved schedules; forced off for
  non-interleaved ones in megatron/training/arguments.py) every stage launches its gathers at the
  start of the step; otherwise the first bucket is launched by the first module's pre-hook, i.e.
  after the stage's first forward input has arrived.

Approximation: the chain here launches bucket k+1 as soon as bucket k's gather is done, where
Megatron launches it when the forward pass reaches bucket k (at or after that). The two agree
whenever each bucket's forward compute is longer than the next bucket's gather or shorter for
every bucket; in between, this one hides slightly more. Parameters are gathered in the compute
dtype (``fp8_param_gather``, which gathers fp8 weights in 1 byte, is not modelled: it only
shrinks the gathers).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from clustersim.ops import dtype_bytes
from clustersim.schedules import ActionKind


class ParamGatherEmitter:
    """Emits the all-gathers of updated parameters of a ZeRO-1/2 step into the step's Program.

    ``step`` is the training-step compiler (``training_step._StepCompiler``): it gives the
    gradient buckets, the sync groups and ``_emit_bucket``, so gathers and reductions use the
    same buckets over the same groups."""

    def __init__(self, step) -> None:
        self.step = step
        self.overlap = step.cfg.overlap_param_gather
        # Megatron-LM: align_param_gather on for interleaved schedules, off otherwise.
        self.aligned = step.schedule.num_chunks > 1
        # slice index -> first forward piece of each bucket -> device -> its gather task
        self._pending: dict[int, dict[object, dict[int, int]]] = {}

    # -- overlapped with the first forward pass ------------------------------------------------
    def forward_deps(self, action, layer, stage_incoming: Callable[[], dict[int, list[int]]]
                     ) -> dict[int, list[int]] | None:
        """The gathers that ``layer`` of this forward action waits for, per device of the stage
        (None when it waits for none). The first forward pass through a model slice emits the
        slice's whole chain; ``stage_incoming()`` gives each device's forward inputs, which
        launch the chain when gathers are not aligned across stages."""
        if not self.overlap or action.kind is not ActionKind.F:
            return None
        slice_index = self.step._slice_of(action)
        pending = self._pending.get(slice_index)
        if pending is None:
            pending = self._pending[slice_index] = self._emit_chain(slice_index, stage_incoming())
        waiting = pending.get(layer)
        if not waiting:
            return None
        devices = {device for _, device in self.step._stage_devices(action.stage)} \
            if self.step.fold_tp else {self.step.device(action.stage, t, d)
                                       for t in self.step.tp_ranks for d in self.step.dp_ranks}
        found = {device: [waiting.pop(device)] for device in devices if device in waiting}
        return found or None

    def _emit_chain(self, slice_index: int, incoming: dict[int, list[int]]
                    ) -> dict[object, dict[int, int]]:
        key = ("slice", slice_index)
        holders = self.step._sync_groups()[key]
        launched: set[int] = set()

        def ready(stage, chunk, tp_rank, dp_rank) -> list[int]:
            device = self.step.device(stage, tp_rank, dp_rank)
            if self.aligned or device in launched:
                return []
            launched.add(device)         # the chain's first gather waits for the forward input
            return list(incoming.get(device, ()))

        pending: dict[object, dict[int, int]] = defaultdict(dict)
        for piece, tasks in self._emit_group(key, holders, ready):
            pending[piece].update(tasks)
        return pending

    # -- exposed after the optimizer step ------------------------------------------------------
    def after_optimizer(self, optimizer_task: dict[int, int]) -> None:
        """Every bucket gathered after the optimizer step (``overlap_param_gather: false``), and
        the vocabulary shards of vocabulary-parallel schedules in either mode."""
        for key, holders in self.step._sync_groups().items():
            if self.overlap and key[0] == "slice":
                continue

            def ready(stage, chunk, tp_rank, dp_rank) -> list[int]:
                return [optimizer_task[self.step.device(stage, tp_rank, dp_rank)]]

            for _ in self._emit_group(key, holders, ready):
                pass

    # -- both ----------------------------------------------------------------------------------
    def _emit_group(self, key, holders, ready):
        """Yield (first forward piece, {device: gather task}) for each bucket of one sync group,
        in forward order (the reverse of the gradient buckets' backward order); under expert
        parallelism the routed experts' buckets, gathered over their expert-data-parallel group
        (dp / ep ranks), interleaved at their place in that order."""
        step = self.step
        lay = step.cfg.layout
        if len(holders) * lay.dp < 2:
            return
        size = dtype_bytes(step.op_dtype)
        plan = step.cfg.ep_plan
        buckets = [(piece, f"{key[0]}{key[1]} bucket{number}", params, None)
                   for number, (params, piece) in enumerate(step._buckets(key))]
        if plan is not None and key[0] != "vocab" and lay.dp // plan.ep >= 2:
            buckets += [(piece, f"experts {key[1]} bucket{number} ep{position}", params,
                         range(position, lay.dp, plan.ep))
                        for number, (params, piece) in enumerate(step._buckets(key, part="experts"))
                        for position in range(plan.ep)]
        # sorted() is stable: a dense bucket goes before the expert buckets of its first piece
        for piece, name, params, dp_ranks in sorted(buckets, key=lambda b: _forward_position(b[0])):
            tasks: dict[int, list[int]] = defaultdict(list)
            step._emit_bucket(f"param all_gather {name}", "all_gather", params * size, holders,
                              piece, tasks, dp_ranks=dp_ranks, ready=ready)
            yield piece, {device: ids[-1] for device, ids in tasks.items()}


def _forward_position(piece) -> float:
    """Where a bucket's first piece runs in the forward pass: embedding, layers, LM head."""
    if piece == "embedding" or piece is None:
        return -1.0
    if piece == "lm_head":
        return float("inf")
    return float(piece)

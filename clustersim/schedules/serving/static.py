"""Static (request-level) batching: FasterTransformer's and Orca's baseline (Yu et al., OSDI '22).

A batch is formed only when the engine is empty: up to ``max_num_seqs`` requests from the head of
the queue whose whole KV (prompt + output) fits, reserved up front as a static server reserves
``max_tokens`` per slot. All prompts are prefilled in one iteration, then the batch decodes until
its longest request ends; finished requests keep their slot, so each decode iteration costs as
much as the full batch. No preemption can happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from clustersim.schedules.serving.batch import BatchPlan, Chunk, SchedulerView


@dataclass(frozen=True)
class StaticBatching:
    name: ClassVar[str] = "static"
    # With nothing waiting, prefilling or swapped, every plan is "decode all" (no padding),
    # so the engine may run such iterations back to back without asking (see replica.py).
    steady_decode: ClassVar[bool] = False
    max_num_seqs: int = 256

    def plan(self, view: SchedulerView) -> BatchPlan:
        if view.running:
            chunks = tuple(Chunk(p.rid, p.remaining_tokens) for p in view.prefilling)
            return BatchPlan(decode=view.decodes > 0, chunks=chunks, pad_decodes_to=view.cohort)
        admit, chunks = [], []
        free = view.available_blocks
        for entry in view.waiting:
            if len(admit) == self.max_num_seqs:
                break
            reserve = view.max_blocks(entry)
            if free < reserve:
                break
            free -= reserve
            admit.append(entry.rid)
            chunks.append(Chunk(entry.rid, view.tokens_to_compute(entry)))
        return BatchPlan(admit=tuple(admit), chunks=tuple(chunks))

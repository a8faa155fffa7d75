"""Continuous (iteration-level) batching as vLLM's default scheduler does it (Kwon et al.,
SOSP '23; Orca, Yu et al., OSDI '22).

Each iteration either prefills or decodes. New prompts go first: when nothing is swapped out,
waiting requests are admitted in arrival order while their whole prompt's blocks fit above the
watermark, the prompts fit ``max_batched_tokens`` together and sequence slots remain; if any is
admitted, the iteration prefills them (whole prompts). Otherwise every running sequence decodes
one token; if their new blocks do not fit, the engine preempts the most recently admitted ones;
if none was preempted, swapped sequences come back while they fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from clustersim.schedules.serving.admission import admit_prefills, swap_ins
from clustersim.schedules.serving.batch import BatchPlan, Chunk, SchedulerView


@dataclass(frozen=True)
class ContinuousBatching:
    name: ClassVar[str] = "continuous"
    # With nothing waiting, prefilling or swapped, every plan is "decode all" (no padding),
    # so the engine may run such iterations back to back without asking (see replica.py).
    steady_decode: ClassVar[bool] = True
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192

    def plan(self, view: SchedulerView) -> BatchPlan:
        if view.prefilling:
            # A prompt left unfinished (its cached prefix was evicted by an admission in the same
            # iteration, so it had more to compute than planned) completes first, alone.
            return BatchPlan(chunks=tuple(Chunk(p.rid, p.remaining_tokens)
                                          for p in view.prefilling))
        slots = self.max_num_seqs - view.running
        if view.waiting and not view.swapped_blocks:
            admit, chunks = admit_prefills(view, iter(view.waiting),
                                           free_blocks=view.available_blocks,
                                           token_budget=self.max_batched_tokens, seq_slots=slots,
                                           chunked=False, alone_if_too_long=True)
            if admit:
                return BatchPlan(admit=tuple(admit), chunks=tuple(chunks))
        if not view.swapped_blocks:
            return _DECODE if view.decodes else _IDLE
        swap_in = 0
        if not view.preempting:
            free = view.available_blocks - view.decode_need_blocks
            swap_in = swap_ins(view, free_blocks=free, seq_slots=slots)
        return BatchPlan(decode=view.decodes > 0 or swap_in > 0, swap_in=swap_in)


_DECODE = BatchPlan(decode=True)
_IDLE = BatchPlan()

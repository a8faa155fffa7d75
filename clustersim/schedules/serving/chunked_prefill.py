"""Chunked prefill with decode-maximal batches: SARATHI (Agrawal et al., 2023) and
SARATHI-Serve (OSDI '24), as vLLM's chunked-prefill scheduler runs it.

Every iteration has a token budget. All running decodes go in first (one token each); the rest
of the budget continues prompts already being prefilled, then swapped sequences come back, then
(when nothing stays swapped) new requests are admitted in arrival order, the last one with a
chunk of whatever budget is left. Decodes never stall behind a long prompt, and iterations stay
close to the same size, which is what keeps pipeline stages balanced (fewer bubbles).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from clustersim.schedules.serving.admission import admit_prefills, swap_ins
from clustersim.schedules.serving.batch import BatchPlan, Chunk, SchedulerView, Waiting


@dataclass(frozen=True)
class ChunkedPrefill:
    name: ClassVar[str] = "chunked_prefill"
    # With nothing waiting, prefilling or swapped, every plan is "decode all" (no padding),
    # so the engine may run such iterations back to back without asking (see replica.py).
    steady_decode: ClassVar[bool] = True
    max_num_seqs: int = 256
    token_budget: int = 512

    def __post_init__(self) -> None:
        if self.token_budget < self.max_num_seqs:
            raise ValueError(f"{self.name}: token_budget ({self.token_budget}) must be at least "
                             f"max_num_seqs ({self.max_num_seqs}), since every running decode "
                             "takes one token of it")

    def candidates(self, view: SchedulerView) -> Iterator[Waiting]:
        """The order in which waiting requests are considered (arrival order)."""
        return iter(view.waiting)

    def plan(self, view: SchedulerView) -> BatchPlan:
        decode = view.decodes > 0
        if view.preempting:
            return BatchPlan(decode=True)
        budget = self.token_budget - view.decodes
        free = view.available_blocks - (view.decode_need_blocks if decode else 0)
        chunks: list[Chunk] = []
        for seq in view.prefilling:
            tokens = min(seq.remaining_tokens, budget)
            if tokens <= 0:
                break
            chunks.append(Chunk(seq.rid, tokens))
            budget -= tokens
        slots = self.max_num_seqs - view.running
        swap_in = swap_ins(view, free_blocks=free, seq_slots=min(slots, budget))
        budget -= swap_in
        slots -= swap_in
        admit: list[int] = []
        if view.waiting and len(view.swapped_blocks) == swap_in and budget > 0:
            free -= sum(view.swapped_blocks[:swap_in])
            admit, new_chunks = admit_prefills(view, self.candidates(view), free_blocks=free,
                                               token_budget=budget, seq_slots=slots, chunked=True)
            chunks.extend(new_chunks)
        return BatchPlan(decode=decode or swap_in > 0, swap_in=swap_in, admit=tuple(admit),
                         chunks=tuple(chunks))

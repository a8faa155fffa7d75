"""Admission shared by the iteration-level policies: take waiting requests in a given order
while KV blocks (above the watermark), sequence slots and the token budget last.

Head-of-line: the first request that does not fit stops admission (as vLLM), so a long prompt
is never starved by shorter ones behind it.
"""

from __future__ import annotations

from collections.abc import Iterable

from clustersim.schedules.serving.batch import Chunk, SchedulerView, Waiting


def admit_prefills(view: SchedulerView, candidates: Iterable[Waiting], *, free_blocks: int,
                   token_budget: int, seq_slots: int, chunked: bool,
                   alone_if_too_long: bool = False) -> tuple[list[int], list[Chunk]]:
    """Admitted request ids and their prefill chunks.

    ``chunked``: a prompt longer than the remaining budget gets a chunk of what remains (SARATHI);
    otherwise it waits for an iteration with room for all of it, or, with
    ``alone_if_too_long`` and nothing else scheduled, runs alone over the budget (a recompute
    after preemption can be longer than any prompt the budget was sized for).
    """
    admit: list[int] = []
    chunks: list[Chunk] = []
    budget = token_budget
    for entry in candidates:
        if seq_slots <= 0 or budget <= 0:
            break
        blocks = view.blocks_to_admit(entry)
        if free_blocks - blocks < view.watermark_blocks:
            break
        tokens = view.tokens_to_compute(entry)
        if chunked:
            tokens = min(tokens, budget)
        elif tokens > budget:
            if not (alone_if_too_long and not admit and budget == token_budget):
                break
        admit.append(entry.rid)
        chunks.append(Chunk(entry.rid, tokens))
        free_blocks -= blocks
        budget -= tokens
        seq_slots -= 1
    return admit, chunks


def swap_ins(view: SchedulerView, *, free_blocks: int, seq_slots: int) -> int:
    """How many swapped sequences (from the head) fit back, with their next decode's block."""
    count = 0
    for blocks in view.swapped_blocks:
        if seq_slots <= 0 or free_blocks - blocks < view.watermark_blocks:
            break
        free_blocks -= blocks
        seq_slots -= 1
        count += 1
    return count

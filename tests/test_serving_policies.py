"""Serving batch policies as pure functions: views in, plans out, no engine involved."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.schedules.serving import (BatchPlan, Chunk, ChunkedPrefill, ContinuousBatching,
                                          Prefilling, PrefixAware, SchedulerView, StaticBatching,
                                          WaitingQueue, make_policy)


@dataclass
class Req:
    rid: int
    tokens: int
    max_tokens: int = 0
    prefix_id: int = -1
    prefix_blocks: int = 0


def view(waiting=(), *, available=1000, total=1000, decodes=0, need=0, prefilling=(),
         swapped=(), pinned=None, cached=(), cohort=0, watermark=0, block_size=16):
    queue = WaitingQueue()
    for entry in waiting:
        entry.max_tokens = entry.max_tokens or entry.tokens + 99
        queue.push_back(entry)
    return SchedulerView(block_size=block_size, total_blocks=total, available_blocks=available,
                         watermark_blocks=watermark, decodes=decodes, decode_need_blocks=need,
                         prefilling=tuple(prefilling), waiting=queue, swapped_blocks=tuple(swapped),
                         pinned_prefixes=pinned or {}, cached_prefixes=cached, cohort=cohort)


def test_continuous_batching_prefills_new_prompts_before_decoding():
    plan = ContinuousBatching(max_batched_tokens=1000).plan(
        view([Req(1, 600), Req(2, 300), Req(3, 200)], decodes=5))
    assert plan == BatchPlan(admit=(1, 2), chunks=(Chunk(1, 600), Chunk(2, 300)))


def test_continuous_batching_decodes_when_no_prompt_fits_and_runs_an_overlong_prompt_alone():
    policy = ContinuousBatching(max_batched_tokens=1000)
    assert policy.plan(view([Req(1, 160)], available=5, decodes=3)) == BatchPlan(decode=True)
    assert policy.plan(view([Req(1, 5000)])).admit == (1,)          # alone, over the budget
    assert policy.plan(view([Req(1, 500), Req(2, 5000)])).admit == (1,)


def test_continuous_batching_finishes_a_prompt_left_unfinished_before_anything_else():
    plan = ContinuousBatching().plan(view([Req(1, 100)], decodes=4,
                                          prefilling=[Prefilling(9, 1024)]))
    assert plan == BatchPlan(chunks=(Chunk(9, 1024),))


def test_no_admission_or_swap_in_while_decodes_must_be_preempted():
    tight = view([Req(1, 16)], available=3, decodes=8, need=4, swapped=(1,))
    assert ContinuousBatching().plan(tight) == BatchPlan(decode=True)
    assert ChunkedPrefill().plan(tight) == BatchPlan(decode=True)


def test_chunked_prefill_puts_decodes_first_then_ongoing_prompts_then_a_chunk_of_a_new_one():
    plan = ChunkedPrefill(max_num_seqs=128, token_budget=512).plan(
        view([Req(7, 1000), Req(8, 50)], decodes=100, prefilling=[Prefilling(3, 300)]))
    assert plan.decode and plan.admit == (7,)
    assert plan.chunks == (Chunk(3, 300), Chunk(7, 112))
    assert 100 + plan.prefill_tokens == 512


def test_chunked_prefill_budget_must_cover_every_decode():
    with pytest.raises(ValueError, match="token_budget .* at least max_num_seqs"):
        ChunkedPrefill(max_num_seqs=256, token_budget=128)


def test_static_batching_admits_a_whole_batch_only_when_the_engine_is_empty():
    policy = StaticBatching(max_num_seqs=2)
    busy = view([Req(9, 10)], decodes=2, cohort=2)
    assert policy.plan(busy) == BatchPlan(decode=True, pad_decodes_to=2)
    empty = view([Req(1, 100, max_tokens=300), Req(2, 100, max_tokens=300), Req(3, 10)])
    assert policy.plan(empty).admit == (1, 2)
    # It reserves the whole request (prompt + output), not just the prompt: 19 blocks each.
    assert policy.plan(view([Req(1, 100, max_tokens=300), Req(2, 100, max_tokens=300)],
                            available=30)).admit == (1,)


def test_a_shared_prefix_already_held_is_not_charged_again():
    entry = Req(1, 160, prefix_id=4, prefix_blocks=6)
    assert view().blocks_to_admit(entry) == 10
    assert view(pinned={4: 6}, cached=[4]).blocks_to_admit(entry) == 4
    # Cached but held by nobody: no compute, but its blocks stop being evictable.
    cached_only = view(cached=[4])
    assert (cached_only.blocks_to_admit(entry), cached_only.tokens_to_compute(entry)) == (10, 64)


def test_prefix_aware_takes_resident_groups_first_and_keeps_groups_together():
    waiting = [Req(1, 100, prefix_id=0, prefix_blocks=4), Req(2, 100, prefix_id=1, prefix_blocks=4),
               Req(3, 100), Req(4, 100, prefix_id=0, prefix_blocks=4),
               Req(5, 100, prefix_id=1, prefix_blocks=4)]
    fcfs = ChunkedPrefill(max_num_seqs=4, token_budget=4096).plan(view(waiting))
    grouped = PrefixAware(max_num_seqs=4, token_budget=4096).plan(view(waiting, cached=[1]))
    assert fcfs.admit == (1, 2, 3, 4)
    assert grouped.admit == (2, 5, 1, 4)


def test_unknown_policy_names_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of .*chunked_prefill.*continuous"):
        make_policy("fifo")


@settings(max_examples=150, deadline=None)
@given(prompts=st.lists(st.integers(1, 3000), max_size=12), decodes=st.integers(0, 64),
       partial=st.lists(st.integers(1, 2000), max_size=3), available=st.integers(0, 2000),
       need=st.integers(0, 64), budget=st.integers(64, 2048), watermark=st.integers(0, 20))
def test_chunked_prefill_never_exceeds_its_token_budget_or_the_free_blocks(
        prompts, decodes, partial, available, need, budget, watermark):
    policy = ChunkedPrefill(max_num_seqs=64, token_budget=budget)
    state = view([Req(100 + i, p) for i, p in enumerate(prompts)], available=available,
                 decodes=decodes, need=min(need, decodes), watermark=watermark,
                 prefilling=[Prefilling(i, p) for i, p in enumerate(partial)])
    plan = policy.plan(state)
    assert plan.decode == (decodes > 0)
    assert decodes + plan.prefill_tokens <= budget
    assert all(chunk.tokens > 0 for chunk in plan.chunks)
    if plan.admit:
        admitted = sum(state.blocks_to_admit(state.waiting.get(rid)) for rid in plan.admit)
        assert admitted <= available - (state.decode_need_blocks if decodes else 0) - watermark

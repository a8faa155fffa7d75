"""KV cache: bytes per token from the model shape (GQA counts right), capacity from memory left
after weights and activations, and block accounting that conserves blocks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.workloads.models import get_model
from clustersim.workloads.serving.kv_cache import (BlockManager, KVCacheError, kv_bytes_per_token,
                                                   kv_bytes_per_token_per_gpu, plan_layout,
                                                   weight_bytes_per_gpu)

GIB = 2**30


def test_bytes_per_token_is_layers_x_kv_heads_x_head_dim_x_2_x_dtype():
    assert kv_bytes_per_token(get_model("llama2-7b")) == 32 * 32 * 128 * 2 * 2      # 512 KiB
    assert kv_bytes_per_token(get_model("llama2-70b")) == 80 * 8 * 128 * 2 * 2      # 320 KiB
    assert kv_bytes_per_token(get_model("llama2-70b"), "fp8") == 80 * 8 * 128 * 2


def test_grouped_query_attention_holds_an_eighth_of_a_full_cache():
    gqa = get_model("llama2-70b")
    full_mha = 80 * 64 * 128 * 2 * 2
    assert kv_bytes_per_token(gqa) * 8 == full_mha


def test_tensor_parallel_ranks_split_kv_heads_and_replicate_past_them():
    model = get_model("llama2-70b")                      # 8 KV heads
    whole = kv_bytes_per_token(model)
    assert kv_bytes_per_token_per_gpu(model, tp=4, pp=1) == whole / 4
    assert kv_bytes_per_token_per_gpu(model, tp=8, pp=2) == whole / 16
    assert kv_bytes_per_token_per_gpu(model, tp=16, pp=1) == whole / 8   # one head each, replicated


def test_capacity_is_hbm_times_utilisation_minus_weights_minus_activations():
    model = get_model("llama2-70b")
    layout = plan_layout(model, hbm_bytes=80 * GIB, tp=8, pp=1, block_size=16, dtype="bf16",
                         kv_dtype="bf16", gpu_memory_utilization=0.9, activation_reserve=2 * GIB)
    weights = weight_bytes_per_gpu(model, tp=8, pp=1)[0]
    assert weights == pytest.approx(model.params_total * 2 / 8, rel=1e-3)
    free = 0.9 * 80 * GIB - weights - 2 * GIB
    assert layout.blocks == int(free // (16 * kv_bytes_per_token(model) / 8))
    # 8 x H100 hold about 1.4 M tokens of LLaMA-2-70B context: ~27 users of 51 K tokens.
    assert 1.3e6 < layout.capacity_tokens < 1.5e6


def test_blocks_are_conserved_through_allocation_prefixes_and_swaps():
    blocks = BlockManager(100, prefix_caching=True, host_blocks=20)
    blocks.allocate(10)
    assert blocks.acquire_prefix(7, 5) is False        # miss: allocated
    assert blocks.acquire_prefix(7, 5) is True         # hit: shared, nothing allocated
    assert blocks.used == 15
    blocks.swap_out(4)
    assert (blocks.used, blocks.host_free) == (11, 16)
    blocks.swap_in(4)
    blocks.release(10)
    blocks.release_prefix(7)
    blocks.release_prefix(7)
    assert (blocks.held, blocks.used, blocks.available) == (0, 5, 100)   # prefix kept, evictable
    blocks.allocate(98)                                 # evicts the cached prefix
    assert blocks.evicted_total == 5 and not blocks.is_cached(7)
    blocks.check()
    assert blocks.allocated_total - blocks.freed_total == blocks.used == 98


def test_allocating_past_capacity_is_an_error_not_a_silent_overcommit():
    blocks = BlockManager(10)
    blocks.allocate(8)
    with pytest.raises(KVCacheError, match="allocate 3 KV blocks with 2 free"):
        blocks.allocate(3)
    with pytest.raises(KVCacheError, match="release 9"):
        blocks.release(9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "acquire", "drop", "out", "in"]),
                          st.integers(1, 12), st.integers(0, 3)), max_size=60))
def test_any_sequence_of_operations_keeps_allocated_minus_freed_equal_to_in_use(ops):
    blocks = BlockManager(64, prefix_caching=True, host_blocks=16)
    held, held_prefixes, swapped = 0, [], []
    for op, n, pid in ops:
        if op == "alloc" and n <= blocks.available:
            blocks.allocate(n)
            held += n
        elif op == "free" and held >= n:
            blocks.release(n)
            held -= n
        elif op == "acquire" and (blocks.is_cached(pid) or 4 <= blocks.available):
            blocks.acquire_prefix(pid, 4)
            held_prefixes.append(pid)
        elif op == "drop" and held_prefixes:
            blocks.release_prefix(held_prefixes.pop())
        elif op == "out" and held >= n and blocks.can_swap_out(n):
            blocks.swap_out(n)
            held -= n
            swapped.append(n)
        elif op == "in" and swapped and swapped[-1] <= blocks.available:
            blocks.swap_in(swapped[-1])
            held += swapped.pop()
        blocks.check()
        assert 0 <= blocks.used <= blocks.total
        assert blocks.held == held + 4 * len(set(held_prefixes))

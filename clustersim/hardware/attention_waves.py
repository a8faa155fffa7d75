"""How a causal fused-attention kernel's unequal thread blocks land on a GPU's SMs.

Fidelity: analytical (a list schedule of the kernel's blocks, computed per shape and cached).

A flash kernel runs one thread block per (batch, head, tile of ``tile`` query rows) in the
forward pass and per (batch, head, tile of ``tile`` key columns) in the backward pass. Without a
mask every block does the same work. With a causal mask (bottom-right aligned: query ``r`` sees
keys ``c <= r + kv_len - q_len``) query tile ``i`` sees about ``i + 1`` key tiles and key tile
``j`` is seen by about ``n - j`` query tiles, so the blocks of one head differ in work by up to
``ceil(len / tile)`` times. When the blocks are few relative to the SMs (tensor-parallel head
shards at batch 1), the kernel's time is the makespan of those unequal blocks, not
``ceil(blocks / S)`` equal waves.

A block's work here is the number of unmasked score elements it computes (rows x keys seen, so
that the blocks' works add up to the masked FLOP count ``causal_fraction`` gives). Each block
goes, in the kernel's issue order, to the SM that frees first (greedy list scheduling, as the
hardware block scheduler does for a grid larger than the GPU and a persistent kernel's atomic
tile counter does). Issue orders, from the kernels' sources:

* ``launch``: the grid order of a non-persistent kernel, tile index fastest, then batch, then
  head. FlashAttention-2 launches ``grid(num_m_block, b, h)`` with ``m_block = blockIdx.x``
  (Dao-AILab/flash-attention ``csrc/flash_attn/src/flash_fwd_launch_template.h`` and
  ``flash_fwd_kernel.h``), so the forward issues each head's shortest query tile first; its
  backward launches ``grid(num_n_block, b, h)``, each head's longest key tile first.
* ``longest_first``: longest-processing-time-first over the whole grid, FlashAttention-3's
  ``DynamicPersistentTileScheduler`` for causal attention (``hopper/tile_scheduler.hpp``:
  "the longest remaining tile is assigned to the first SM that's free"; it applies the order
  within L2-sized sections of heads, one section for the shapes of the fitted tables).

Which order a kernel uses is the GPU's ``attention_block_order``; the shipped profiles keep the
default ``launch``, because it is what cuDNN's measured few-heads prefill times show (its order
is not public; see profiles/README.md). Not modelled: more than one block resident per SM, the
hardware scheduler's deviations from first-free dispatch, FA3's L2 sections of many heads, a
kernel choosing a smaller query tile for large head dims.

The result is the kernel's *effective waves*: makespan x blocks / total work, the number of
equal-block waves that would take as long. With equal blocks the makespan is exactly
``ceil(blocks / S)`` blocks' work, so the effective waves are exactly ``ceil(blocks / S)`` (the
works are integers and the ratio is computed from exact integer products).
"""

from __future__ import annotations

import heapq
import math
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np

BlockOrder = Literal["launch", "longest_first"]
BLOCK_ORDERS: tuple[str, ...] = ("launch", "longest_first")


def tile_works(q_len: int, kv_len: int, tile: int, backward: bool) -> tuple[int, ...]:
    """Unmasked score elements of each block of one (batch, head) under a causal mask, in grid
    order: query tiles (forward) or key tiles (backward) of ``tile`` rows/columns."""
    if backward:
        # Key column c is seen by the rows r with r + kv_len - q_len >= c: min(q_len, kv_len - c).
        per_line = np.minimum(q_len, kv_len - np.arange(kv_len, dtype=np.int64))
    else:
        per_line = np.clip(np.arange(q_len, dtype=np.int64) + kv_len - q_len + 1, 0, kv_len)
    starts = np.arange(0, per_line.size, tile)
    return tuple(int(w) for w in np.add.reduceat(per_line, starts))


def greedy_makespan(works: Sequence[int], num_sms: int) -> int:
    """Finish time of the last SM when each block, in order, goes to the SM that frees first."""
    if len(works) <= num_sms:
        return max(works)
    loads = [0] * num_sms
    for w in works:
        heapq.heapreplace(loads, loads[0] + w)
    return max(loads)


@lru_cache(maxsize=4096)
def causal_effective_waves(q_len: int, kv_len: int, copies: int, tile: int, num_sms: int,
                           backward: bool, order: BlockOrder) -> float:
    """Effective waves of a causal kernel with ``copies`` (batch x heads) copies of one head's
    blocks (see the module docstring); ``ceil(blocks / num_sms)`` when the blocks are equal."""
    if order not in BLOCK_ORDERS:
        raise ValueError(f"unknown attention block order {order!r}; expected one of "
                         f"{list(BLOCK_ORDERS)}")
    head = tile_works(q_len, kv_len, tile, backward)
    blocks, total = copies * len(head), copies * sum(head)
    if total == 0:
        return float(math.ceil(blocks / num_sms))
    if len(set(head)) == 1:                     # equal blocks: whole waves, exactly
        return float(math.ceil(blocks / num_sms))
    if order == "longest_first":
        works = [w for w in sorted(head, reverse=True) for _ in range(copies)]
    else:
        works = list(head) * copies
    return greedy_makespan(works, num_sms) * blocks / total

"""What a serving batch policy sees (``SchedulerView``) and what it decides (``BatchPlan``).

A policy is a pure function of the view: it never allocates KV blocks, never touches a clock and
never imports the engine. The engine (``clustersim.workloads.serving``) builds one view per
scheduler iteration, asks the policy for a plan, checks the plan against its own accounting, and
carries it out: preempting decodes when their next blocks do not fit (most recently admitted
first, as vLLM), swapping in, admitting, and timing the iteration.

Vocabulary (vLLM's):

* a *waiting* request has no KV blocks; admitting it allocates blocks for everything it must
  prefill (its prompt, or prompt plus generated tokens after a recompute preemption) at once;
* a *prefilling* sequence was admitted but its prompt is not fully computed (chunked prefill);
* a *decode* sequence produces one token per iteration it runs in;
* a *swapped* sequence had its private KV blocks moved to host memory.

Token accounting: the iteration that completes a sequence's prefill samples its first token, and
each later decode iteration samples one more, so a request with ``n`` output tokens runs one
prefill and ``n - 1`` decode iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Waiting(Protocol):
    """A request in the waiting queue, as a policy sees it."""

    rid: int            # request id
    tokens: int         # tokens to prefill on admission (prompt, plus generated after recompute)
    max_tokens: int     # KV tokens the request holds at its end: prompt + output - 1
    prefix_id: int      # shared-prefix group, -1 for none (ids <= -2: radix-tree branches)
    prefix_blocks: int  # full KV blocks of the shared prefix (0 for none)
    # A request from a trace with block hashes may also carry ``path``: the hash ids of its
    # prompt's shareable blocks, looked up in the engine's radix tree (``prefix_match``).


class WaitingOrder(Protocol):
    """The waiting queue: iterable in arrival order, or grouped by shared prefix."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Waiting]: ...

    def grouped(self, first: Collection[int]) -> Iterator[Waiting]: ...


@dataclass(frozen=True, slots=True)
class Prefilling:
    """An admitted sequence whose prompt is not fully computed yet."""

    rid: int
    remaining_tokens: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """``tokens`` prompt tokens of sequence ``rid`` computed in this iteration."""

    rid: int
    tokens: int


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """One iteration's batch.

    ``decode``: every decode sequence runs (produces a token). ``swap_in``: that many sequences
    from the head of the swapped queue return to the GPU and decode in this iteration.
    ``admit``: waiting requests that get KV blocks now. ``chunks``: prefill work, for prefilling
    or just-admitted sequences. ``pad_decodes_to``: decode cost as if this many sequences ran
    (static batching keeps finished sequences' slots in the batch).
    """

    decode: bool = False
    swap_in: int = 0
    admit: tuple[int, ...] = ()
    chunks: tuple[Chunk, ...] = ()
    pad_decodes_to: int = 0

    @property
    def prefill_tokens(self) -> int:
        return sum(chunk.tokens for chunk in self.chunks)

    @property
    def empty(self) -> bool:
        return not (self.decode or self.swap_in or self.admit or self.chunks)

    def describe(self) -> str:
        """Compact text, e.g. ``decode + swap_in 1 + admit [7, 8] + prefill 7:512 8:100``."""
        parts = ["decode"] if self.decode else []
        if self.swap_in:
            parts.append(f"swap_in {self.swap_in}")
        if self.admit:
            parts.append(f"admit {list(self.admit)}")
        if self.chunks:
            parts.append("prefill " + " ".join(f"{c.rid}:{c.tokens}" for c in self.chunks))
        return " + ".join(parts) or "idle"


class SchedulerView(NamedTuple):
    """The state of one engine (a replica, or one virtual engine of a pipelined replica) before
    an iteration, read-only (a named tuple: cheap to build once per iteration). Blocks are KV
    blocks of ``block_size`` tokens.

    ``available_blocks`` counts free blocks plus cached prefix blocks no sequence holds (they are
    evicted on demand). ``decode_need_blocks`` is how many new blocks the decode sequences need
    if they run now (one for each whose context fills its last block); when it exceeds
    ``available_blocks`` the engine will preempt, and a policy should not admit anything.
    """

    block_size: int
    total_blocks: int
    available_blocks: int
    watermark_blocks: int
    decodes: int
    decode_need_blocks: int
    prefilling: tuple[Prefilling, ...]
    waiting: WaitingOrder
    swapped_blocks: tuple[int, ...]     # blocks each swapped sequence needs back (with its
                                        # next decode's), queue order
    pinned_prefixes: Mapping[int, int]  # prefix id -> blocks, held by some sequence
    cached_prefixes: Collection[int]    # prefix ids resident (pinned or evictable)
    cohort: int                         # sequences admitted since the engine was last empty
    # path of block hashes -> (resident, held) blocks of its longest cached prefix (radix tree)
    prefix_match: Callable[[Sequence], tuple[int, int]] | None = None

    @property
    def running(self) -> int:
        """Sequences holding KV blocks on the GPU (decoding or prefilling)."""
        return self.decodes + len(self.prefilling)

    @property
    def preempting(self) -> bool:
        return self.decodes > 0 and self.decode_need_blocks > self.available_blocks

    def blocks_to_admit(self, entry: Waiting) -> int:
        """Available blocks that admitting ``entry`` consumes (its whole prefill at once).

        A prefix that a running sequence already holds is shared, not allocated again; a cached
        but unheld prefix is reused, but its blocks stop being evictable, so it costs the same.
        """
        blocks = -(-entry.tokens // self.block_size)
        path = getattr(entry, "path", None)
        if path:
            return blocks - self.prefix_match(path)[1]
        if entry.prefix_blocks and entry.prefix_id in self.pinned_prefixes:
            blocks -= entry.prefix_blocks
        return blocks

    def tokens_to_compute(self, entry: Waiting) -> int:
        """Prefill tokens of ``entry`` left after reusing its cached prefix (if resident)."""
        path = getattr(entry, "path", None)
        if path:
            return entry.tokens - self.prefix_match(path)[0] * self.block_size
        if entry.prefix_blocks and entry.prefix_id in self.cached_prefixes:
            return entry.tokens - entry.prefix_blocks * self.block_size
        return entry.tokens

    def max_blocks(self, entry: Waiting) -> int:
        """Blocks ``entry`` holds at its end (prompt + output - 1 tokens)."""
        return -(-entry.max_tokens // self.block_size)

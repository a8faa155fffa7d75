"""Sequences and the decode group: why a decode iteration costs O(1), not O(batch).

Every running decode sequence gains one token per iteration, so its state is a function of the
group's step counter: a sequence that joined at step ``j`` with context ``c`` and ``g`` generated
tokens has, at step ``s``, context ``c + s - j`` and ``g + s - j`` tokens. The group keeps

* ``sum_a``: the sum of ``c - j`` over members, so the total context is ``sum_a + n * step``;
* ``residue[r]``: members with ``(c - j) mod block_size == r``; the decodes that need a new KV
  block at step ``s`` (those whose context fills its last block, ``context % B == 0``) are
  exactly ``residue[-s mod B]``;
* a heap of finish steps, popped only when a sequence ends.

So an iteration touches only the sequences that finish, are preempted or join, and the block
accounting still matches what per-token bookkeeping would give, block for block.
"""

from __future__ import annotations

import heapq

WAITING, PREFILLING, DECODING, SWAPPED, FINISHED, REJECTED = range(6)


class Seq:
    """One request's state in an engine. ``tokens`` is what its next admission must prefill
    (the prompt, plus the generated tokens after a recompute preemption)."""

    __slots__ = ("rid", "prompt", "output", "prefix_id", "prefix_blocks", "tokens", "max_tokens",
                 "computed", "generated", "state", "holds_prefix", "a", "step_join", "g_join",
                 "finish_step", "context", "swapped_blocks", "preemptions", "first_token_s",
                 "preempted_at_s", "stall_s", "path", "prefill_start_s", "handoff_s",
                 "kv_wait_s", "kv_transfer_s")

    def __init__(self, rid: int, prompt: int, output: int, prefix_id: int, prefix_blocks: int,
                 path: tuple | None = None):
        self.rid, self.prompt, self.output = rid, prompt, output
        self.prefix_id, self.prefix_blocks = prefix_id, prefix_blocks
        self.path = path            # hash ids of the shareable prompt blocks (radix tree), or None
        self.tokens = prompt
        self.max_tokens = prompt + output - 1
        self.computed = self.generated = 0
        self.state = WAITING
        self.holds_prefix = False
        self.a = self.step_join = self.g_join = self.finish_step = 0
        self.context = 0           # KV tokens stored (kept current outside the decode group)
        self.swapped_blocks = 0
        self.preemptions = 0
        self.first_token_s = -1.0
        self.preempted_at_s = -1.0  # when last preempted, until its next token (-1: running)
        self.stall_s = 0.0          # preemption to next token, summed over its preemptions
        # Disaggregated serving: when its prefill began and ended, how long its KV waited for
        # decode blocks, and how long the transfer took.
        self.prefill_start_s = self.handoff_s = -1.0
        self.kv_wait_s = self.kv_transfer_s = 0.0


class DecodeGroup:
    """The running decode sequences of one engine (see the module docstring)."""

    __slots__ = ("block_size", "step", "n", "sum_a", "residue", "members", "_heap", "_pushes")

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.step = 0
        self.n = 0
        self.sum_a = 0
        self.residue = [0] * block_size
        self.members: dict[int, Seq] = {}      # admission order: the last is preempted first
        self._heap: list[tuple[int, int, Seq]] = []
        self._pushes = 0

    def need_blocks(self) -> int:
        """New KV blocks the members need to run the next iteration."""
        return self.residue[-self.step % self.block_size] if self.n else 0

    def context_tokens(self) -> int:
        """KV tokens the members hold now."""
        return self.sum_a + self.n * self.step

    def add(self, seq: Seq, context: int, generated: int) -> None:
        seq.state = DECODING
        seq.a = context - self.step
        seq.step_join = self.step
        seq.g_join = generated
        seq.finish_step = self.step + seq.output - generated
        self.members[seq.rid] = seq
        self.n += 1
        self.sum_a += seq.a
        self.residue[seq.a % self.block_size] += 1
        self._pushes += 1
        heapq.heappush(self._heap, (seq.finish_step, self._pushes, seq))

    def remove(self, seq: Seq) -> None:
        """Take ``seq`` out; its ``context`` and ``generated`` are brought up to date."""
        del self.members[seq.rid]
        self.n -= 1
        self.sum_a -= seq.a
        self.residue[seq.a % self.block_size] -= 1
        seq.context = seq.a + self.step
        seq.generated = seq.g_join + self.step - seq.step_join

    def last(self) -> Seq:
        """The most recently added member (vLLM preempts it first)."""
        return self.members[next(reversed(self.members))]

    def advance(self) -> list[Seq]:
        """One decode iteration done: every member gained a token. Returns (and removes) the
        members that reached their output length."""
        self.step += 1
        return self.pop_finished()

    def pop_finished(self) -> list[Seq]:
        """Remove and return the members whose finish step has come (after ``step`` moved)."""
        finished = []
        heap = self._heap
        while heap and heap[0][0] <= self.step:
            finish_step, _, seq = heapq.heappop(heap)
            if seq.state == DECODING and seq.finish_step == finish_step \
                    and self.members.get(seq.rid) is seq:
                self.remove(seq)
                finished.append(seq)
        return finished

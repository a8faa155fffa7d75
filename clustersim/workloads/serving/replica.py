"""One serving engine as a simpy process: schedule, preempt, swap, time, complete.

A replica with ``pp`` pipeline stages runs ``pp`` virtual engines (as vLLM does): each has its
own scheduler, waiting queue and share of the KV blocks, and their batches (micro-batches) flow
through the shared stages one after another. With ``pp = 1`` there is one engine and iterations
run back to back.

Per iteration the engine yields at most a handful of simpy events whatever the batch size: a
wait for the first stage to be free (pipelines only), the swap transfer (only when something is
swapped), and one timeout for the iteration, and not even that when no other event in the
simulation is due before the iteration ends: the engine then keeps its own clock ahead of
simpy's and goes on (nothing can observe the difference; it yields to catch up before anything
that touches the shared clock). Stage occupancy is bookkept in ``Pipeline`` arithmetically.
"""

from __future__ import annotations

from collections import deque

from clustersim.errors import DeadlockError, ScheduleError
from clustersim.schedules.serving.batch import BatchPlan, Prefilling, SchedulerView
from clustersim.schedules.serving.queue import WaitingQueue
from clustersim.workloads.serving import continuous_run, pim_split
from clustersim.workloads.serving.decode_run import decode_run
from clustersim.workloads.serving.iteration import IterationModel
from clustersim.workloads.serving.kv_cache import BlockManager, KVCacheError, KVLayout
from clustersim.workloads.serving.outcome import Outcome
from clustersim.workloads.serving.placement import Pipeline, ReplicaPlacement
from clustersim.workloads.serving.sequence import (FINISHED, PREFILLING, SWAPPED, WAITING,
                                                   DecodeGroup, Seq)
from clustersim.workloads.serving.tp_fabric import run_on_fabric


__all__ = ["Outcome", "Pipeline", "ReplicaPlacement", "VirtualEngine"]


class VirtualEngine:
    """One scheduler over one share of a replica's KV cache (see the module docstring)."""

    def __init__(self, *, sim, name: str, index: int, placement: ReplicaPlacement, policy,
                 blocks: BlockManager, layout: KVLayout, model: IterationModel,
                 pipeline: Pipeline, outcome: Outcome, on_done, swap: bool, host_endpoint,
                 role: str = "mixed", pool: str = "mixed", fabric_collectives=None):
        self.sim, self.env = sim, sim.env
        self.name, self.index, self.placement = name, index, placement
        self.policy, self.blocks, self.layout, self.model = policy, blocks, layout, model
        self.pipeline, self.outcome, self.on_done = pipeline, outcome, on_done
        self.swap = swap
        # Disaggregation (see disaggregation.py): a prefill engine hands each prompt it finishes
        # to ``handoff``; a decode engine takes requests whose KV has arrived (``incoming``).
        self.role, self.pool = role, pool
        # TP all-reduces as flows on the shared fabric: (intercept_s, seconds per byte, flow
        # steps of an all-reduce of a size), or None for closed-form times on an idle fabric.
        self.fabric_collectives = fabric_collectives
        self.handoff = None
        self.incoming: list[Seq] = []
        self.checked_batches: set[int] = set()  # decode_run: batch sizes checked
        self.in_transfer = 0            # prefill: sequences whose KV is leaving
        self.reserved = 0               # decode: sequences whose KV is arriving
        self.block_size = layout.block_size
        self.group = DecodeGroup(layout.block_size)
        self.queue: WaitingQueue[Seq] = WaitingQueue()
        self.prefilling: dict[int, Seq] = {}
        self.swapped: deque[Seq] = deque()
        self.cohort = 0
        self._wake = None
        self._feed = None
        self._fed = 0
        self._plain = None          # fed requests: (flags, prompt, output), see ``feed``
        self._samples = None        # the router's load samples
        self.fast = False           # continuous_run: set when the loop starts
        self.record = sim.record_trace
        gpus = placement.devices
        self._swap_out_pairs = tuple((g, host_endpoint(g)) for g in gpus)
        self._swap_in_pairs = tuple((host_endpoint(g), g) for g in gpus)
        self._hbm_pools = [sim.pools.get((n, placement.kv_tier)) for n in placement.names]
        self._host_pools = [sim.pools.get((n, placement.offload_tier)) for n in placement.names]
        self._last_used = 0
        self._last_free = blocks.free
        self._resumed: list[Seq] = []       # swapped in this iteration: stalls end at its end
        # statistics
        self.iterations: list[tuple] = []   # (start_s, end_s, decodes, prefill_tokens, chunks)
        self.kv_timeline: list[tuple[float, int]] = [(0.0, 0)]
        self.emitted = 0
        self.preemptions = self.recomputed_tokens = self.prefix_hit_tokens = 0
        self.swapped_out_blocks = self.swapped_in_blocks = 0
        self.swap_time_s = 0.0
        self.max_running = 0
        self.process = self.env.process(self.run())

    # -- the outside world ------------------------------------------------------------------
    def outstanding(self) -> int:
        return (len(self.queue) + len(self.prefilling) + self.group.n + len(self.swapped)
                + self.reserved)

    def running(self) -> int:
        """Sequences holding or about to hold KV here (decoding, prefilling, arriving)."""
        return self.group.n + len(self.prefilling) + len(self.incoming) + self.reserved

    def feed(self, times: list[float], rids: list[int], dispatch, plain=None,
             samples=None) -> None:
        """Requests this engine takes itself as its clock passes ``times`` (sorted), each by
        ``dispatch(rid, time, engine)``; no simpy event per arrival, and open loop (no user
        waits for a request's end). ``plain`` (optional) is (flags, prompt tokens, output
        tokens) per request, the flag set for a request that ``dispatch`` would accept and give
        no shared prefix: the fast path (``continuous_run``) queues those itself, appending
        (time, replica, outstanding) to ``samples`` (the router's) as ``dispatch`` does."""
        self._feed = (times, rids, dispatch)
        self._fed = 0
        self._plain, self._samples = plain, samples

    def _take_arrivals(self, clock: float) -> None:
        times, rids, dispatch = self._feed
        fed = self._fed
        while fed < len(times) and times[fed] <= clock:
            dispatch(rids[fed], times[fed], self)
            fed += 1
        self._fed = fed

    def _next_arrival(self) -> float | None:
        if self._feed is None or self._fed >= len(self._feed[0]):
            return None
        return self._feed[0][self._fed]

    def submit(self, seq: Seq) -> None:
        self.queue.push_back(seq)
        self._wake_up()

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.triggered:
            wake.succeed()

    def accept(self, seq: Seq, now: float) -> None:
        """Decode: ``seq``'s KV has arrived (its blocks were reserved); it decodes from the
        next iteration, and its first token is delivered now."""
        self.reserved -= 1
        seq.holds_prefix = False
        if seq.first_token_s < 0:
            seq.first_token_s = now
            self.outcome.first_token_s[seq.rid] = now
        self.incoming.append(seq)
        self._wake_up()

    def release_transferred(self, seq: Seq, now: float) -> None:
        """Prefill: ``seq``'s KV has left; free its blocks."""
        self.blocks.release(self._private_blocks(seq))
        self._release_prefix(seq)
        self.in_transfer -= 1
        if self.blocks.free != self._last_free:
            self._note_kv(now)
        self._wake_up()

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        env, pipeline, policy, model = self.env, self.pipeline, self.policy, self.model
        group, blocks, iterations = self.group, self.blocks, self.iterations
        single_stage = len(pipeline.free_s) == 1
        self.steady = single_stage and not self.record and self.role != "prefill" \
            and getattr(policy, "steady_decode", False) and model.overlap is None \
            and self.fabric_collectives is None
        self.fast = continuous_run.eligible(self)
        clock = env.now     # this engine's time; ahead of env.now while iterations run inline
        while True:
            if self._feed is not None:
                self._take_arrivals(clock)
            if self.incoming:
                for seq in self.incoming:
                    group.add(seq, seq.context, seq.generated)
                self.incoming.clear()
            if not (group.n or self.queue or self.prefilling or self.swapped):
                self.cohort = 0
                arrival = self._next_arrival()
                if arrival is not None:         # idle until this engine's next request
                    if not env.peek() > arrival:
                        yield env.timeout(arrival - env.now)
                    clock = arrival
                    continue
                if clock > env.now:             # catch the simpy clock up, then look again
                    yield env.timeout(clock - env.now)
                    continue
                self._wake = env.event()
                yield self._wake
                self._wake = None
                clock = env.now
                continue
            if not single_stage and pipeline.free_s[0] > clock:
                yield env.timeout(pipeline.free_s[0] - env.now)
                clock = env.now
            view = self._view()
            plan = policy.plan(view)
            chunks: list[tuple[Seq, int]] = []
            need = group.need_blocks()
            if plan.decode and not (plan.swap_in or plan.admit or plan.chunks) \
                    and need <= blocks.free + blocks.evictable_blocks:
                blocks.allocate(need)           # the common case: decode only, no preemption
                run_decode = True
            else:
                if plan.empty:
                    if not (self.in_transfer or self.reserved):
                        raise self._stuck(view)
                    # Blocks held by KV leaving or arriving: wait for a transfer to end.
                    if clock > env.now:
                        yield env.timeout(clock - env.now)
                    self._wake = env.event()
                    yield self._wake
                    self._wake = None
                    clock = env.now
                    continue
                run_decode = plan.decode or plan.swap_in > 0
                out_blocks, in_blocks = self._prepare(plan, run_decode, clock)
                if out_blocks or in_blocks:
                    if clock > env.now:
                        yield env.timeout(clock - env.now)
                    yield from self._transfer(out_blocks, in_blocks)
                    clock = env.now
                if plan.chunks:
                    chunks = self._chunks(plan)
            decodes = group.n if run_decode else 0
            running = group.n + len(self.prefilling)
            if running > self.max_running:
                self.max_running = running
            pad = plan.pad_decodes_to if decodes else 0
            if chunks:
                timing, prefill_tokens = self._time_mixed(decodes, pad, chunks)
            else:
                timing = model.decode_iteration(decodes, group.context_tokens() + decodes, pad)
                prefill_tokens = 0
            if self.fabric_collectives is not None:
                start = clock
                clock = yield from self._on_fabric(clock, timing.stages_s[0],
                                                   max(decodes, pad) + prefill_tokens)
                pipeline.free_s[0] = end = clock
                pipeline.busy_s[0] += end - start
                clock = start
                spans = ((start, end),)
            elif single_stage:
                end = clock + timing.stages_s[0]
                pipeline.free_s[0] = end
                pipeline.busy_s[0] += timing.stages_s[0]
                spans = ((clock, end),)
            else:
                spans, end = pipeline.reserve(clock, timing)
            iterations.append((spans[0][0], end, decodes, prefill_tokens, len(chunks)))
            if blocks.free != self._last_free:
                self._note_kv(clock)
            if self.record:
                self._record_iteration(spans, decodes, prefill_tokens, len(chunks))
            # Nothing else in the simulation happens before ``end``: go on without an event
            # (the simpy clock catches up at the next yield). Otherwise wait for ``end``.
            if not env.peek() > end:
                yield env.timeout(end - env.now)
            clock = end
            self._complete(run_decode, chunks, clock)
            if self.role == "decode" and self.handoff.waiting[self.index]:
                self.handoff.admit(self, clock)     # blocks freed: take waiting KV
            if blocks.free != self._last_free:
                self._note_kv(clock)
            if self.steady:
                if self.fast and continuous_run.ready(self):
                    clock = yield from self._continuous_run(clock)
                elif group.n and not (self.queue or self.prefilling or self.swapped):
                    clock = self._decode_run(clock)

    def _on_fabric(self, clock: float, seconds: float, tokens: int):
        """An iteration with its TP all-reduces as flows on the shared fabric (``tp_fabric``)."""
        return (yield from run_on_fabric(self, clock, seconds, tokens))

    def _decode_run(self, clock: float) -> float:
        """Decode-only iterations back to back while nothing can change the plan
        (``decode_run``)."""
        return decode_run(self, clock)

    def _continuous_run(self, clock: float):
        """Continuous batching or chunked prefill at low load: arrivals, prefills and decodes
        in one loop while the plan is the policy's (``continuous_run``; a generator, as
        ``run``, returning the engine's clock)."""
        return (yield from continuous_run.continuous_run(self, clock))

    def _time_mixed(self, decodes: int, pad: int, chunks: list[tuple[Seq, int]]):
        """Timing of an iteration with prefill chunks (and maybe decodes); its prefill tokens."""
        completing = sum(1 for seq, tokens in chunks if seq.computed + tokens == seq.tokens)
        timing = self.model.iteration(
            decodes=decodes,
            decode_context=self.group.context_tokens() + decodes if decodes else 0,
            chunks=[(tokens, seq.computed + tokens) for seq, tokens in chunks],
            sampled=(max(decodes, pad) if decodes else 0) + completing, pad_decodes_to=pad)
        return timing, sum(tokens for _, tokens in chunks)

    # -- planning ---------------------------------------------------------------------------
    def _view(self) -> SchedulerView:
        blocks, group = self.blocks, self.group
        return SchedulerView(
            block_size=self.block_size, total_blocks=blocks.total,
            available_blocks=blocks.free + blocks.evictable_blocks,
            watermark_blocks=blocks.watermark, decodes=group.n,
            decode_need_blocks=group.need_blocks(),
            prefilling=tuple(Prefilling(s.rid, s.tokens - s.computed)
                             for s in self.prefilling.values()) if self.prefilling else (),
            waiting=self.queue,
            swapped_blocks=tuple(s.swapped_blocks + (s.context % self.block_size == 0)
                                 for s in self.swapped) if self.swapped else (),
            pinned_prefixes=blocks.pinned,
            cached_prefixes=blocks.resident if blocks.tree is None else blocks.resident_groups(),
            cohort=self.cohort,
            prefix_match=blocks.match_path if blocks.tree is not None else None)

    def _stuck(self, view: SchedulerView) -> DeadlockError:
        head = self.queue.head()
        detail = (f"waiting head request {head.rid} needs {view.blocks_to_admit(head)} blocks"
                  if head is not None else "nothing waiting")
        return DeadlockError(
            f"{self.name} at t={self.env.now:.6g} s: policy {self.policy.name!r} scheduled nothing "
            f"with {len(self.queue)} waiting, {len(self.prefilling)} prefilling, {self.group.n} "
            f"decoding, {len(self.swapped)} swapped; {detail}, {view.available_blocks} of "
            f"{view.total_blocks} available (watermark {view.watermark_blocks})")

    def _fail(self, what: str) -> ScheduleError:
        return ScheduleError(f"{self.name} at t={self.env.now:.6g} s: policy "
                             f"{self.policy.name!r} {what}")

    def _prepare(self, plan: BatchPlan, run_decode: bool, now: float) -> tuple[int, int]:
        """Preempt, swap in, admit, and allocate the decodes' blocks; returns the blocks swapped
        out and in."""
        blocks, group = self.blocks, self.group
        out_blocks = in_blocks = 0
        if run_decode:
            while group.n and group.need_blocks() > blocks.free + blocks.evictable_blocks:
                out_blocks += self._preempt(group.last(), now)
        for _ in range(plan.swap_in):
            if not self.swapped:
                raise self._fail(f"swapped in {plan.swap_in} sequences, more than are swapped out")
            seq = self.swapped.popleft()
            if seq.swapped_blocks > blocks.available:
                raise self._fail(f"swapped in request {seq.rid} ({seq.swapped_blocks} blocks) with "
                                 f"{blocks.available} available")
            blocks.swap_in(seq.swapped_blocks)
            in_blocks += seq.swapped_blocks
            self.swapped_in_blocks += seq.swapped_blocks
            group.add(seq, seq.context, seq.generated)
            self._resumed.append(seq)
        for rid in plan.admit:
            seq = self.queue.get(rid)
            if seq is None:
                raise self._fail(f"admitted request {rid}, which is not waiting")
            self._admit(seq, now)
        if run_decode:
            need = group.need_blocks()
            if need > blocks.available:
                raise self._fail(f"left {blocks.available} blocks for decodes that need {need}")
            blocks.allocate(need)
        return out_blocks, in_blocks

    def _admit(self, seq: Seq, now: float) -> None:
        blocks, size = self.blocks, self.block_size
        total = -(-seq.tokens // size)
        pb = seq.prefix_blocks
        if seq.path:
            charged = total - blocks.match_path(seq.path)[1]
        else:
            charged = total - pb if pb and seq.prefix_id in blocks.pinned else total
        if charged > blocks.available:
            raise self._fail(f"admitted request {seq.rid} needing {charged} blocks with "
                             f"{blocks.available} available")
        self.queue.remove(seq.rid)
        cached = 0
        if seq.path:
            cached = blocks.acquire_path(seq.path) * size
            self.prefix_hit_tokens += cached
            seq.holds_prefix = True
            total -= pb
        elif pb:
            if blocks.acquire_prefix(seq.prefix_id, pb):
                cached = pb * size
                self.prefix_hit_tokens += cached
            seq.holds_prefix = True
            total -= pb
        try:
            blocks.allocate(total)
        except KVCacheError as exc:
            raise self._fail(f"admitted request {seq.rid}: {exc}") from None
        seq.computed = seq.context = cached
        seq.prefill_start_s = now
        seq.state = PREFILLING
        self.prefilling[seq.rid] = seq
        self.cohort += 1

    def _chunks(self, plan: BatchPlan) -> list[tuple[Seq, int]]:
        chunks = []
        for chunk in plan.chunks:
            seq = self.prefilling.get(chunk.rid)
            if seq is None:
                raise self._fail(f"gave a prefill chunk to request {chunk.rid}, which is not "
                                 "admitted")
            tokens = min(chunk.tokens, seq.tokens - seq.computed)
            if tokens > 0:
                chunks.append((seq, tokens))
        return chunks

    def _private_blocks(self, seq: Seq) -> int:
        blocks = -(-seq.context // self.block_size)
        return blocks - seq.prefix_blocks if seq.holds_prefix else blocks

    def _release_prefix(self, seq: Seq) -> None:
        if seq.holds_prefix:
            if seq.path:
                self.blocks.release_path(seq.path)
            else:
                self.blocks.release_prefix(seq.prefix_id)
            seq.holds_prefix = False

    def _preempt(self, seq: Seq, now: float) -> int:
        """Evict ``seq``'s KV: to host memory (returns the blocks) or for recompute (0).

        A swapped sequence takes its whole context to the host, shared prefix included, and
        lets go of the prefix on the GPU (a swapped sequence that pinned GPU blocks could keep
        every other one from swapping back in); it returns with all its blocks private."""
        self.group.remove(seq)
        private = self._private_blocks(seq)
        seq.preemptions += 1
        seq.preempted_at_s = now
        self.preemptions += 1
        blocks = self.blocks
        whole = -(-seq.context // self.block_size)
        if self.swap and blocks.can_swap_out(whole):
            blocks.swap_out(whole, freed=private)
            self._release_prefix(seq)
            seq.swapped_blocks = whole
            seq.state = SWAPPED
            self.swapped.append(seq)
            self.swapped_out_blocks += whole
            return whole
        blocks.release(private)
        self._release_prefix(seq)
        self.recomputed_tokens += seq.context
        seq.tokens = seq.prompt + seq.generated
        seq.computed = seq.context = 0
        seq.state = WAITING
        self.queue.push_front(seq)
        return 0

    # -- swap traffic -----------------------------------------------------------------------
    def _transfer(self, out_blocks: int, in_blocks: int):
        env, fabric = self.env, self.sim.fabric
        per_gpu = self.layout.block_bytes_per_gpu
        start = env.now
        events = []
        if out_blocks:
            events.append(fabric.coflow(self._swap_out_pairs, out_blocks * per_gpu))
        if in_blocks:
            events.append(fabric.coflow(self._swap_in_pairs, in_blocks * per_gpu))
        yield env.all_of(events)
        self.swap_time_s += env.now - start
        if self.record:
            lead = self.placement.names[0]
            self.sim.recorder.span(lead, "kv swap", "swap", start, env.now, "transfer",
                                   engine=self.name, out_blocks=out_blocks, in_blocks=in_blocks)
            delta = (out_blocks - in_blocks) * per_gpu
            for pool in self._host_pools:
                if pool is not None:
                    if delta > 0:
                        pool.allocate(delta, env.now, f"{self.name} KV swap-out")
                    elif delta < 0:
                        pool.release(-delta, env.now)

    # -- completion -------------------------------------------------------------------------
    def _complete(self, ran_decode: bool, chunks: list[tuple[Seq, int]], now: float) -> None:
        group = self.group
        if self._resumed:
            for seq in self._resumed:
                self._end_stall(seq, now)
            self._resumed.clear()
        if ran_decode:
            self.emitted += group.n
            for seq in group.advance():
                self._finish(seq, now)
        for seq, tokens in chunks:
            seq.computed += tokens
            seq.context = seq.computed
            if seq.computed < seq.tokens:
                continue
            del self.prefilling[seq.rid]
            seq.generated += 1
            self.emitted += 1
            if seq.preempted_at_s >= 0:
                self._end_stall(seq, now)
            if self.role == "prefill" and seq.generated < seq.output:
                self.in_transfer += 1
                self.handoff.prefilled(seq, self, now)
                continue
            if seq.first_token_s < 0:
                seq.first_token_s = now
                self.outcome.first_token_s[seq.rid] = now
            if seq.generated >= seq.output:
                self._finish(seq, now)
            else:
                group.add(seq, seq.context, seq.generated)

    def _end_stall(self, seq: Seq, now: float) -> None:
        """``seq`` produced its first token since it was preempted: the stall is over."""
        seq.stall_s += now - seq.preempted_at_s
        seq.preempted_at_s = -1.0

    def _finish(self, seq: Seq, now: float) -> None:
        blocks = self.blocks
        blocks.release(self._private_blocks(seq))
        self._release_prefix(seq)
        seq.state = FINISHED
        out = self.outcome
        out.finish_s[seq.rid] = now
        out.generated[seq.rid] = seq.generated
        out.preemptions[seq.rid] = seq.preemptions
        out.stall_s[seq.rid] = seq.stall_s
        out.kv_wait_s[seq.rid] = seq.kv_wait_s
        out.kv_transfer_s[seq.rid] = seq.kv_transfer_s
        out.status[seq.rid] = 1
        self.on_done(seq.rid, now)

    # -- records ----------------------------------------------------------------------------
    def _note_kv(self, now: float) -> None:
        used = self.blocks.used
        self._last_free = self.blocks.free
        if used != self._last_used:
            self.kv_timeline.append((now, used))
            if self.record:
                self.sim.recorder.counter(f"replica{self.placement.index}",
                                          f"KV blocks {self.name}", now, used)
                delta = (used - self._last_used) * self.layout.block_bytes_per_gpu
                for pool in self._hbm_pools:
                    if pool is not None:
                        if delta > 0:
                            pool.allocate(delta, now, f"{self.name} KV blocks")
                        else:
                            pool.release(-delta, now)
            self._last_used = used

    def _record_iteration(self, spans, decodes: int, prefill_tokens: int, chunks: int) -> None:
        kind = "mixed" if decodes and prefill_tokens else "decode" if decodes else "prefill"
        recorder, names, tp = self.sim.recorder, self.placement.names, self.placement.tp
        for stage, (start, end) in enumerate(spans):
            recorder.span(names[stage * tp], "iterations", kind, start, end, "compute",
                          engine=self.name, stage=stage, decodes=decodes,
                          prefill_tokens=prefill_tokens, prefill_chunks=chunks,
                          tokens=decodes + prefill_tokens)
        if decodes and not prefill_tokens:     # an NPU+PIM device: both sides' work
            pim_split.record_split(recorder, names[0], spans[0][0], self.model, decodes,
                                   self.group.context_tokens() / decodes)
        now = spans[0][0]
        counter = recorder.counter
        device = f"replica{self.placement.index}"
        counter(device, f"running {self.name}", now, self.group.n + len(self.prefilling))
        counter(device, f"waiting {self.name}", now, len(self.queue))

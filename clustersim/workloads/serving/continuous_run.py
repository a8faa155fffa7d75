"""The low-load fast path of continuous batching and chunked prefill: arrivals, prefills,
decode iterations and finishes in one Python loop.

At low load (a production trace below saturation) a continuous-batching engine spends its time
in a short cycle: a request arrives, is admitted and prefilled alone (vLLM's default scheduler
prefills new prompts first, whole), joins the decode batch, which runs a few iterations until
the next arrival, and finishes some iterations later. Each of those steps through
``VirtualEngine.run`` builds a scheduler view, asks the policy, prepares, times and completes
the iteration: some 25 Python calls per request. This module runs the same cycle with the state
in local variables, with the very arithmetic of the general loop, so the results are the same
to the last bit (``tests/test_serving_fast_path.py`` compares both on random arrivals):

* arrivals: a request the deployment marked plain (accepted, no shared prefix) becomes a
  sequence in the waiting queue directly (its rejection and prefix were decided for the whole
  trace at once, with numpy, in ``deployment._feed_engines``); any other goes through the
  deployment's own ``dispatch``;
* admission: ``ContinuousBatching.plan`` on a view with nothing prefilling, nothing swapped and
  no cached prefix (so every waiting request costs its prompt's blocks): waiting requests in
  arrival order while their blocks fit above the watermark, the prompts fit
  ``max_batched_tokens`` (one longer prompt alone) and sequence slots remain;
* prefill iteration: ``IterationModel.iteration`` on the admitted prompts, kept per prompt
  length for a prompt alone (``IterationModel.prefill_alone_s``);
* chunked prefill (SARATHI) instead: ``ChunkedPrefill.plan`` (every decode, then the prompts
  being prefilled, then new ones in arrival order, the last with a chunk of what is left of
  the token budget) and one mixed ``IterationModel.iteration``, completed through the decode
  group's own methods;
* decode iterations: the arithmetic of ``decode_run``, checked against
  ``model.decode_iteration`` once per batch size;
* completion and finishes: ``DecodeGroup.add`` / ``pop_finished`` and ``VirtualEngine._finish``
  inlined (block release, the outcome; fed arrivals are open loop, so ``on_done`` has
  nothing to send).

Like the general loop it yields a simpy timeout only when another event (another replica's
iteration) is due before its iteration ends or its next request arrives, so replicas behind a
fixed router interleave exactly as before. It stops, with every piece of state written back,
where the general loop must take over: decodes whose new blocks do not fit (preemption), a
waiting request that is not plain, an idle engine with no arrival left, a waiting request that
cannot be admitted with nothing running, or a model whose decode timing is not the inline
arithmetic. Fidelity: the general loop's (event-level per iteration); this is only a faster
way to compute it.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush

from clustersim.schedules.serving.chunked_prefill import ChunkedPrefill
from clustersim.schedules.serving.continuous import ContinuousBatching
from clustersim.workloads.serving.sequence import DECODING, FINISHED, PREFILLING, Seq


def eligible(engine) -> bool:
    """Whether ``engine`` may use the fast path at all (checked once, when its loop starts):
    continuous batching or chunked prefill (not its prefix-aware variant) on one stage, mixed
    role, arrivals fed without events, no radix tree,
    and the engine's decode fast path on (no trace recorded, no overlap, no fabric flows)."""
    return (engine.steady and type(engine.policy) in (ContinuousBatching, ChunkedPrefill)
            and engine.role == "mixed" and engine._feed is not None
            and engine._plain is not None and engine.blocks.tree is None)


def ready(engine) -> bool:
    """Whether the engine's state lets the fast path start now: nothing waiting, prefilling,
    swapped or arriving, and no shared prefix held or cached (so every block is free or held
    by a plain sequence)."""
    blocks = engine.blocks
    return not (engine.queue or engine.prefilling or engine.swapped or engine.incoming
                or blocks.pinned or blocks._level_evictable)


def continuous_run(engine, clock: float):
    """Run ``engine`` (a ``VirtualEngine`` for which ``eligible`` and ``ready`` hold) from
    ``clock`` until the general loop must take over; returns the engine's clock there. A
    generator of simpy events, like the general loop: it waits for an iteration's end (or the
    next arrival) only where the general loop would, when another event is due first (another
    replica's iteration), and nothing it holds in locals meanwhile is read by anyone else
    (fed arrivals take fixed routes, open loop, on a mixed engine)."""
    env, group, blocks, model = engine.env, engine.group, engine.blocks, engine.model
    policy = engine.policy
    chunked = type(policy) is ChunkedPrefill
    max_seqs = policy.max_num_seqs
    max_tokens = policy.token_budget if chunked else policy.max_batched_tokens
    prefilling = engine.prefilling       # (chunked prefill: prompts computed over iterations)
    times, rids, dispatch = engine._feed
    plain, prompt_tokens, output_tokens = engine._plain
    fed, count = engine._fed, len(engine._feed[0])
    next_arrival = times[fed] if fed < count else math.inf
    order = engine.queue._order          # rid -> waiting Seq, arrival order (plain: no groups)
    sample, replica, index = engine._samples.append, engine.placement.index, engine.index
    out = engine.outcome
    first_token_s, finish_s, generated_out = out.first_token_s, out.finish_s, out.generated
    status, engine_out = out.status, out.engine
    timeline, append = engine.kv_timeline, engine.iterations.append
    checked = engine.checked_batches
    size, residue, members, heap = group.block_size, group.residue, group.members, group._heap
    n, step, sum_a, pushes = group.n, group.step, group.sum_a, group._pushes
    total, watermark, free = blocks.total, blocks.watermark, blocks.free
    freed = 0                            # (allocated: what ``free`` lost beyond that)
    free_at_start = free
    layers, fixed_parts, alone = model.layers_per_stage, model._fixed_parts, model._prefill_alone
    # The next other event: nothing done here schedules one (arrivals are fed, so users are
    # open loop and ``on_done`` sends nothing); it changes only across a yield.
    peek = env.peek()
    emitted = 0
    cohort, max_running = engine.cohort, engine.max_running
    busy = 0.0
    seg_n = -1                           # batch size of the cached decode base time
    base = lo = hi = t_lo = t_hi = rise = width = 0.0
    attention_points = model._attention
    next_finish = heap[0][0] if heap else math.inf
    check = False
    while True:
        # -- arrivals up to the clock (``VirtualEngine._take_arrivals``) ----------------------
        while next_arrival <= clock:
            rid = rids[fed]
            fed += 1
            if not plain[rid]:           # rejected or with a shared prefix: the deployment's way
                group.n = n
                engine._fed = fed
                dispatch(rid, next_arrival, engine)
                peek = env.peek()
            else:
                seq = Seq(rid, prompt_tokens[rid], output_tokens[rid], -1, 0)
                engine_out[rid] = index
                order[rid] = seq
                # ``ClusterRouter.note`` of ``engine.outstanding()``
                sample((next_arrival, replica, len(order) + len(prefilling) + n))
            next_arrival = times[fed] if fed < count else math.inf
        # -- chunked prefill: decodes with prompt chunks (``ChunkedPrefill.plan``) -------------
        if chunked:
            if order or prefilling:
                need = residue[-step % size] if n else 0
                if need > free:
                    break                # preempting: the full path
                budget, room = max_tokens - n, free - need
                chunks = []
                for seq in prefilling.values():
                    tokens = min(seq.tokens - seq.computed, budget)
                    if tokens <= 0:
                        break
                    chunks.append((seq, tokens))
                    budget -= tokens
                slots = max_seqs - n - len(prefilling)
                admit = []
                bail = False
                if order and budget > 0:
                    for seq in order.values():           # ``admit_prefills``, chunked
                        if slots <= 0 or budget <= 0:
                            break
                        if seq.prefix_id != -1:
                            bail = True
                            break
                        held = -(-seq.tokens // size)
                        if room - held < watermark:
                            break
                        tokens = min(seq.tokens, budget)
                        admit.append(seq)
                        chunks.append((seq, tokens))
                        room -= held
                        budget -= tokens
                        slots -= 1
                if bail:
                    break
                if chunks:
                    for seq in admit:    # ``_admit``
                        del order[seq.rid]
                        free -= -(-seq.tokens // size)
                        seq.computed = seq.context = 0
                        seq.prefill_start_s = clock
                        seq.state = PREFILLING
                        prefilling[seq.rid] = seq
                    cohort += len(admit)
                    free -= need         # the decodes' new blocks
                    if n + len(prefilling) > max_running:
                        max_running = n + len(prefilling)
                    pairs = []           # ``_time_mixed``: (tokens, context after the chunk)
                    completing = prefill_tokens = 0
                    for seq, tokens in chunks:
                        after = seq.computed + tokens
                        pairs.append((tokens, after))
                        completing += after == seq.tokens
                        prefill_tokens += tokens
                    seconds = model.iteration(
                        decodes=n, decode_context=sum_a + n * step + n if n else 0,
                        chunks=pairs, sampled=n + completing, pad_decodes_to=0).stages_s[0]
                    end = clock + seconds
                    append((clock, end, n, prefill_tokens, len(chunks)))
                    if total - free != timeline[-1][1]:
                        timeline.append((clock, total - free))
                    busy += seconds
                    if not peek > end:
                        yield env.timeout(end - env.now)
                        peek = env.peek()
                    clock = end
                    # ``_complete`` through the group's own methods (one iteration per chunk)
                    group.n, group.step, group.sum_a, group._pushes = n, step, sum_a, pushes
                    if n:
                        emitted += n
                        for seq in group.advance():
                            free, freed = _release(seq, free, freed, size)
                            _finish(seq, clock, out)
                    for seq, tokens in chunks:
                        seq.computed += tokens
                        seq.context = seq.computed
                        if seq.computed < seq.tokens:
                            continue
                        del prefilling[seq.rid]
                        seq.generated += 1
                        emitted += 1
                        _first_token_out(seq, clock, first_token_s)
                        if seq.generated >= seq.output:
                            free, freed = _release(seq, free, freed, size)
                            _finish(seq, clock, out)
                        else:
                            group.add(seq, seq.context, seq.generated)
                    n, step, sum_a, pushes = group.n, group.step, group.sum_a, group._pushes
                    next_finish = heap[0][0] if heap else math.inf
                    if total - free != timeline[-1][1]:
                        timeline.append((clock, total - free))
                    continue
                if not n:
                    break                # nothing to run: the general loop waits or reports
        # -- admission and a prefill iteration (``ContinuousBatching.plan``) -------------------
        elif order:
            admit = []
            tokens_sum = 0
            room, budget, slots = free, max_tokens, max_seqs - n
            bail = False
            for seq in order.values():
                if slots <= 0 or budget <= 0:
                    break
                if seq.prefix_id != -1:
                    bail = True          # a shared prefix: the view must see the cache
                    break
                tokens = seq.tokens
                need = -(-tokens // size)
                if room - need < watermark:
                    break
                if tokens > budget and (admit or budget != max_tokens):
                    break
                admit.append(seq)
                room -= need
                budget -= tokens
                tokens_sum += tokens
                slots -= 1
            if bail:
                break
            if admit:
                if len(admit) == 1:
                    seconds = alone.get(tokens_sum)
                    if seconds is None:
                        seconds = model.prefill_alone_s(tokens_sum)
                else:
                    seconds = model.iteration(
                        decodes=0, decode_context=0,
                        chunks=[(seq.tokens, seq.tokens) for seq in admit],
                        sampled=len(admit), pad_decodes_to=0).stages_s[0]
                end = clock + seconds
                for seq in admit:        # ``_admit``: the prompt's blocks, all at once
                    need = -(-seq.tokens // size)
                    del order[seq.rid]
                    free -= need
                    seq.prefill_start_s = clock
                    seq.state = PREFILLING
                cohort += len(admit)
                if n + len(admit) > max_running:
                    max_running = n + len(admit)
                append((clock, end, 0, tokens_sum, len(admit)))
                if total - free != timeline[-1][1]:
                    timeline.append((clock, total - free))
                busy += seconds
                if not peek > end:       # something else happens first: wait for the end
                    yield env.timeout(end - env.now)
                    peek = env.peek()
                clock = end
                finished = False
                for seq in admit:        # ``_complete``: the prompt is in, its first token out
                    tokens = seq.computed = seq.context = seq.tokens
                    generated = seq.generated = seq.generated + 1
                    emitted += 1
                    _first_token_out(seq, clock, first_token_s)
                    if generated >= seq.output:
                        blocks_held = -(-tokens // size)
                        free += blocks_held
                        freed += blocks_held
                        _finish(seq, clock, out)
                        finished = True
                        continue
                    a = tokens - step        # ``DecodeGroup.add``
                    seq.state = DECODING
                    seq.a = a
                    seq.step_join = step
                    seq.g_join = generated
                    finish_step = seq.finish_step = step + seq.output - generated
                    members[seq.rid] = seq
                    n += 1
                    sum_a += a
                    residue[a % size] += 1
                    pushes += 1
                    heappush(heap, (finish_step, pushes, seq))
                next_finish = heap[0][0] if heap else math.inf
                if finished and total - free != timeline[-1][1]:
                    timeline.append((clock, total - free))
                continue
        # -- idle until the next arrival ------------------------------------------------------
        if not n:
            if order or next_arrival == math.inf:
                break
            if not peek > next_arrival:
                yield env.timeout(next_arrival - env.now)
                peek = env.peek()
            cohort = 0
            clock = next_arrival
            continue
        # -- decode iterations until an arrival or a finish (``decode_run``) ------------------
        if n != seg_n:
            seg_n = n
            key = (n, n)
            fixed = fixed_parts.get(key)
            base = (fixed if fixed is not None else model._fixed(*key))[0][0]
            hi = -1.0                    # the attention segment belongs to the batch
            check = n not in checked
        stop = False
        while clock < next_arrival:
            need = residue[-step % size]
            if need > free:
                stop = True              # eviction or preemption: the full path
                break
            context = (sum_a + n * step + n) / n
            if not lo <= context < hi:
                # ``IterationModel.decode_segment`` (a decode's context is >= 1 token)
                whole = int(context)
                if whole < 64:
                    lo, hi = whole, whole + 1
                else:
                    shift = whole.bit_length() - 5
                    lo = (whole >> shift) << shift
                    hi = lo + (1 << shift)
                t_lo = attention_points.get((n, 1, lo))
                if t_lo is None:
                    t_lo = model._attention_point(n, 1, lo)
                t_hi = attention_points.get((n, 1, hi))
                if t_hi is None:
                    t_hi = model._attention_point(n, 1, hi)
                rise, width = t_hi - t_lo, hi - lo
            attention = t_lo if context <= lo else t_lo + rise * (context - lo) / width
            seconds = base + layers * attention
            if check:
                # Once per batch size: the inline arithmetic must be the model's own (a model
                # whose decode timing is extended turns the fast paths off).
                check = False
                checked.add(n)
                if model.decode_iteration(n, n * step + sum_a + n).stages_s[0] != seconds:
                    engine.steady = False
                    stop = True
                    break
            end = clock + seconds
            if need:
                free -= need
                timeline.append((clock, total - free))
            busy += seconds
            append((clock, end, n, 0, 0))
            if not peek > end:           # something else happens first: wait for the end
                yield env.timeout(end - env.now)
                peek = env.peek()
            clock = end
            emitted += n
            step += 1
            if next_finish <= step:             # ``DecodeGroup.pop_finished``
                while heap and heap[0][0] <= step:
                    finish_step, _, seq = heappop(heap)
                    if seq.state != DECODING or seq.finish_step != finish_step \
                            or members.get(seq.rid) is not seq:
                        continue         # a stale entry of a preempted sequence
                    del members[seq.rid]
                    n -= 1
                    a = seq.a
                    sum_a -= a
                    residue[a % size] -= 1
                    context_tokens = seq.context = a + step
                    seq.generated = seq.g_join + step - seq.step_join
                    blocks_held = -(-context_tokens // size)
                    free += blocks_held
                    freed += blocks_held
                    seq.state = FINISHED         # ``VirtualEngine._finish``
                    rid = seq.rid
                    finish_s[rid] = clock
                    generated_out[rid] = seq.generated
                    if seq.preemptions:
                        out.preemptions[rid] = seq.preemptions
                        out.stall_s[rid] = seq.stall_s
                    status[rid] = 1
                next_finish = heap[0][0] if heap else math.inf
                if total - free != timeline[-1][1]:
                    timeline.append((clock, total - free))
                break                    # a new batch (and maybe room to admit)
        if stop:
            break
    # -- write back -----------------------------------------------------------------------------
    group.n, group.step, group.sum_a, group._pushes = n, step, sum_a, pushes
    blocks.free = free
    blocks.allocated_total += free_at_start - free + freed
    blocks.freed_total += freed
    engine._fed = fed
    engine.emitted += emitted
    engine.cohort, engine.max_running = cohort, max_running
    engine._last_free = free
    engine._last_used = timeline[-1][1]
    if busy:
        engine.pipeline.free_s[0] = engine.iterations[-1][1]
        engine.pipeline.busy_s[0] += busy
    return clock


def _release(seq: Seq, free: int, freed: int, size: int) -> tuple[int, int]:
    """(free, freed) blocks after ``seq`` (plain: no shared prefix) lets go of its KV."""
    held = -(-seq.context // size)
    return free + held, freed + held


def _first_token_out(seq: Seq, now: float, first_token_s) -> None:
    """A prompt's last chunk is in and a token out: a preempted sequence's stall ends, and its
    first token's time is kept (once: a resumed sequence already has one)."""
    if seq.preempted_at_s >= 0:
        seq.stall_s += now - seq.preempted_at_s
        seq.preempted_at_s = -1.0
    if seq.first_token_s < 0:
        seq.first_token_s = now
        first_token_s[seq.rid] = now


def _finish(seq: Seq, now: float, out) -> None:
    """``VirtualEngine._finish`` after the blocks are released (a plain sequence holds no
    prefix; a mixed engine's sequences never wait for or move KV, so those stay 0; fed
    arrivals are open loop, so ``on_done`` has nothing to send)."""
    seq.state = FINISHED
    rid = seq.rid
    out.finish_s[rid] = now
    out.generated[rid] = seq.generated
    if seq.preemptions:
        out.preemptions[rid] = seq.preemptions
        out.stall_s[rid] = seq.stall_s
    out.status[rid] = 1

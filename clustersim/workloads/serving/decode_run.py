"""Back-to-back decode iterations: the engine's fast path when nothing can change its plan.

Between arrivals, finishes and block-boundary crunches, a decode-only engine runs the same
plan ("decode everything") iteration after iteration; only the batch's context grows. This
module runs such a stretch without building a scheduler view or asking the policy, with the
very arithmetic of ``VirtualEngine.run`` (the test compares both to the bit), so that
low-load runs, made of many short iterations, cost little per iteration.

``decode_run(engine, clock)`` is a function of a ``VirtualEngine`` (``engine``) so that the engine
module stays readable; it touches the engine's decode group, block manager, records and clock.
For each new batch size it checks its arithmetic against ``model.decode_iteration``
and, should they ever differ (a model extended with another decode cost), turns itself off
for that engine (``engine.steady``), so the main loop times every iteration.
"""

from __future__ import annotations

import math


def decode_run(engine, clock: float) -> float:
    """Decode-only iterations back to back, while nothing can change the plan: no request
    waiting, prefilling, swapped or arriving, no other event due, and the new blocks free
    without eviction. The same arithmetic as the loop in ``run`` (so the same times to the
    last bit), without building a view or asking the policy; it stops where the loop must
    take over, and returns the clock there. Per iteration: a block count, the cached
    attention segment of the mean context, the finish-heap head, two appends. Nothing can
    join the queue meanwhile: arrivals come at ``next_arrival`` or as simpy events (which
    ``peek`` sees), and a finishing closed-loop user's next request is an event too."""
    if engine.queue or engine.incoming or engine.prefilling or engine.swapped:
        return clock
    env, group, blocks, model = engine.env, engine.group, engine.blocks, engine.model
    iterations, timeline, heap = engine.iterations, engine.kv_timeline, group._heap
    residue, size, layers = group.residue, group.block_size, model.layers_per_stage
    fed, feed = engine._fed, engine._feed
    next_arrival = feed[0][fed] if feed is not None and fed < len(feed[0]) else math.inf
    peek = env.peek()
    total = blocks.total
    free = blocks.free                      # a local copy, written back wherever it is read
    n = step = sum_a = emitted = 0
    check, checked = False, engine.checked_batches
    base = lo = hi = t_lo = t_hi = busy = 0.0
    fixed_parts, append = model._fixed_parts, iterations.append
    while clock < next_arrival:
        if group.n != n:
            n, sum_a, step = group.n, group.sum_a, group.step
            if not n:
                break
            key = (n, n)
            fixed = fixed_parts.get(key)
            base = (fixed if fixed is not None else model._fixed(*key))[0][0]
            hi = -1.0                       # the attention segment belongs to the batch
            check = n not in checked
        need = residue[-step % size]
        if need > free:
            break                           # eviction or preemption: the full path
        context = (sum_a + n * step + n) / n
        if not lo <= context < hi:
            lo, hi, t_lo, t_hi = model.decode_segment(n, context)
        attention = t_lo if context <= lo else t_lo + (t_hi - t_lo) * (context - lo) / (hi - lo)
        seconds = base + layers * attention
        if check:
            # Once per batch size: the inline arithmetic must be the model's own. A model whose
            # decode timing is extended (another device, an offload split) turns this off.
            check = False
            checked.add(n)
            blocks.free = free
            if model.decode_iteration(n, n * step + sum_a + n).stages_s[0] != seconds:
                engine.steady = False
                break
        end = clock + seconds
        if not peek > end:
            break                           # something else happens first: yield for it
        if need:
            free -= need
            blocks.allocated_total += need
            timeline.append((clock, total - free))
        busy += seconds
        append((clock, end, n, 0, 0))
        clock = end
        emitted += n
        step += 1
        if heap and heap[0][0] <= step:
            group.step = step
            blocks.free = free
            for seq in group.pop_finished():
                engine._finish(seq, clock)
            free = blocks.free
            if total - free != timeline[-1][1]:
                timeline.append((clock, total - free))
            peek = env.peek()               # a closed-loop user may have sent another
            if engine.role == "decode":       # freed blocks may admit waiting KV
                if engine.handoff.waiting[engine.index]:
                    engine.handoff.admit(engine, clock)
                free = blocks.free
                break
    blocks.free = free
    group.step = step if n else group.step
    engine.emitted += emitted
    engine._last_free = blocks.free
    engine._last_used = timeline[-1][1]
    if busy:
        engine.pipeline.free_s[0] = clock
        engine.pipeline.busy_s[0] += busy
    return clock

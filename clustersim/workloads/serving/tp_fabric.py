"""Tensor-parallel all-reduces of serving iterations as flows on the shared fabric.

By default an iteration's TP collectives are timed in closed form on an idle fabric (the
alpha-beta cost of their flow steps, ``iteration.fabric_timing``). With
``tp_collectives: fabric`` an engine runs each iteration as its compute, then one all-reduce of
all its layers' all-reduce bytes as flows on the simulation's fabric, so that it contends with
KV transfers and other replicas' traffic. On an idle fabric the two agree exactly: the
all-reduce's idle time is affine in its size (intercept + bytes x seconds per byte), so the
merged all-reduce takes the bytes' share of all of them, and the other collectives' intercepts
(step and path latencies) are waited for apart. Fidelity: event-level (fluid flows).
"""

from __future__ import annotations


def run_on_fabric(engine, clock: float, seconds: float, tokens: int):
    """Run an iteration of ``seconds`` (timed with its all-reduces on an idle fabric) with
    the layers' all-reduces as flows on the shared fabric instead: the compute, then one
    all-reduce of all their bytes (on an idle fabric it takes what they take together but
    the per-collective latency, which is waited for apart). Returns when it ends."""
    env = engine.env
    intercept_s, per_byte_s, steps = engine.fabric_collectives
    count, layer_bytes = engine.model.layer_all_reduces(tokens)
    count *= engine.model.layers_per_stage
    total = layer_bytes * engine.model.layers_per_stage
    if clock > env.now:
        yield env.timeout(clock - env.now)
    if not count:
        yield env.timeout(seconds)
        return env.now
    compute = max(0.0, seconds - count * intercept_s - per_byte_s * total)
    yield env.timeout(compute + (count - 1) * intercept_s)
    fabric = engine.sim.fabric
    for step in steps(total):
        for _ in range(step.repeat):
            if step.latency_s:
                yield env.timeout(step.latency_s)
            yield fabric.coflow(step.pairs, step.bytes_per_flow)
    return env.now

"""Serving simulator speed: simulated requests per wall-clock second, and how cost grows.

Workload: LLaMA-2-70B, one TP=4 replica on a DGX H100, continuous batching (vLLM's scheduler),
Poisson arrivals below saturation, ShareGPT-like lengths (prompt lognormal mean 600, output
lognormal mean 250). For each request count the benchmark times:

* ``clustersim``: the serving workload end to end (request generation, the simpy run, metrics);
* ``per-request loop``: a reference simulator of the same scheduler in the design Vidur uses (a
  pure-Python heap of events, one prediction per batch from the same cached iteration model, and
  per-request bookkeeping in every iteration: each running request's context, block need and
  completion checked one by one). It is our re-implementation of that design, not Vidur itself,
  and doubles as a cross-check: both must give the same finish time for every request.

Both run in this process, so their ratio is meaningful on a noisy machine; absolute rates are not.

    python benchmarks/serving.py [--counts 1000 3000 10000 30000] [--rate 10] [--repeats 1]
    python benchmarks/serving.py --trace-shaped [--trace-count 19366] [--trace-rate 5.4]

``--trace-shaped`` runs the low-load case instead: the shape of the Azure LLM inference
conversation and code traces published with Splitwise (Patel et al., ISCA '24: conversation
prompts of median ~1020 tokens and outputs of median ~129; code prompts of median ~1500 and
outputs of median ~13; the conversation trace has 19,366 requests in an hour, 5.4 req/s),
drawn as lognormals with those medians (sigma 1, our choice), written in the trace's own CSV
format and read back through the Azure reader, so reading is timed too. At this load a decode
batch is a few dozen sequences and a request spans few iterations' worth of batch, so the cost
per iteration and per request both show. It reports wall time, simulated requests per second,
the process's CPU time (on a shared machine, steadier than the wall time), the wall time of a
warm run (the same trace again, best of ``--repeats``), and the per-request cost at the margin
from the warm runs of two sizes. The iteration model's op lists and caches are kept for the
process (``iteration._layer_ops``, ``_attention_op``, ``iteration_cache``), so the smaller size
warms them for the larger one, as in a sweep; a single cold run pays about 0.5 s of misses.
"""

from __future__ import annotations

import argparse
import heapq
import time
from collections import deque

import numpy as np

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.sim.engine import Simulation
from clustersim.workloads.serving.iteration import IterationModel, fabric_timing
from clustersim.workloads.serving.metrics import summarise
from clustersim.workloads.serving.workload import ServingWorkload


def workload(count: int, rate: float, **overrides) -> ServingWorkload:
    spec = {"model": "llama2-70b", "parallel": {"tp": 4},
            "scheduler": {"policy": "continuous"},
            "requests": {"count": count, "arrival": {"kind": "poisson", "rate": rate},
                         "prompt_tokens": {"kind": "lognormal", "mean": 600, "sigma": 0.9,
                                           "max": 3000},
                         "output_tokens": {"kind": "lognormal", "mean": 250, "sigma": 0.9,
                                           "max": 1000}}}
    spec.update(overrides)
    if "trace" in spec["requests"]:
        spec["requests"] = {"trace": spec["requests"]["trace"]}
    return ServingWorkload.model_validate(spec)


def iteration_model(work: ServingWorkload, cluster) -> IterationModel:
    """The same iteration model the deployment builds for replica 0."""
    setup = work.setup(cluster, np.random.default_rng(0))
    sim = Simulation(**cluster.simulation_kwargs(), record_trace=False)
    devices = list(range(setup.tp * setup.pp))
    collective_s, send_s = fabric_timing(cluster, sim.fabric, devices[:setup.tp], [devices[0]])
    return IterationModel(setup.model, cluster.devices[0], tp=setup.tp, pp=setup.pp,
                          dtype=setup.dtype, kv_dtype=setup.kv_dtype, collective_s=collective_s,
                          send_s=send_s, overhead_s=setup.iteration_overhead_s)


class _Request:
    __slots__ = ("rid", "prompt", "output", "tokens", "context", "generated", "finish_s")

    def __init__(self, rid, prompt, output):
        self.rid, self.prompt, self.output = rid, prompt, output
        self.tokens, self.context, self.generated, self.finish_s = prompt, 0, 0, None


def per_request_loop(arrival_s, prompt, output, model: IterationModel, *, total_blocks: int,
                     block_size: int = 16, watermark: float = 0.01, max_num_seqs: int = 256,
                     max_batched_tokens: int = 4096) -> np.ndarray:
    """vLLM's default scheduler (prefill first, LIFO recompute preemption) as a heap-of-events
    loop with per-request bookkeeping each iteration. Returns each request's finish time."""
    mark = int(watermark * total_blocks)
    free = total_blocks
    events: list[tuple[float, int, int, object]] = []
    order = 0
    for rid, t in enumerate(arrival_s):
        events.append((float(t), order, 0, _Request(rid, int(prompt[rid]), int(output[rid]))))
        order += 1
    heapq.heapify(events)
    waiting: deque[_Request] = deque()
    running: list[_Request] = []
    finish = np.full(len(arrival_s), np.nan)
    busy = False

    def blocks(tokens):
        return -(-tokens // block_size)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == 0:
            waiting.append(payload)
        else:
            busy = False
            batch_kind, batch = payload
            if batch_kind == "decode":
                still = []
                for request in running:                      # per request, every iteration
                    request.context += 1
                    request.generated += 1
                    if request.generated >= request.output:
                        free += blocks(request.context)
                        finish[request.rid] = now
                    else:
                        still.append(request)
                running = still
            else:
                for request in batch:
                    request.context = request.tokens
                    request.generated += 1
                    if request.generated >= request.output:
                        free += blocks(request.context)
                        finish[request.rid] = now
                    else:
                        running.append(request)
        if busy or (not waiting and not running):
            continue
        admitted, tokens = [], 0
        for request in waiting:
            need = blocks(request.tokens)
            if len(running) + len(admitted) >= max_num_seqs or free - need < mark:
                break
            if tokens + request.tokens > max_batched_tokens and (admitted or tokens):
                break
            admitted.append(request)
            tokens += request.tokens
            free -= need
        if admitted:
            for _ in admitted:
                waiting.popleft()
            timing = model.iteration(chunks=[(r.tokens, r.tokens) for r in admitted])
            heapq.heappush(events, (now + timing.latency_s, order, 1, ("prefill", admitted)))
        else:
            while running:
                need = sum(1 for r in running if r.context % block_size == 0)
                if need <= free:
                    break
                victim = running.pop()                       # the most recently admitted
                free += blocks(victim.context)
                victim.tokens = victim.prompt + victim.generated
                victim.context = 0
                waiting.appendleft(victim)
            free -= sum(1 for r in running if r.context % block_size == 0)
            context = sum(r.context for r in running) + len(running)
            timing = model.decode_iteration(len(running), context)
            heapq.heappush(events, (now + timing.latency_s, order, 1, ("decode", running)))
        order += 1
        busy = True
    return finish


def bench(count: int, rate: float, cluster, repeats: int) -> dict:
    """Best of ``repeats`` for each simulator, the two interleaved (a noisy machine hits both)."""
    work = workload(count, rate)
    best = reference = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = work.simulate(cluster, rng=np.random.default_rng(0))
        metrics = summarise(result, work.slo)
        best = min(best, time.perf_counter() - start)
        engine = result.engines[0]
        requests = result.requests
        model = iteration_model(work, cluster)
        start = time.perf_counter()
        finish = per_request_loop(requests.arrival_s, requests.prompt_tokens,
                                  requests.output_tokens, model,
                                  total_blocks=engine.blocks.total,
                                  max_num_seqs=work.scheduler.max_num_seqs,
                                  max_batched_tokens=work.policy_settings(result.setup.model)[
                                      "max_batched_tokens"])
        reference = min(reference, time.perf_counter() - start)
    same = np.allclose(finish, result.outcome.finish_s, rtol=1e-9, atol=0)
    return {"requests": count, "wall_s": best, "requests_per_s": count / best,
            "iterations": metrics["iterations"], "iterations_per_s": metrics["iterations"] / best,
            "mean_decode_batch": metrics["mean_decode_batch"],
            "preemptions": metrics["preemptions"], "simulated_s": metrics["simulated_s"],
            "reference_s": reference, "speedup": reference / best, "same_finish_times": same}


def write_azure_shaped_trace(path, count: int, rate: float, kind: str, seed: int = 0) -> None:
    """A synthetic trace in the Azure LLM inference trace format (TIMESTAMP, ContextTokens,
    GeneratedTokens) with the published medians of ``kind`` (conv or code)."""
    from datetime import datetime, timedelta

    medians = {"conv": (1020, 129), "code": (1500, 13)}[kind]
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=count)
    prompt = np.clip(np.rint(rng.lognormal(np.log(medians[0]), 1.0, size=count)), 1, 3500)
    output = np.clip(np.rint(rng.lognormal(np.log(medians[1]), 1.0, size=count)), 1, 500)
    start = datetime(2023, 11, 16, 18, 15, 46)
    with open(path, "w") as handle:
        handle.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for gap_s, p, o in zip(np.cumsum(gaps), prompt, output):
            stamp = (start + timedelta(seconds=float(gap_s))).strftime("%Y-%m-%d %H:%M:%S.%f")
            handle.write(f"{stamp}0,{int(p)},{int(o)}\n")


def _timed(work, cluster) -> tuple[float, float, dict]:
    """(wall s, CPU s, metrics) of one run with its metrics."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = work.simulate(cluster, rng=np.random.default_rng(0))
    metrics = summarise(result, work.slo)
    return time.perf_counter() - start, time.process_time() - start_cpu, metrics


def trace_shaped(counts: list[int], rate: float, cluster, repeats: int) -> None:
    import tempfile
    from pathlib import Path

    print(f"Azure-trace-shaped requests at {rate:g} req/s, LLaMA-2-70B TP=4 on H100, continuous")
    print(f"{'trace':>5} {'requests':>9} {'wall s':>7} {'req/s':>8} {'iterations':>10} "
          f"{'batch':>6} {'us/iter':>8} {'us/req':>7} {'cpu s':>6} {'req/cpu-s':>9} "
          f"{'warm s':>7} {'warm req/s':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("conv", "code"):
            rows = []
            for count in counts:
                path = Path(folder) / f"{kind}-{count}.csv"
                write_azure_shaped_trace(path, count, rate, kind)
                work = workload(count, rate, requests={"trace": str(path)})
                # The first run pays for the token buckets the process has not met yet; the
                # warm ones (the same trace again, as in a sweep) only for the simulation.
                wall, cpu, metrics = _timed(work, cluster)
                warm = min(_timed(work, cluster)[0] for _ in range(max(repeats, 1)))
                rows.append((count, wall, metrics["iterations"], metrics["mean_decode_batch"],
                             cpu, warm))
            # wall = fixed + a x iterations + b x requests, from the sizes' differences when
            # the iterations per request stay the same (same shape): per-request cost with its
            # iterations, from warm runs (a first run's cost also depends on what ran before).
            (n0, _, i0, _, _, w0), (n1, _, i1, _, _, w1) = rows[0], rows[-1]
            per_request = (w1 - w0) / max(n1 - n0, 1)
            for count, wall, iterations, batch, cpu, warm in rows:
                print(f"{kind:>5} {count:>9,} {wall:>7.2f} {count / wall:>8,.0f} "
                      f"{iterations:>10,} {batch:>6.1f} {1e6 * wall / iterations:>8.2f} "
                      f"{1e6 * wall / count:>7.1f} {cpu:>6.2f} {count / cpu:>9,.0f} "
                      f"{warm:>7.2f} {count / warm:>10,.0f}")
            print(f"{kind:>5} marginal cost (warm): {1e6 * per_request:.1f} us per request "
                  f"({(i1 - i0) / max(n1 - n0, 1):.1f} iterations each), "
                  f"{1e6 * w1 / i1:.2f} us per iteration over the run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="*", default=[1000, 3000, 10000, 30000])
    parser.add_argument("--rate", type=float, default=10.0, help="arrivals per second")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trace-shaped", action="store_true",
                        help="the low-load case on Azure-trace-shaped requests instead")
    parser.add_argument("--trace-counts", type=int, nargs="*", default=[4000, 19366])
    parser.add_argument("--trace-rate", type=float, default=5.4)
    args = parser.parse_args()
    cluster = ClusterConfig(node="DGX-H100").build()
    workload(10, args.rate).simulate(cluster, rng=np.random.default_rng(0))  # warm imports
    if args.trace_shaped:
        trace_shaped(args.trace_counts, args.trace_rate, cluster, args.repeats)
        return
    print(f"LLaMA-2-70B TP=4 on H100, continuous batching, Poisson {args.rate:g} req/s")
    print(f"{'requests':>9} {'wall s':>8} {'req/s':>9} {'iterations':>10} {'iter/s':>9} "
          f"{'batch':>6} {'preempt':>7} {'sim s':>8} {'ref wall s':>10} {'speedup':>7} same")
    for count in args.counts:
        row = bench(count, args.rate, cluster, args.repeats)
        print(f"{row['requests']:>9} {row['wall_s']:>8.2f} {row['requests_per_s']:>9,.0f} "
              f"{row['iterations']:>10,} {row['iterations_per_s']:>9,.0f} "
              f"{row['mean_decode_batch']:>6.1f} {row['preemptions']:>7} "
              f"{row['simulated_s']:>8.0f} {row['reference_s']:>10.2f} {row['speedup']:>6.1f}x "
              f"{row['same_finish_times']}")


if __name__ == "__main__":
    main()

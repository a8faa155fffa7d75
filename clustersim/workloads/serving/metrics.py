"""Serving metrics from a ``ServingResult``: latency percentiles, throughput, goodput, KV use.

Definitions (as vLLM's and DistServe's benchmarks use them):

* TTFT: first token time - arrival; TPOT: (finish - first token) / (output tokens - 1), for
  requests with more than one output token; end-to-end latency: finish - arrival;
* throughput: output tokens (and all tokens) per second between the first arrival and the last
  finish; goodput: finished requests per second that met every SLO;
* preemption stall: for a preempted request, the time from each preemption to its next token
  (waiting to be re-admitted and recomputing its context, or waiting for blocks and swapping
  back), summed; reported as a mean over preempted requests and as a share of all end-to-end
  latency;
* KV use: blocks in use (held by sequences or cached prefixes) over the engines' capacity, as a
  time-weighted mean and a peak.

Rejected requests count in ``rejected`` (and against SLO attainment), never in latencies.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from clustersim.workloads.serving.config import SLOConfig


def request_table(result) -> pd.DataFrame:
    """One row per request: lengths, times, latencies, preemptions and status."""
    req, out = result.requests, result.outcome
    status = np.where(out.status == 1, "finished", np.where(out.status == 2, "rejected", "pending"))
    arrival = np.asarray(req.arrival_s, dtype=float)
    tpot = np.where(req.output_tokens > 1,
                    (out.finish_s - out.first_token_s) / np.maximum(req.output_tokens - 1, 1),
                    np.nan)
    table = pd.DataFrame({
        "arrival_s": arrival, "prompt_tokens": req.prompt_tokens,
        "output_tokens": req.output_tokens, "prefix_id": req.prefix_id,
        "first_token_s": out.first_token_s, "finish_s": out.finish_s,
        "ttft_s": out.first_token_s - arrival, "tpot_s": tpot,
        "e2e_s": np.where(out.status == 1, out.finish_s - arrival, np.nan),
        "generated_tokens": out.generated, "preemptions": out.preemptions,
        "preemption_stall_s": out.stall_s, "kv_wait_s": out.kv_wait_s,
        "kv_transfer_s": out.kv_transfer_s,
        "engine": out.engine, "status": status})
    table["reason"] = pd.Series(out.reasons, dtype=object).reindex(table.index)
    table.index.name = "request"
    return table


def replica_load(result) -> pd.DataFrame:
    """The load each replica saw over time: one row per routed request, with the time, the
    replica and its outstanding requests (queued, running or arriving) once it joined."""
    samples = result.router.samples if result.router is not None else []
    return pd.DataFrame(samples, columns=["time_s", "replica", "outstanding"])


def router_metrics(result) -> dict[str, Any]:
    """How evenly the router spread the requests, and (prefix_aware) how many it sent where
    their prefix was cached."""
    replicas = len(result.router.replicas) if result.router is not None else 1
    if replicas < 2:
        return {}
    load = replica_load(result)
    if load.empty:
        return {}
    entry = [engines[0].placement.index for engines in result.router.replicas]
    counts = load["replica"].value_counts().reindex(entry, fill_value=0)
    per_replica = load.groupby("replica")["outstanding"].mean()
    return {"router_requests_max_over_mean": float(counts.max() / counts.mean()),
            "router_outstanding_mean": float(load["outstanding"].mean()),
            "router_outstanding_max_replica_mean": float(per_replica.max()),
            "router_to_cached_prefix": int(result.router.routed_to_cache)}


def _percentiles(values: np.ndarray, name: str) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return {f"{name}_{p}_s": float("nan") for p in ("mean", "p50", "p90", "p99")}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {f"{name}_mean_s": float(values.mean()), f"{name}_p50_s": float(p50),
            f"{name}_p90_s": float(p90), f"{name}_p99_s": float(p99)}


def kv_usage(engine, end_s: float) -> tuple[float, int]:
    """Time-weighted mean and peak of blocks in use on one engine over [0, end_s]."""
    timeline = engine.kv_timeline
    pairs = np.fromiter(itertools.chain.from_iterable(timeline), float,
                        2 * len(timeline)).reshape(-1, 2)
    times = np.append(pairs[:, 0], end_s)
    used = pairs[:, 1]
    span = end_s - times[0]
    mean = float((used * np.diff(times)).sum() / span) if span > 0 else float(used[-1])
    return mean, int(used.max())


def iteration_table(engines) -> np.ndarray:
    """Every engine's iterations as rows of (start_s, end_s, decodes, prefill tokens, chunks),
    read in one pass (the counts are exact as floats)."""
    rows = sum(len(e.iterations) for e in engines)
    flat = itertools.chain.from_iterable(it for e in engines for it in e.iterations)
    return np.fromiter(flat, float, 5 * rows).reshape(rows, 5)


def summarise(result, slo: SLOConfig) -> dict[str, Any]:
    setup, out, req = result.setup, result.outcome, result.requests
    table = request_table(result)
    done = table["status"] == "finished"
    n = len(table)
    finished = table[done]
    metrics: dict[str, Any] = {
        "model": setup.model.name, "policy": setup.policy, "tp": setup.tp, "pp": setup.pp,
        "replicas": setup.replicas, "requests": n, "finished": int(done.sum()),
        "rejected": int((table["status"] == "rejected").sum()),
    }
    metrics.update(_percentiles(finished["ttft_s"].to_numpy(), "ttft"))
    metrics.update(_percentiles(finished["tpot_s"].to_numpy(), "tpot"))
    metrics.update(_percentiles(finished["e2e_s"].to_numpy(), "e2e"))
    start = float(np.nanmin(req.arrival_s)) if n else 0.0
    end = float(np.nanmax(out.finish_s)) if done.any() else start
    duration = max(end - start, 1e-12)
    output_tokens = int(finished["output_tokens"].sum())
    ok = (finished["ttft_s"] <= slo.ttft) & ~(finished["tpot_s"] > slo.tpot)
    if slo.e2e is not None:
        ok &= finished["e2e_s"] <= slo.e2e
    metrics.update({
        "duration_s": duration,
        "throughput_tokens_per_s": output_tokens / duration,
        "total_tokens_per_s": (output_tokens + int(finished["prompt_tokens"].sum())) / duration,
        "requests_per_s": int(done.sum()) / duration,
        "goodput_requests_per_s": int(ok.sum()) / duration,
        "slo_attainment": int(ok.sum()) / n if n else float("nan"),
        "goodput_requests_per_s_per_gpu": int(ok.sum()) / duration
        / sum(pool.gpus for pool in setup.resolved_pools()),
    })
    engines = result.engines
    layout = setup.layout
    mean_length = float(np.mean(req.prompt_tokens + req.output_tokens - 1)) if n else 1.0
    per_request = max(1, math.ceil(mean_length / layout.block_size))
    means, peaks = zip(*(kv_usage(e, result.makespan_s) for e in engines))
    capacity = sum(e.blocks.total for e in engines)
    table_of_iterations = iteration_table(engines)
    decodes = table_of_iterations[:, 2]
    tokens = decodes + table_of_iterations[:, 3]
    metrics.update({
        "kv_bytes_per_token": layout.bytes_per_token,
        "kv_blocks": capacity,
        "kv_capacity_tokens": capacity * layout.block_size,
        # Requests of the mean length (prompt + output) whose KV fits at once.
        "kv_fit_requests": int(sum(e.blocks.total // per_request for e in engines)),
        "kv_gib_per_gpu": layout.kv_bytes_per_gpu / 2**30,
        "weights_gib_per_gpu": layout.weight_bytes_per_gpu / 2**30,
        "kv_use_mean": sum(means) / capacity,
        "kv_use_peak": max(p / e.blocks.total for p, e in zip(peaks, engines)),
        "max_running": max(e.max_running for e in engines),
        "preemptions": int(sum(e.preemptions for e in engines)),
        "preempted_requests": int((table["preemptions"] > 0).sum()),
        # The latency preemption adds: from each preemption to the request's next token.
        "preemption_stall_mean_s": float(finished.loc[finished["preemptions"] > 0,
                                                      "preemption_stall_s"].mean())
        if (finished["preemptions"] > 0).any() else 0.0,
        "preemption_stall_share_of_e2e": float(finished["preemption_stall_s"].sum()
                                               / max(finished["e2e_s"].sum(), 1e-300)),
        "recomputed_tokens": int(sum(e.recomputed_tokens for e in engines)),
        "swapped_out_bytes": float(sum(e.swapped_out_blocks for e in engines)
                                   * layout.block_bytes_per_gpu * setup.tp * setup.pp),
        "swapped_in_bytes": float(sum(e.swapped_in_blocks for e in engines)
                                  * layout.block_bytes_per_gpu * setup.tp * setup.pp),
        "swap_time_s": float(sum(e.swap_time_s for e in engines)),
        "prefix_hit_tokens": int(sum(e.prefix_hit_tokens for e in engines)),
        "iterations": len(decodes),
        "mean_decode_batch": float(decodes[decodes > 0].mean()) if (decodes > 0).any() else 0.0,
        "mean_tokens_per_iteration": float(tokens.mean()) if len(tokens) else 0.0,
        "max_tokens_per_iteration": int(tokens.max()) if len(tokens) else 0,
        "simulated_s": result.makespan_s,
    })
    if setup.pp > 1:
        busy = np.array([sum(p.busy_s) for p in result.pipelines])
        metrics["pipeline_bubble_fraction"] = float(
            1 - busy.sum() / (setup.pp * len(result.pipelines) * result.makespan_s))
    metrics.update(pool_metrics(result, finished, duration))
    metrics.update(router_metrics(result))
    return metrics


def pool_metrics(result, finished: pd.DataFrame, duration_s: float) -> dict[str, Any]:
    """GPUs and goodput per GPU (DistServe's measure: SLO-meeting requests per second per GPU;
    a sweep's largest rate with ``slo_attainment`` >= 90 % over GPUs is its per-GPU goodput),
    the KV transfer's share of TTFT (disaggregated), and per pool: GPUs, busy fraction of its
    GPUs' first stage, KV use and tokens per iteration."""
    pools = result.setup.resolved_pools()
    gpus = sum(pool.gpus for pool in pools)
    ttft = finished["ttft_s"].to_numpy()
    transfer = finished["kv_transfer_s"].to_numpy()
    wait = finished["kv_wait_s"].to_numpy()
    metrics: dict[str, Any] = {"gpus": gpus}
    if any(pool.role == "decode" for pool in pools):
        metrics.update({
            "kv_transfer_mean_s": float(transfer.mean()) if len(transfer) else 0.0,
            "kv_wait_mean_s": float(wait.mean()) if len(wait) else 0.0,
            "kv_transfer_share_of_ttft": float(transfer.sum() / max(ttft.sum(), 1e-300)),
        })
    if len(pools) == 1:
        return metrics
    makespan = result.makespan_s
    for pool in pools:
        engines = [e for e in result.engines if e.pool == pool.name]
        replicas = sorted({e.placement.index for e in engines})
        busy = sum(result.pipelines[r].busy_s[0] for r in replicas)
        iterations = [it for e in engines for it in e.iterations]
        tokens = [it[2] + it[3] for it in iterations]
        means = [kv_usage(e, makespan)[0] for e in engines]
        metrics.update({
            f"{pool.name}_gpus": pool.gpus,
            f"{pool.name}_busy_fraction": busy / max(len(replicas) * makespan, 1e-300),
            f"{pool.name}_kv_use_mean": sum(means) / sum(e.blocks.total for e in engines),
            f"{pool.name}_mean_tokens_per_iteration": float(np.mean(tokens)) if tokens else 0.0,
        })
    return metrics

"""Runs the suite on the local device: rounds over shuffled cases, plus the device-wide figures.

Each round visits every case in a new random order and times a few calls of it, so a case's
samples are spread over the whole run (see ``timing``). Also measured here: the per-op launch
overhead (a one-element add), the STREAM-like copy bandwidth (a copy many times the cache), and
on a GPU the host-device copy rates and, with two GPUs or more, all-reduce (``collectives``).
Imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from clustersim.validate.cases import Case
from clustersim.validate.kernels import BufferPool, kernel
from clustersim.validate.local_device import LocalDevice
from clustersim.validate.timing import CaseTimer, CPUClock, CUDAClock, TimingPlan, TimingStats

# progress(stage, done, total): the CLI draws a bar from it; the library never prints.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Measurement:
    case: Case
    stats: TimingStats


def clock_for(local: LocalDevice):
    return CUDAClock(local.torch_device) if local.kind == "cuda" else CPUClock()


def measure_cases(local: LocalDevice, cases: list[Case], plan: TimingPlan, *, seed: int = 0,
                  progress: Progress | None = None, stage: str = "timing kernels"
                  ) -> list[Measurement]:
    clock = clock_for(local)
    pool = BufferPool(local.torch_device, local.cache_bytes, seed)
    timers = {case.key: CaseTimer(kernel(case, pool), clock, plan) for case in cases}
    rng = np.random.default_rng(seed)
    total, done = plan.rounds * len(cases), 0
    with torch.inference_mode():
        for _ in range(plan.rounds):
            for index in rng.permutation(len(cases)):
                timers[cases[index].key].round()
                done += 1
                if progress is not None:
                    progress(stage, done, total)
    return [Measurement(case, timers[case.key].stats()) for case in cases]


def measure_launch_overhead(local: LocalDevice, plan: TimingPlan) -> TimingStats:
    """Launch-to-completion time of an op that does no work: a one-element add."""
    a = torch.ones(1, device=local.torch_device)
    b = torch.ones(1, device=local.torch_device)
    timer = CaseTimer(lambda i: torch.add(a, b), clock_for(local),
                      TimingPlan(rounds=1, warmup=20, target_s=0.0, min_repeats=200,
                                 max_repeats=200))
    with torch.inference_mode():
        timer.round()
    return timer.stats()


def measure_memory_bandwidth(local: LocalDevice, quick: bool) -> dict[str, float]:
    """STREAM-like bandwidths of a buffer >= 8x the cache, in bytes/s: ``copy`` (bytes read +
    written, STREAM's convention) and ``read`` (a sum over the buffer). As STREAM does, each
    kernel's rate is its best trial (a neighbour's burst of memory traffic only ever slows a
    trial), and ``model`` is the better kernel's: the rate the memory delivers to these cores.
    Median rates are kept beside."""
    size_bytes = int(max(8 * local.cache_bytes, (128 if quick else 512) * 2**20))
    if local.kind == "cpu":
        size_bytes = min(size_bytes, 1 << 30)
    numel = size_bytes // 4
    src = torch.randn(numel, device=local.torch_device)
    dst = torch.empty_like(src)
    plan = TimingPlan(rounds=1, warmup=1, target_s=0.0, min_repeats=10 if quick else 20,
                      max_repeats=20)
    result: dict[str, float] = {"size_bytes": float(numel * 4)}
    timers = {}
    with torch.inference_mode():
        for name, run in (("copy", lambda i: dst.copy_(src)), ("read", lambda i: src.sum())):
            timers[name] = CaseTimer(run, clock_for(local), plan)
            timers[name].round()
    for name, moved in (("copy", 2 * numel * 4), ("read", numel * 4)):
        stats = timers[name].stats()
        result[f"{name}_bytes_per_s"] = moved / stats.min_s
        result[f"{name}_median_bytes_per_s"] = moved / stats.median_s
    result["model_bytes_per_s"] = max(result["copy_bytes_per_s"], result["read_bytes_per_s"])
    return result


def measure_fresh_pages(local: LocalDevice, threshold_bytes: float) -> dict[str, float]:
    """How fast a CPU output that malloc maps fresh (above its mmap threshold) is first touched:
    bytes / (time of a copy into a new tensor - time of the same copy into an existing one),
    each the best of nine trials."""
    numel = int(2 * threshold_bytes) // 4
    src = torch.randn(numel)
    dst = torch.empty_like(src).fill_(1.0)
    plan = TimingPlan(rounds=1, warmup=2, target_s=0.0, min_repeats=9, max_repeats=9)
    clock = clock_for(local)
    stats = {}
    with torch.inference_mode():
        for name, run in (("existing", lambda i: dst.copy_(src)),
                          ("fresh", lambda i: torch.empty_like(src).copy_(src))):
            timer = CaseTimer(run, clock, plan)
            timer.round()
            stats[name] = timer.stats().min_s
    extra = stats["fresh"] - stats["existing"]
    return {"size_bytes": float(numel * 4), "existing_copy_s": stats["existing"],
            "fresh_copy_s": stats["fresh"],
            "fresh_page_bandwidth_bytes_per_s": numel * 4 / extra if extra > 0 else float("inf")}


def measure_host_copies(local: LocalDevice, quick: bool) -> dict[str, float]:
    """Pinned host <-> device copy bandwidth per direction, bytes/s (GPU only)."""
    numel = (64 if quick else 256) * 2**20 // 4
    host = torch.randn(numel).pin_memory()
    dev = torch.empty(numel, device=local.torch_device)
    clock, result = clock_for(local), {}
    plan = TimingPlan(rounds=1, warmup=2, target_s=0.2, min_repeats=5, max_repeats=20)
    for name, run in (("host_to_device", lambda i: dev.copy_(host, non_blocking=True)),
                      ("device_to_host", lambda i: host.copy_(dev, non_blocking=True))):
        timer = CaseTimer(run, clock, plan)
        timer.round()
        result[f"{name}_bytes_per_s"] = numel * 4 / timer.stats().median_s
    result["size_bytes"] = numel * 4
    return result

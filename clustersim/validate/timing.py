"""Timing kernels properly: warm-up, a clock that waits for the device, many repeats, spread kept.

* CPU: ``time.perf_counter`` around each call (CPU ops are synchronous).
* CUDA: ``torch.cuda.synchronize()`` before each call, so the GPU is idle and the time runs from
  launch to completion as ``Device.op_time`` means it, then a pair of ``torch.cuda.Event`` around
  the call; events are read after one synchronise at the end of the batch.

A kernel is a callable ``run(i)`` that executes the op on buffer set ``i`` (the caller rotates
buffers so that repeats do not find their inputs in the cache). Each case's samples come from
several rounds spread over the whole run, so a burst of load from other processes on a shared
machine hits few samples of any one case; the median of all samples is the measurement.
torch is imported only inside the CUDA clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


@dataclass(frozen=True)
class TimingStats:
    """Summary of one case's samples, in seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> "TimingStats":
        if not samples:
            raise ValueError("no timing samples")
        ordered = sorted(samples)
        return cls(_quantile(ordered, 0.5), _quantile(ordered, 0.1), _quantile(ordered, 0.9),
                   ordered[0], len(ordered))

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the samples."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else math.inf


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Clock(Protocol):
    def time_calls(self, run: Callable[[int], object], starts: int, count: int) -> list[float]:
        """Seconds of ``run(starts + j)`` for j in range(count), each timed alone."""


class CPUClock:
    def time_calls(self, run: Callable[[int], object], starts: int, count: int) -> list[float]:
        samples = []
        clock = time.perf_counter
        for j in range(count):
            t0 = clock()
            run(starts + j)
            samples.append(clock() - t0)
        return samples


class CUDAClock:
    def __init__(self, device: object):
        import torch

        self.torch, self.device = torch, device

    def time_calls(self, run: Callable[[int], object], starts: int, count: int) -> list[float]:
        cuda = self.torch.cuda
        pairs = []
        for j in range(count):
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            cuda.synchronize(self.device)
            start.record()
            run(starts + j)
            end.record()
            pairs.append((start, end))
        cuda.synchronize(self.device)
        return [start.elapsed_time(end) / 1e3 for start, end in pairs]


@dataclass(frozen=True)
class TimingPlan:
    """How much to time each case: per round, ``target_s`` of calls within [min, max] repeats."""

    rounds: int = 3
    warmup: int = 2
    target_s: float = 0.05
    min_repeats: int = 5
    max_repeats: int = 50

    def repeats_for(self, estimate_s: float) -> int:
        if estimate_s <= 0:
            return self.max_repeats
        return int(min(self.max_repeats, max(self.min_repeats, round(self.target_s / estimate_s))))

    def as_dict(self) -> dict[str, object]:
        return {"rounds": self.rounds, "warmup_calls": self.warmup, "target_s_per_round":
                self.target_s, "min_repeats_per_round": self.min_repeats,
                "max_repeats_per_round": self.max_repeats, "statistic": "median of all samples"}


QUICK_PLAN = TimingPlan(rounds=2, warmup=1, target_s=0.02, min_repeats=3, max_repeats=15)
FULL_PLAN = TimingPlan(rounds=4, warmup=2, target_s=0.06, min_repeats=5, max_repeats=60)


class CaseTimer:
    """Accumulates one case's samples over rounds; the first call of a round warms up."""

    def __init__(self, run: Callable[[int], object], clock: Clock, plan: TimingPlan):
        self.run, self.clock, self.plan = run, clock, plan
        self.samples: list[float] = []
        self.calls = 0
        self.estimate_s: float | None = None

    def round(self) -> None:
        warmup = self.plan.warmup if self.estimate_s is None else 1
        warm = self.clock.time_calls(self.run, self.calls, warmup)
        self.calls += warmup
        estimate = min(warm) if self.estimate_s is None else self.estimate_s
        self.estimate_s = estimate
        count = self.plan.repeats_for(estimate)
        self.samples += self.clock.time_calls(self.run, self.calls, count)
        self.calls += count

    def stats(self) -> TimingStats:
        return TimingStats.from_samples(self.samples)

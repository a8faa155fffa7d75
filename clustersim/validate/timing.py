"""Timing kernels properly: warm-up, a clock that waits for the device, many repeats, spread kept.

* CPU: ``time.perf_counter`` around each call (CPU ops are synchronous), and the calling
  thread's CPU time (``time.thread_time``) around that: a call whose wall time exceeds its CPU
  time by more than 5% + 5 us was preempted by another process (the thread waited off-CPU) and
  its sample is set aside. The statistic is taken over the clean samples when at least three of
  a case's are clean, else over all (and the share set aside is kept with the record). This is
  what makes a median on a machine shared with other processes a property of the device: with
  one torch thread, on a 2-core VM where someone else's tests ran, the p90 of a 4 ms attention
  kernel was 8.0 ms by wall clock and 4.6 ms by thread CPU time. (Host steal time on a VM is
  counted as CPU time by the guest, so it cannot be filtered this way.)
* CUDA: ``torch.cuda.synchronize()`` before each call, so the GPU is idle and the time runs from
  launch to completion as ``Device.op_time`` means it, then a pair of ``torch.cuda.Event`` around
  the call; events are read after one synchronise at the end of the batch.

A kernel is a callable ``run(i)`` that executes the op on buffer set ``i`` (the caller rotates
buffers so that repeats do not find their inputs in the cache). Each case's samples come from
several rounds spread over the whole run, so a burst of load from other processes on a shared
machine hits few samples of any one case. A case's record keeps median, p10, p90, min, the
number of samples and the share set aside; which statistic is "the" measurement is the plan's
(``TimingPlan.statistic``; ``commands.DEFAULT_STATISTIC`` says which and why).
torch is imported only inside the CUDA clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence


STATISTICS = ("median", "p10", "min")


@dataclass(frozen=True)
class TimingStats:
    """Summary of one case's samples, in seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    repeats: int
    preempted: float = 0.0          # share of samples set aside as interrupted

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> "TimingStats":
        if not samples:
            raise ValueError("no timing samples")
        ordered = sorted(samples)
        return cls(_quantile(ordered, 0.5), _quantile(ordered, 0.1), _quantile(ordered, 0.9),
                   ordered[0], len(ordered))

    def value(self, statistic: str) -> float:
        """The summary a profile is fitted to: ``median``, ``p10`` or ``min``."""
        try:
            return {"median": self.median_s, "p10": self.p10_s, "min": self.min_s}[statistic]
        except KeyError:
            raise ValueError(f"timing statistic must be one of {list(STATISTICS)}, "
                             f"got {statistic!r}") from None

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
    def time_calls(self, run: Callable[[int], object], starts: int, count: int
                   ) -> list[tuple[float, bool]]:
        """(seconds, clean) of ``run(starts + j)`` for j in range(count), each timed alone;
        ``clean`` is False for a call that other processes interrupted."""


PREEMPTED_RELATIVE, PREEMPTED_ABSOLUTE_S = 0.05, 5e-6


class CPUClock:
    def time_calls(self, run: Callable[[int], object], starts: int, count: int
                   ) -> list[tuple[float, bool]]:
        samples = []
        wall, cpu = time.perf_counter, time.thread_time
        for j in range(count):
            c0 = cpu()
            t0 = wall()
            run(starts + j)
            t1 = wall()
            c1 = cpu()
            elapsed = t1 - t0
            off_cpu = elapsed - (c1 - c0)
            samples.append((elapsed, off_cpu <= PREEMPTED_RELATIVE * elapsed + PREEMPTED_ABSOLUTE_S))
        return samples


class CUDAClock:
    def __init__(self, device: object):
        import torch

        self.torch, self.device = torch, device

    def time_calls(self, run: Callable[[int], object], starts: int, count: int
                   ) -> list[tuple[float, bool]]:
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
        return [(start.elapsed_time(end) / 1e3, True) for start, end in pairs]


@dataclass(frozen=True)
class TimingPlan:
    """How much to time each case: per round, ``target_s`` of calls within [min, max] repeats."""

    rounds: int = 3
    warmup: int = 2
    target_s: float = 0.05
    min_repeats: int = 5
    max_repeats: int = 50
    statistic: str = "median"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"timing statistic must be one of {list(STATISTICS)}, "
                             f"got {self.statistic!r}")

    def repeats_for(self, estimate_s: float) -> int:
        if estimate_s <= 0:
            return self.max_repeats
        return int(min(self.max_repeats, max(self.min_repeats, round(self.target_s / estimate_s))))

    def as_dict(self) -> dict[str, object]:
        return {"rounds": self.rounds, "warmup_calls": self.warmup, "target_s_per_round":
                self.target_s, "min_repeats_per_round": self.min_repeats,
                "max_repeats_per_round": self.max_repeats,
                "statistic": f"{self.statistic} of all samples"}


QUICK_PLAN = TimingPlan(rounds=3, warmup=1, target_s=0.015, min_repeats=3, max_repeats=12)
FULL_PLAN = TimingPlan(rounds=6, warmup=2, target_s=0.04, min_repeats=4, max_repeats=40)


class CaseTimer:
    """Accumulates one case's samples over rounds; the first call of a round warms up."""

    MIN_CLEAN = 3

    def __init__(self, run: Callable[[int], object], clock: Clock, plan: TimingPlan):
        self.run, self.clock, self.plan = run, clock, plan
        self.samples: list[tuple[float, bool]] = []
        self.calls = 0
        self.estimate_s: float | None = None

    def round(self) -> None:
        warmup = self.plan.warmup if self.estimate_s is None else 1
        warm = self.clock.time_calls(self.run, self.calls, warmup)
        self.calls += warmup
        estimate = min(t for t, _ in warm) if self.estimate_s is None else self.estimate_s
        self.estimate_s = estimate
        count = self.plan.repeats_for(estimate)
        self.samples += self.clock.time_calls(self.run, self.calls, count)
        self.calls += count

    @property
    def preempted_fraction(self) -> float:
        return sum(not clean for _, clean in self.samples) / max(1, len(self.samples))

    def stats(self) -> TimingStats:
        clean = [t for t, ok in self.samples if ok]
        chosen = clean if len(clean) >= self.MIN_CLEAN else [t for t, _ in self.samples]
        stats = TimingStats.from_samples(chosen)
        return replace(stats, preempted=self.preempted_fraction)

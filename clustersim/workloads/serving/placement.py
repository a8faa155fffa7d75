"""Where a replica runs (its GPUs by stage and TP rank, its memory tiers) and when each of its
pipeline stages is next free. Pure bookkeeping: no simpy events."""

from __future__ import annotations

from dataclasses import dataclass

from clustersim.workloads.serving.iteration import IterationTime


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where a replica runs: ``devices[s * tp + r]`` is TP rank r of stage s."""

    index: int
    devices: tuple[int, ...]
    names: tuple[str, ...]
    tp: int
    pp: int
    kv_tier: str = "hbm"                 # the devices' tier_for("kv")
    offload_tier: str | None = "host"    # their tier_for("offload"): where swapped KV goes

    @property
    def stage_leads(self) -> tuple[int, ...]:
        return tuple(self.devices[s * self.tp] for s in range(self.pp))


class Pipeline:
    """When each stage of a replica is next free, and how long each was busy."""

    __slots__ = ("free_s", "busy_s")

    def __init__(self, stages: int):
        self.free_s = [0.0] * stages
        self.busy_s = [0.0] * stages

    def reserve(self, now: float, timing: IterationTime) -> tuple[list[tuple[float, float]], float]:
        """Put a micro-batch through every stage in order (FIFO per stage); returns each stage's
        (start, end) and the time the batch leaves the last stage."""
        spans = []
        ready = now
        sends = timing.sends_s
        free, busy = self.free_s, self.busy_s
        for stage, seconds in enumerate(timing.stages_s):
            start = ready if ready > free[stage] else free[stage]
            end = start + seconds
            free[stage] = end
            busy[stage] += seconds
            spans.append((start, end))
            ready = end + (sends[stage] if stage < len(sends) else 0.0)
        return spans, spans[-1][1]

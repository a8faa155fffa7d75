"""Memory pools: one per (device, tier), with capacity, current use, peak and a timeline."""

from __future__ import annotations

from clustersim.errors import OutOfMemory


class MemoryPool:
    """Bytes in use on one tier of one device. ``allocate`` beyond capacity raises OutOfMemory."""

    __slots__ = ("device", "tier", "capacity_bytes", "used_bytes", "peak_bytes", "timeline")

    def __init__(self, device: str, tier: str, capacity_bytes: float, used_bytes: float = 0.0):
        if capacity_bytes <= 0:
            raise ValueError(f"{device} {tier}: capacity must be > 0, got {capacity_bytes}")
        self.device, self.tier, self.capacity_bytes = device, tier, float(capacity_bytes)
        self.used_bytes = self.peak_bytes = float(used_bytes)
        # (time_s, used_bytes) after each change; starts with the resident bytes at t=0.
        self.timeline: list[tuple[float, float]] = [(0.0, self.used_bytes)]
        if used_bytes > capacity_bytes:
            raise OutOfMemory(device=device, tier=tier, time_s=0.0, requested_bytes=used_bytes,
                              free_bytes=capacity_bytes, capacity_bytes=capacity_bytes,
                              task="resident state (weights, optimizer states)")

    @property
    def free_bytes(self) -> float:
        return self.capacity_bytes - self.used_bytes

    def allocate(self, size_bytes: float, time_s: float, task: str) -> None:
        used = self.used_bytes + size_bytes
        # A relative slack so that float sums of exact-fit allocations do not fail spuriously.
        if used > self.capacity_bytes * (1 + 1e-12):
            raise OutOfMemory(device=self.device, tier=self.tier, time_s=time_s,
                              requested_bytes=size_bytes, free_bytes=self.free_bytes,
                              capacity_bytes=self.capacity_bytes, task=task)
        self.used_bytes = used
        if used > self.peak_bytes:
            self.peak_bytes = used
        self.timeline.append((time_s, used))

    def release(self, size_bytes: float, time_s: float) -> None:
        self.used_bytes -= size_bytes
        if self.used_bytes < -1e-6 * max(size_bytes, 1.0):
            raise ValueError(f"{self.device} {self.tier}: freed {size_bytes} B at t={time_s} s, "
                             f"more than was allocated")
        self.timeline.append((time_s, self.used_bytes))

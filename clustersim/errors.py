"""Errors users see. Each names what is wrong, where, and what would fix it."""

from __future__ import annotations


class ClusterSimError(Exception):
    """Base of every error clustersim raises on purpose."""


class ConfigError(ClusterSimError):
    """Bad input found before any simulation starts: file, key path, expected and given."""

    def __init__(self, message: str = "", *, file: str | None = None, key: str | None = None):
        self.file, self.key, self.detail = file, key, message
        where = ":".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class OutOfMemory(ClusterSimError):
    """An allocation during a run that does not fit the device's memory tier."""

    def __init__(self, message: str | None = None, *, device: str = "", tier: str = "",
                 time_s: float = 0.0, requested_bytes: float = 0.0, free_bytes: float = 0.0,
                 capacity_bytes: float = 0.0, task: str = ""):
        # simpy re-creates a process's exception from its args, so a message alone must work.
        self.device, self.tier, self.time_s = device, tier, time_s
        self.requested_bytes, self.free_bytes, self.task = requested_bytes, free_bytes, task
        if message is not None:
            super().__init__(message)
            return
        super().__init__(
            f"out of memory on {device} {tier} at t={time_s * 1e3:.6g} ms: task {task!r} "
            f"requested {requested_bytes / 2**30:.3f} GiB but only {free_bytes / 2**30:.3f} GiB of "
            f"{capacity_bytes / 2**30:.3f} GiB is free")


class DeadlockError(ClusterSimError):
    """The program cannot make progress: tasks wait on work that never comes."""


class ScheduleError(ClusterSimError):
    """A pipeline schedule breaks a rule (names the stage, the action and the rule)."""

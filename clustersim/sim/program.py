"""Programs: tasks bound to (device, stream), with dependencies and memory effects.

A Program is what a static workload (a training step) compiles to before the run. It is plain
data: the engine (``engine.Simulation``) interprets it. Durations are computed when the task is
added (from ``Device.op_time``), never during the run.

Three kinds of task:

* compute: occupies its stream for ``duration_s``;
* transfer: a point-to-point flow of ``size_bytes`` from one device to another over the fabric,
  issued from the sender's stream (consumers on the receiver depend on the task);
* collective member: one per participating (device, stream). The collective starts when every
  member has reached it in its stream and its own dependencies are done (as NCCL ranks must all
  enter a collective), then runs its ``FlowStep``s over the fabric and completes on all members.

Memory effects: ``alloc`` is applied when a task starts, ``free`` when it ends, each a tuple of
(tier, bytes) on the task's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

COMPUTE, TRANSFER, COLLECTIVE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One step of a collective algorithm: equal flows that start together (a coflow).

    ``pairs`` are (src device, dst device) indices; each flow carries ``bytes_per_flow``; the
    step is repeated ``repeat`` times back to back (a ring's 2(n-1) identical steps), and each
    repetition first waits ``latency_s`` (the algorithm's per-step latency).
    """

    pairs: tuple[tuple[int, int], ...]
    bytes_per_flow: float
    repeat: int = 1
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes_per_flow < 0 or self.repeat < 1 or self.latency_s < 0:
            raise ValueError(f"FlowStep: bytes_per_flow >= 0, repeat >= 1, latency_s >= 0 expected, "
                             f"got {self.bytes_per_flow}, {self.repeat}, {self.latency_s}")


@dataclass(slots=True)
class CollectiveSpec:
    """A collective shared by its member tasks: the algorithm's steps and the members' task ids."""

    name: str
    steps: tuple[FlowStep, ...]
    members: list[int] = field(default_factory=list)
    # A fixed time instead of flows (an analytical collective model); None means use the steps.
    duration_s: float | None = None


@dataclass(slots=True)
class Task:
    id: int
    device: int
    stream: str
    name: str
    category: str          # trace colour/grouping: "compute", "comm", "p2p", "optimizer", ...
    type: int              # COMPUTE, TRANSFER or COLLECTIVE
    duration_s: float
    deps: tuple[int, ...]
    alloc: tuple[tuple[str, float], ...]
    free: tuple[tuple[str, float], ...]
    labels: Mapping[str, object]
    dst_device: int = -1           # TRANSFER only
    size_bytes: float = 0.0        # TRANSFER only
    collective: CollectiveSpec | None = None


_NO_LABELS: Mapping[str, object] = MappingProxyType({})


def _tuple(values: Sequence) -> tuple:
    return values if type(values) is tuple else tuple(values)


class Program:
    """A builder of tasks. Task ids are dense ints in insertion order."""

    def __init__(self) -> None:
        self.device_names: list[str] = []
        self._device_index: dict[str, int] = {}
        self.tasks: list[Task] = []
        self.streams: dict[tuple[int, str], list[int]] = {}

    # -- devices -----------------------------------------------------------------------------
    def device(self, name: str) -> int:
        """Index of device ``name``, adding it on first use."""
        index = self._device_index.get(name)
        if index is None:
            index = len(self.device_names)
            self._device_index[name] = index
            self.device_names.append(name)
        return index

    # -- tasks -------------------------------------------------------------------------------
    def _add(self, task: Task) -> int:
        deps = task.deps
        if deps and (min(deps) < 0 or max(deps) >= task.id):
            bad = next(dep for dep in deps if not 0 <= dep < task.id)
            raise ValueError(f"task {task.name!r}: dependency {bad} is not an earlier task id")
        self.tasks.append(task)
        key = (task.device, task.stream)
        ids = self.streams.get(key)
        if ids is None:
            ids = self.streams[key] = []
        ids.append(task.id)
        return task.id

    def compute(self, device: int, stream: str, name: str, duration_s: float, *,
                deps: Sequence[int] = (), alloc: Sequence[tuple[str, float]] = (),
                free: Sequence[tuple[str, float]] = (), category: str = "compute",
                labels: Mapping[str, object] | None = None) -> int:
        if duration_s < 0:
            raise ValueError(f"task {name!r}: duration_s must be >= 0, got {duration_s}")
        # The hot path of every workload's compiler: tuples are kept as given.
        return self._add(Task(len(self.tasks), device, stream, name, category, COMPUTE,
                              duration_s if type(duration_s) is float else float(duration_s),
                              deps if type(deps) is tuple else tuple(deps),
                              alloc if type(alloc) is tuple else tuple(alloc),
                              free if type(free) is tuple else tuple(free),
                              labels or _NO_LABELS))

    def transfer(self, src: int, dst: int, size_bytes: float, *, stream: str, name: str,
                 deps: Sequence[int] = (), alloc: Sequence[tuple[str, float]] = (),
                 free: Sequence[tuple[str, float]] = (), category: str = "p2p",
                 labels: Mapping[str, object] | None = None) -> int:
        if size_bytes < 0:
            raise ValueError(f"transfer {name!r}: size_bytes must be >= 0, got {size_bytes}")
        return self._add(Task(len(self.tasks), src, stream, name, category, TRANSFER, 0.0,
                              tuple(deps), tuple(alloc), tuple(free), labels or {},
                              dst_device=dst, size_bytes=float(size_bytes)))

    def collective(self, name: str, members: Sequence[tuple[int, str, Sequence[int]]],
                   steps: Sequence[FlowStep] = (), *, duration_s: float | None = None,
                   category: str = "comm", labels: Mapping[str, object] | None = None) -> list[int]:
        """Add one collective: ``members`` are (device, stream, deps) triples; returns task ids."""
        if len({device for device, _, _ in members}) != len(members):
            raise ValueError(f"collective {name!r}: a device appears twice among its members")
        spec = CollectiveSpec(name, tuple(steps), duration_s=duration_s)
        for device, stream, deps in members:
            task_id = self._add(Task(len(self.tasks), device, stream, name, category, COLLECTIVE,
                                     0.0, tuple(deps), (), (), labels or {}, collective=spec))
            spec.members.append(task_id)
        return list(spec.members)

    def __len__(self) -> int:
        return len(self.tasks)

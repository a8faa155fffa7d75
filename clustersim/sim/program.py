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
from operator import itemgetter
from types import MappingProxyType
from collections.abc import Mapping, Sequence

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


# Fields of a task record, in order (the engine unpacks records positionally).
TASK_FIELDS = ("id", "device", "stream", "name", "category", "type", "duration_s", "deps",
               "alloc", "free", "labels", "dst_device", "size_bytes", "collective")

_NO_LABELS: Mapping[str, object] = MappingProxyType({})


class Task(tuple):
    """A task, read by field name: a view of the Program's record of it (see ``TASK_FIELDS``).

    ``category`` is the trace colour/grouping ("compute", "comm", "p2p", "optimizer", ...);
    ``type`` is COMPUTE, TRANSFER or COLLECTIVE; ``dst_device`` and ``size_bytes`` are set for
    transfers only, ``collective`` for collective members only.
    """

    __slots__ = ()

    id: int = property(itemgetter(0))
    device: int = property(itemgetter(1))
    stream: str = property(itemgetter(2))
    name: str = property(itemgetter(3))
    category: str = property(itemgetter(4))
    type: int = property(itemgetter(5))
    duration_s: float = property(itemgetter(6))
    deps: tuple[int, ...] = property(itemgetter(7))
    alloc: tuple[tuple[str, float], ...] = property(itemgetter(8))
    free: tuple[tuple[str, float], ...] = property(itemgetter(9))
    dst_device: int = property(itemgetter(11))
    size_bytes: float = property(itemgetter(12))
    collective: CollectiveSpec | None = property(itemgetter(13))

    @property
    def labels(self) -> Mapping[str, object]:
        return self[10] or _NO_LABELS

    def __repr__(self) -> str:
        return "Task(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in TASK_FIELDS) + ")"


class TaskList(Sequence):
    """The tasks of a Program as ``Task`` views of its records, made when read: a loop over a
    large Program's tasks leaves no objects behind for the garbage collector."""

    __slots__ = ("_records",)

    def __init__(self, records: list[tuple]):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [Task(record) for record in self._records[index]]
        return Task(self._records[index])

    def __iter__(self):
        return map(Task, self._records)


class Program:
    """A builder of tasks. Task ids are dense ints in insertion order.

    Each task is kept as a plain tuple record (fields ``TASK_FIELDS``; labels None when empty):
    a record of numbers, strings and tuples of them leaves the garbage collector's lists over
    the collections that follow it, so building a large Program does not make every later
    collection rescan it (that was a third of the cost of building). ``tasks`` gives the
    records as ``Task`` views, by field name.
    """

    def __init__(self) -> None:
        self.device_names: list[str] = []
        self._device_index: dict[str, int] = {}
        self.records: list[tuple] = []
        self.streams: dict[tuple[int, str], list[int]] = {}
        # Tasks that another stream depends on: the engine gives these a completion event.
        self.waited_on: set[int] = set()
        self.has_transfers = False

    @property
    def tasks(self) -> TaskList:
        """Every task, in id order, as a ``Task`` (made on access, not kept)."""
        return TaskList(self.records)

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
    def _add(self, record: tuple) -> int:
        """Append a record whose deps were not yet checked (the rarer task kinds)."""
        task_id, device, stream, name = record[:4]
        deps = record[7]
        records = self.records
        if deps:
            self._check_deps(deps, task_id, name, device, stream)
        records.append(record)
        ids = self.streams.get((device, stream))
        if ids is None:
            ids = self.streams[device, stream] = []
        ids.append(task_id)
        return task_id

    def _check_deps(self, deps: tuple, task_id: int, name: str, device: int, stream: str) -> None:
        """Deps must be earlier tasks; note those on another stream (they need an event)."""
        if min(deps) < 0 or max(deps) >= task_id:
            bad = next(dep for dep in deps if not 0 <= dep < task_id)
            raise ValueError(f"task {name!r}: dependency {bad} is not an earlier task id")
        records = self.records
        for dep in deps:
            other = records[dep]
            if other[1] != device or other[2] != stream:
                self.waited_on.add(dep)

    def compute(self, device: int, stream: str, name: str, duration_s: float, *,
                deps: Sequence[int] = (), alloc: Sequence[tuple[str, float]] = (),
                free: Sequence[tuple[str, float]] = (), category: str = "compute",
                labels: Mapping[str, object] | None = None) -> int:
        if duration_s < 0:
            raise ValueError(f"task {name!r}: duration_s must be >= 0, got {duration_s}")
        # The hot path of every workload's compiler: inlined, tuples kept as given.
        records = self.records
        task_id = len(records)
        if deps:
            if type(deps) is not tuple:
                deps = tuple(deps)
            self._check_deps(deps, task_id, name, device, stream)
        else:
            deps = ()
        records.append((task_id, device, stream, name, category, COMPUTE,
                        duration_s if type(duration_s) is float else float(duration_s), deps,
                        alloc if type(alloc) is tuple else tuple(alloc),
                        free if type(free) is tuple else tuple(free),
                        labels or None, -1, 0.0, None))
        ids = self.streams.get((device, stream))
        if ids is None:
            ids = self.streams[device, stream] = []
        ids.append(task_id)
        return task_id

    def transfer(self, src: int, dst: int, size_bytes: float, *, stream: str, name: str,
                 deps: Sequence[int] = (), alloc: Sequence[tuple[str, float]] = (),
                 free: Sequence[tuple[str, float]] = (), category: str = "p2p",
                 labels: Mapping[str, object] | None = None) -> int:
        if size_bytes < 0:
            raise ValueError(f"transfer {name!r}: size_bytes must be >= 0, got {size_bytes}")
        self.has_transfers = True
        return self._add((len(self.records), src, stream, name, category, TRANSFER, 0.0,
                          tuple(deps), tuple(alloc), tuple(free), labels or None, dst,
                          float(size_bytes), None))

    def collective(self, name: str, members: Sequence[tuple[int, str, Sequence[int]]],
                   steps: Sequence[FlowStep] = (), *, duration_s: float | None = None,
                   category: str = "comm", labels: Mapping[str, object] | None = None) -> list[int]:
        """Add one collective: ``members`` are (device, stream, deps) triples; returns task ids."""
        if len({device for device, _, _ in members}) != len(members):
            raise ValueError(f"collective {name!r}: a device appears twice among its members")
        spec = CollectiveSpec(name, tuple(steps), duration_s=duration_s)
        for device, stream, deps in members:
            task_id = self._add((len(self.records), device, stream, name, category, COLLECTIVE,
                                 0.0, tuple(deps), (), (), labels or None, -1, 0.0, spec))
            spec.members.append(task_id)
        return list(spec.members)

    def __len__(self) -> int:
        return len(self.records)

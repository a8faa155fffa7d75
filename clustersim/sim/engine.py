"""The engine: runs a Program on simpy, one process per (device, stream).

Each stream process pulls its tasks in program order; a task starts when the stream is free and
its dependencies on other streams are done. Only tasks with dependents on other streams get a
completion event, so the per-task cost stays close to raw simpy's (a timeout and a record).

The engine also offers itself to dynamic workloads (serving, MoE routing): they are simpy
processes on ``Simulation.env`` that use the same memory pools, fabric and trace recorder.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence

import simpy

from clustersim.errors import ClusterSimError, DeadlockError
from clustersim.sim.fabric import Fabric, Link, Router
from clustersim.gc_pause import gc_paused
from clustersim.sim.memory import MemoryPool
from clustersim.sim.program import COLLECTIVE, COMPUTE, TRANSFER, CollectiveSpec, Program
from clustersim.sim.trace import Trace, TraceRecorder


class Simulation:
    """One run: a simpy environment, memory pools, an optional fabric and a trace recorder.

    ``memory`` maps device name -> {tier: capacity_bytes}; ``resident`` maps device name ->
    {tier: bytes in use before the first task} (weights, optimizer states).
    """

    def __init__(self, *, device_names: Sequence[str] = (),
                 memory: Mapping[str, Mapping[str, float]] | None = None,
                 resident: Mapping[str, Mapping[str, float]] | None = None,
                 links: Sequence[Link] = (), router: Router | None = None,
                 record_trace: bool = True):
        self.env = simpy.Environment()
        self.device_names = list(device_names)
        self.record_trace = record_trace
        self.recorder = TraceRecorder()
        resident = resident or {}
        self.pools: dict[tuple[str, str], MemoryPool] = {}
        for device, tiers in (memory or {}).items():
            for tier, capacity in tiers.items():
                used = resident.get(device, {}).get(tier, 0.0)
                self.pools[device, tier] = MemoryPool(device, tier, capacity, used)
        self.fabric = Fabric(self.env, links, router, record_utilisation=record_trace) \
            if links else None
        self.tasks_run = 0

    # -- running a static program ------------------------------------------------------------
    def run_program(self, program: Program) -> Trace:
        if not self.device_names:
            self.device_names = list(program.device_names)
        elif self.device_names != program.device_names[: len(self.device_names)]:
            raise ValueError("program devices do not match the simulation's devices")
        self._program = program
        if program.has_transfers and self.fabric is None:
            name = next(record[3] for record in program.records if record[5] == TRANSFER)
            raise ValueError(f"transfer {name!r} needs a fabric but the simulation has none")
        # A completion event only where another stream waits on the task (noted as the
        # program was built).
        with gc_paused():  # an event per waited-on task and a process per stream, no cycles
            event = self.env.event
            self._done = {task_id: event() for task_id in program.waited_on}
            self._arrived: dict[int, int] = {}
            self._collective_done: dict[int, simpy.Event] = {}
            self._positions = {key: 0 for key in program.streams}
            for key, ids in program.streams.items():
                self.env.process(self._stream(key, ids))
        # The program's tasks and events live for the whole run: frozen out of the garbage
        # collector's generations, its collections do not rescan them. (Pausing the collector
        # altogether measured slower: the collections it defers land on what runs next.)
        gc.freeze()
        try:
            self.env.run()
        except ClusterSimError as exc:
            # simpy re-raises a copy built from args; give the caller the original with details.
            original = exc.__cause__
            raise (original if isinstance(original, type(exc)) else exc) from None
        finally:
            gc.unfreeze()
        self._check_finished()
        return self.trace()

    def _stream(self, key: tuple[int, str], task_ids: list[int]):
        """The process of one stream. The per-task cost is raw simpy's (a timeout, a record and,
        for tasks other streams wait on, an event): the task record is unpacked in one step
        and everything rarer (memory effects, transfers, collectives) sits behind a test."""
        env = self.env
        records = self._program.records
        done_get = self._done.get
        device_name = self.device_names[key[0]]
        record = self.recorder.spans.append if self.record_trace else None
        positions = self._positions
        timeout = env.timeout
        transfer = self.fabric.transfer if self.fabric is not None else None
        pools = self.pools
        for position, task_id in enumerate(task_ids):
            (_, device, _, name, _, kind, duration, deps, alloc, free, _, dst_device,
             size_bytes, collective) = records[task_id]
            for dep in deps:
                event = done_get(dep)
                if event is not None and event.callbacks is not None:
                    positions[key] = position  # where a deadlock report finds the stream
                    yield event
            start = env.now
            if alloc:
                for tier, size in alloc:
                    pools[device_name, tier].allocate(size, start, name)
            if kind == COMPUTE:
                if duration:
                    yield timeout(duration)
            elif kind == TRANSFER:
                positions[key] = position  # a fabric bug that never ends a send is named
                yield transfer(device, dst_device, size_bytes)
            else:
                positions[key] = position
                collective_start, finished = self._join_collective(collective)
                yield finished
                start = collective_start[0]
            if free:
                end = env.now
                for tier, size in free:
                    pools[device_name, tier].release(size, end)
            if record is not None:
                record((task_id, start, env.now))
            event = done_get(task_id)
            if event is not None:
                event.succeed()
        positions[key] = len(task_ids)
        self.tasks_run += len(task_ids)

    def _join_collective(self, spec: CollectiveSpec) -> tuple[list[float], simpy.Event]:
        key = id(spec)
        arrived = self._arrived.get(key, 0) + 1
        self._arrived[key] = arrived
        entry = self._collective_done.get(key)
        if entry is None:
            entry = ([0.0], self.env.event())
            self._collective_done[key] = entry
        if arrived == len(spec.members):
            entry[0][0] = self.env.now
            self.env.process(self._run_collective(spec, entry[1]))
        return entry

    def _run_collective(self, spec: CollectiveSpec, finished: simpy.Event):
        env = self.env
        if spec.duration_s is not None:
            yield env.timeout(spec.duration_s)
        else:
            if spec.steps and self.fabric is None:
                raise ValueError(f"collective {spec.name!r} needs a fabric but the simulation has none")
            for step in spec.steps:
                for _ in range(step.repeat):
                    if step.latency_s:
                        yield env.timeout(step.latency_s)
                    yield self.fabric.coflow(step.pairs, step.bytes_per_flow)
        finished.succeed()

    def _check_finished(self) -> None:
        program = self._program
        stuck = []
        for key, ids in program.streams.items():
            position = self._positions[key]
            if position < len(ids):
                task = program.tasks[ids[position]]
                waiting = [program.tasks[d].name for d in task.deps
                           if d in self._done and not self._done[d].triggered]
                if task.type == COLLECTIVE:
                    waiting.append(f"{len(task.collective.members) - self._arrived.get(id(task.collective), 0)}"
                                   " collective members that never arrived")
                stuck.append(f"{self.device_names[key[0]]}/{key[1]} at {task.name!r} "
                             f"waiting for {waiting}")
        if stuck:
            raise DeadlockError(f"deadlock at t={self.env.now:.9g} s: " + "; ".join(stuck[:8])
                                + (f" (+{len(stuck) - 8} more streams)" if len(stuck) > 8 else ""))

    # -- results -----------------------------------------------------------------------------
    def trace(self) -> Trace:
        return Trace(self.recorder, program=getattr(self, "_program", None),
                     device_names=self.device_names, pools=self.pools, fabric=self.fabric,
                     makespan_s=self.env.now)


def simulate(program: Program, **kwargs) -> Trace:
    """Run ``program`` once and return its trace (see ``Simulation`` for the arguments)."""
    return Simulation(device_names=program.device_names, **kwargs).run_program(program)

"""Engine speed: events per second of clustersim's engine against raw simpy, same program shape.

A synthetic program of N tasks over D devices with two streams each (compute, comm), where
every task depends on its predecessor in its stream and, with probability ``cross``, on a task
of another device (cross-device dependencies, like pipeline sends). The raw simpy baseline is
the same program written by hand: one process per stream, a timeout per task, and an event per
task that has dependents elsewhere. Both sides time what a user waits for: clustersim builds
the Program and runs it, raw simpy builds its events and processes and runs them. The two sides
run alternately in this process, pair by pair (which side goes first alternates too), and the
median of the per-pair ratios is reported with their range, so load from other processes on the
machine cancels out; the absolute rates are not meaningful. Wall time is what a user waits for;
the ratio of CPU times is printed beside it (steadier on a loaded machine). Goal: <= 1.5x.

    python benchmarks/engine.py [--tasks 100000] [--devices 64] [--pairs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import simpy

from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program


def synthetic_shape(tasks: int, devices: int, cross: float, seed: int = 0):
    """Per task: (device, stream, duration_s, deps) with deps on earlier tasks only."""
    rng = np.random.default_rng(seed)
    streams = ("compute", "comm")
    shape = []
    last_on_device: list[int] = [-1] * devices
    for task_id in range(tasks):
        device = task_id % devices
        stream = streams[int(rng.random() < 0.25)]
        deps = []
        if rng.random() < cross and task_id > devices:
            other = int(rng.integers(0, devices))
            if other != device and last_on_device[other] >= 0:
                deps.append(last_on_device[other])
        shape.append((device, stream, float(rng.uniform(1e-6, 1e-4)), deps))
        last_on_device[device] = task_id
    return shape


def run_clustersim(shape, devices: int) -> tuple[float, float]:
    """(wall s, CPU s) to build the Program and run it."""
    start, cpu = time.perf_counter(), time.process_time()
    program = Program()
    ids = [program.device(f"gpu{d}") for d in range(devices)]
    for device, stream, duration, deps in shape:
        program.compute(ids[device], stream, "t", duration, deps=deps)
    Simulation(device_names=program.device_names, record_trace=True).run_program(program)
    return time.perf_counter() - start, time.process_time() - cpu


def run_raw_simpy(shape) -> tuple[float, float]:
    """(wall s, CPU s) to build the events and processes and run them."""
    start, cpu = time.perf_counter(), time.process_time()
    env = simpy.Environment()
    has_dependents = {dep for _, _, _, deps in shape for dep in deps}
    done = {task_id: env.event() for task_id in has_dependents}
    per_stream: dict[tuple[int, str], list[int]] = {}
    for task_id, (device, stream, _, _) in enumerate(shape):
        per_stream.setdefault((device, stream), []).append(task_id)
    log = []

    def stream_process(task_ids):
        for task_id in task_ids:
            _, _, duration, deps = shape[task_id]
            for dep in deps:
                event = done[dep]
                if event.callbacks is not None:
                    yield event
            begin = env.now
            yield env.timeout(duration)
            log.append((task_id, begin, env.now))
            event = done.get(task_id)
            if event is not None:
                event.succeed()

    for task_ids in per_stream.values():
        env.process(stream_process(task_ids))
    env.run()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--cross", type=float, default=0.3, help="share of tasks with a cross-device dependency")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    shape = synthetic_shape(args.tasks, args.devices, args.cross)
    walls, cpus = [], []
    for pair in range(args.pairs):
        if pair % 2 == 0:
            ours = run_clustersim(shape, args.devices)
            raw = run_raw_simpy(shape)
        else:
            raw = run_raw_simpy(shape)
            ours = run_clustersim(shape, args.devices)
        walls.append(ours[0] / raw[0])
        cpus.append(ours[1] / raw[1])
    print(f"tasks={args.tasks} devices={args.devices} cross-device deps={args.cross:.0%}")
    print(f"clustersim engine (build + run): {ours[0]:.3f} s  {args.tasks / ours[0]:,.0f} tasks/s")
    print(f"raw simpy (build + run):         {raw[0]:.3f} s  {args.tasks / raw[0]:,.0f} tasks/s")
    print(f"cost ratio clustersim/raw simpy per task: median {statistics.median(walls):.2f}x "
          f"over {args.pairs} alternated pairs, range {min(walls):.2f}-{max(walls):.2f} "
          f"(goal <= 1.5x); CPU time ratio median {statistics.median(cpus):.2f}x, "
          f"range {min(cpus):.2f}-{max(cpus):.2f}")


if __name__ == "__main__":
    main()

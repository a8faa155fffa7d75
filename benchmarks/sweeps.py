"""Sweep speed: the same 64-point sweep run serially, on local processes and on a Dask
LocalCluster, and how fast 120,000 points are validated.

Wall time per executor and the speed-up over one worker (a ratio: meaningful on a shared
machine only when the machine is otherwise idle; the load average is printed with it). Every
executor's rows are compared with the serial ones (they must be equal, bit for bit).

    python benchmarks/sweeps.py [--points 64] [--validate 120000] [--skip-dask]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import tempfile
import time
from pathlib import Path

import yaml

from clustersim.executors import ExecutorChoice, default_workers
from clustersim.experiment import run_experiment
from clustersim.experiment_config import load_plan

TRAINING = {"name": "bench-sweep", "seed": 0,
            "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 4},
            "workload": {"kind": "training", "model": "tiny", "seq_len": 128,
                         "micro_batch_size": 1, "global_batch_size": 8,
                         "parallel": {"tp": 2, "pp": 2, "dp": 1}, "schedule": "1f1b"},
            "output": {"trace": False, "plots": False, "parquet": False}}


def sweep_spec(points: int) -> dict:
    schedules = ["1f1b", "gpipe", "zb-h1", "zb-h2"]
    seq_lens = [32, 64, 96, 128]
    batches = [8, 16, 24, 32]
    combos = list(itertools.product(schedules, seq_lens, batches))[:points]
    return {**TRAINING, "sweep": {"zip": {
        "workload.schedule": [c[0] for c in combos],
        "workload.seq_len": [c[1] for c in combos],
        "workload.global_batch_size": [c[2] for c in combos]}}}


def time_executors(points: int, skip_dask: bool) -> None:
    cores = default_workers()
    choices = [("serial, 1 worker", ExecutorChoice(workers=1)),
               (f"processes, {cores} workers", ExecutorChoice(workers=cores))]
    if not skip_dask:
        choices += [("dask LocalCluster, 1 worker", ExecutorChoice(dask_local=1)),
                     (f"dask LocalCluster, {cores} workers", ExecutorChoice(dask_local=cores))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep_spec(points)))
        reference, times = None, {}
        for label, choice in choices:
            start, cpu = time.perf_counter(), _cpu_s()
            table = run_experiment(path, out=Path(tmp) / label.replace(" ", "_"), executor=choice)
            times[label] = time.perf_counter() - start
            cpu = _cpu_s() - cpu
            reference = table if reference is None else reference
            same = table.equals(reference)
            print(f"{label:32s} {times[label]:7.1f} s wall, {cpu:7.1f} s CPU (this process and "
                  f"its finished children)  rows equal to serial: {same}  "
                  f"load avg {os.getloadavg()[0]:.1f}", flush=True)
        base = times[choices[0][0]]
        print(f"speed-up, local processes: {base / times[choices[1][0]]:.2f}x on {cores} cores")
        if not skip_dask:
            print(f"speed-up, dask {cores} vs 1 worker: "
                  f"{times[choices[2][0]] / times[choices[3][0]]:.2f}x")


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have exited (pool workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def time_validation(points: int) -> None:
    """A grid of ``points`` training points over four keys (one of them the cluster)."""
    users = max(1, points // (4 * 10 * 30))
    spec = {**TRAINING, "sweep": {
        "workload.micro_batch_size": [1, 2, 4, 8][:4],
        "workload.seq_len": list(range(12, 132, 12)),
        "cluster.nvlink_bandwidth": [f"{100 + 10 * i} GB/s" for i in range(30)],
        "workload.grad_bucket_params": [1e6 * (i + 1) for i in range(users)]}}
    spec["workload"]["global_batch_size"] = 64
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(yaml.safe_dump(spec))
        start = time.perf_counter()
        plan = load_plan(path)
        loaded = time.perf_counter() - start
        plan.validate_all()
        total = time.perf_counter() - start
        print(f"validated {len(plan)} points in {total:.1f} s ({loaded:.1f} s loading the base and "
              f"each distinct value; {(total - loaded) / len(plan) * 1e6:.0f} us per point), "
              f"load avg {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--validate", type=int, default=120_000)
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()
    if args.validate:
        time_validation(args.validate)
    if args.points:
        time_executors(args.points, args.skip_dask)


if __name__ == "__main__":
    main()

"""Pipeline simulation speed: wall time and tasks per second for 1F1B and interleaved 1F1B over
p = 8..64 stages and m = 32..512 micro-batches, and how cost grows with p x m.

Two levels, both on the engine:
* ``schedule``: the schedule alone, one task per action (``training_step.idealised_program``);
  tasks = 2 p m (1F1B) or 2 p m v (interleaved).
* ``training``: a full training step compiled from the schedule (layer granularity, one DP
  replica) of a 128-layer model, with p2p sends on the fabric; tasks ~ 2 m L + p m sends.

    python benchmarks/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.schedules import make_schedule
from clustersim.sim.engine import Simulation
from clustersim.workloads.training import TrainingWorkload
from clustersim.workloads.training_step import idealised_program

MODEL_128 = {"name": "bench-128L", "hidden_size": 4096, "num_layers": 128, "num_heads": 32,
             "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": 32000, "max_seq_len": 4096}


def bench_schedule(name: str, p: int, m: int) -> dict:
    start = time.perf_counter()
    schedule = make_schedule(name, p, m, validate=False)
    program = idealised_program(schedule, lambda a: 1.0 if a.kind.name == "F" else 2.0)
    built = time.perf_counter()
    Simulation(device_names=program.device_names, record_trace=True).run_program(program)
    done = time.perf_counter()
    return {"level": "schedule", "schedule": name, "p": p, "m": m, "tasks": len(program),
            "build_s": built - start, "simulate_s": done - built,
            "tasks_per_s": len(program) / (done - built)}


def bench_training(name: str, p: int, m: int) -> dict:
    # Speed only: a large HBM so that no layout of this big model runs out of memory.
    cluster = ClusterConfig(node="DGX-H100", nodes=max(1, p // 8), gpus_per_node=min(8, p),
                            gpu_overrides={"hbm_capacity_bytes": "4 TiB"}).build()
    work = TrainingWorkload(kind="training", model=MODEL_128, seq_len=2048, micro_batch_size=1,
                            global_batch_size=m, parallel={"pp": p}, schedule=name,
                            granularity="layer", replicas="one")
    start = time.perf_counter()
    result = work.run(cluster, rng=np.random.default_rng(0), record_trace=False)
    wall = time.perf_counter() - start
    return {"level": "training", "schedule": name, "p": p, "m": m, "tasks": result.metrics["tasks"],
            "build_s": float("nan"), "simulate_s": wall, "tasks_per_s": result.metrics["tasks"] / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p in (8, 16), m in (32, 64)")
    args = parser.parse_args()
    ps, ms = ((8, 16), (32, 64)) if args.quick else ((8, 16, 32, 64), (32, 128, 512))
    rows = []
    for level in (bench_schedule, bench_training):
        for name in ("1f1b", "interleaved"):
            for p in ps:
                for m in ms:
                    if name == "interleaved" and m % p:
                        continue
                    row = level(name, p, m)
                    rows.append(row)
                    print(f"{row['level']:9s} {name:12s} p={p:3d} m={m:4d} tasks={row['tasks']:8d} "
                          f"wall={row['simulate_s']:7.3f}s  {row['tasks_per_s']:10,.0f} tasks/s "
                          f" us/task={1e6 / row['tasks_per_s']:.1f}", flush=True)
    # Cost growth: wall time per task should stay flat as p x m grows.
    for level in ("schedule", "training"):
        chosen = [r for r in rows if r["level"] == level and r["schedule"] == "1f1b"]
        small, large = min(chosen, key=lambda r: r["tasks"]), max(chosen, key=lambda r: r["tasks"])
        growth = (large["simulate_s"] / small["simulate_s"]) / (large["tasks"] / small["tasks"])
        print(f"{level}: wall time grew {large['simulate_s'] / small['simulate_s']:.1f}x for "
              f"{large['tasks'] / small['tasks']:.1f}x the tasks (per-task cost ratio {growth:.2f})")


if __name__ == "__main__":
    main()

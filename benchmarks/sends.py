"""Point-to-point send cost on an idle fabric against a simpy timeout, and a pipeline step with
its sends on the fabric against the same step with each send as a timeout of the same length.

Both sides of each ratio run alternately in this process, pair by pair, and the median of the
per-pair ratios is reported, so load from other processes on the machine cancels out. Each
pipeline run starts from a collected heap and frees its trace after its timing, both sides
alike (before, the twin's timing also freed its own run).

* ``send``: one process doing N sequential ``fabric.transfer`` calls between GPU pairs of a
  DGX-H100 cluster (NVLink inside a node, NIC + leaf-spine across), against one process doing
  N ``env.timeout`` of the same durations. Goal: within 20x.
* ``pipeline``: a 1F1B training step (p = 64, m = 128, layer granularity, one replica) as
  compiled, against the same Program with every transfer task turned into a compute task of
  the duration it took on the fabric. Goal: within 1.5x.

Under load from other processes the per-pair ratios spread widely (0.9-1.9x for one build on
this 2-core machine at load average 4); compare medians over several pairs, with ``uptime``.

    python benchmarks/sends.py [--sends 20000] [--pairs 7] [--p 64] [--m 128]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np
import simpy

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Fabric
from clustersim.sim.program import TRANSFER, Program

MODEL_128 = {"name": "bench-128L", "hidden_size": 4096, "num_layers": 128, "num_heads": 32,
             "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": 32000, "max_seq_len": 4096}


def send_fabric(cluster, sends: int) -> tuple[float, list[float]]:
    env = simpy.Environment()
    fabric = Fabric(env, cluster.links, cluster.router, record_utilisation=True)
    n = len(cluster.devices)
    pairs = [(i % n, (i * 7 + 9) % n) for i in range(64)]
    pairs = [(a, b) for a, b in pairs if a != b]
    durations: list[float] = []

    def sender():
        for i in range(sends):
            src, dst = pairs[i % len(pairs)]
            begin = env.now
            yield fabric.transfer(src, dst, 64e6)
            durations.append(env.now - begin)

    env.process(sender())
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start, durations


def send_timeouts(durations: list[float]) -> float:
    env = simpy.Environment()

    def sender():
        for duration in durations:
            yield env.timeout(duration)

    env.process(sender())
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


def pipeline_program(p: int, m: int):
    from clustersim.workloads.training import TrainingWorkload

    cluster = ClusterConfig(node="DGX-H100", nodes=max(1, p // 8), gpus_per_node=min(8, p),
                            gpu_overrides={"hbm_capacity_bytes": "4 TiB"}).build()
    work = TrainingWorkload(kind="training", model=MODEL_128, seq_len=2048, micro_batch_size=1,
                            global_batch_size=m, parallel={"pp": p}, schedule="1f1b",
                            granularity="layer", replicas="one")
    return cluster, work


def compiled_step(cluster, work) -> tuple[Program, dict]:
    """The Program a training run simulates, and the Simulation arguments it uses."""
    from clustersim.workloads.training_step import StepConfig, compile_training_step

    par = work.parallel
    cfg = StepConfig(model=work.model_config_, layout=work.layout, micro_batch=work.micro_batch_size,
                     seq_len=work.seq_len, sequence_parallel=par.sequence_parallel,
                     recompute=work.recompute, zero_stage=par.zero_stage, dtype=work.dtype,
                     overlap_grad_reduce=work.overlap_grad_reduce,
                     grad_bucket_params=work.grad_bucket_params, granularity=work.granularity,
                     replicas=work.replicas)
    program, _ = compile_training_step(cfg, cluster, work.make_schedule())
    return program, cluster.simulation_kwargs()


def run_with_fabric(program: Program, kwargs: dict) -> tuple[float, object]:
    start = time.perf_counter()
    trace = Simulation(**kwargs, record_trace=True).run_program(program)
    return time.perf_counter() - start, trace


def as_timeouts(program: Program, trace) -> Program:
    """The same program with every transfer a compute task of the time it took on the fabric."""
    spans = {task_id: end - begin for task_id, begin, end in trace._recorder.spans}
    twin = Program()
    for name in program.device_names:
        twin.device(name)
    for task in program.tasks:
        if task.type == TRANSFER:
            twin.compute(task.device, task.stream, task.name, spans[task.id], deps=task.deps,
                         alloc=task.alloc, free=task.free)
        else:
            twin._add(task)
    return twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=7, help="alternated measurement pairs")
    parser.add_argument("--p", type=int, default=64)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    cluster = ClusterConfig(node="DGX-H100", nodes=4, gpus_per_node=8).build()
    ratios = []
    for _ in range(args.pairs):
        fabric_s, durations = send_fabric(cluster, args.sends)
        timeout_s = send_timeouts(durations)
        ratios.append(fabric_s / timeout_s)
    print(f"send on idle links: {1e6 * fabric_s / args.sends:.2f} us/send, timeout "
          f"{1e6 * timeout_s / args.sends:.2f} us; median ratio {statistics.median(ratios):.1f}x "
          f"(goal <= 20x), range {min(ratios):.1f}-{max(ratios):.1f} over {args.pairs} alternated pairs")
    if args.skip_pipeline:
        return
    cluster, work = pipeline_program(args.p, args.m)
    program, kwargs = compiled_step(cluster, work)
    twin = None
    no_fabric = {k: v for k, v in kwargs.items() if k not in ("links", "router")}
    ratios = []
    for _ in range(args.pairs):
        # Each side starts from a collected heap and keeps its trace until after its timing,
        # so neither pays for the other's garbage.
        gc.collect()
        fabric_s, trace = run_with_fabric(program, kwargs)
        twin = twin or as_timeouts(program, trace)
        gc.collect()
        twin_s, twin_trace = run_with_fabric(twin, no_fabric)
        ratios.append(fabric_s / twin_s)
    print(f"1F1B p={args.p} m={args.m}: step with sends on the fabric {fabric_s:.2f} s, sends as "
          f"timeouts {twin_s:.2f} s; median ratio {statistics.median(ratios):.2f}x, range "
          f"{min(ratios):.2f}-{max(ratios):.2f} over {args.pairs} pairs (goal <= 1.5x)")


if __name__ == "__main__":
    main()

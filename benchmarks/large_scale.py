"""Large training steps end to end (schedule, compile, simulate), as a user runs them.

* ``gpt-1t``: the 1T-parameter GPT of Narayanan et al., "Efficient Large-Scale Language Model
  Training on GPU Clusters Using Megatron-LM" (SC'21), Table 1: hidden 25600, 160 heads,
  128 layers, sequence 2048, vocabulary 51200; TP 8, PP 64, DP 6 on 3072 A100s (384 DGX A100),
  global batch 3072, micro-batch 1. Goal: within 10 s.
* ``megascale-175b``: GPT-3 175B on 12,288 GPUs as in Jiang et al., "MegaScale: Scaling Large
  Language Model Training to More Than 10,000 GPUs" (NSDI'24), Section 6.1: TP 8, PP 8,
  DP 192, global batch 6144, sequence 2048 (on DGX-A100 nodes here). Goal: within a minute.

Both at layer granularity with one DP replica simulated for all (``replicas: one``); the
gradient reduction of all replicas runs on the fabric. Wall times are printed with the share
of each phase; time is the user's, so the schedule build and the compile are included. The
process CPU time is printed too: on a shared machine it moves less than the wall time.

    python benchmarks/large_scale.py [--only gpt-1t]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.sim.engine import Simulation
from clustersim.workloads.training import TrainingWorkload

GPT_1T = {"name": "gpt-1t", "hidden_size": 25600, "num_layers": 128, "num_heads": 160,
          "num_kv_heads": 160, "ffn_hidden_size": 102400, "vocab_size": 51200,
          "max_seq_len": 2048}

RUNS = {
    "gpt-1t": dict(nodes=384, model=GPT_1T, parallel={"tp": 8, "pp": 64, "dp": 6},
                   global_batch_size=3072),
    "megascale-175b": dict(nodes=1536, model="gpt3-175b", parallel={"tp": 8, "pp": 8, "dp": 192},
                           global_batch_size=6144),
}


def run(name: str) -> None:
    spec = RUNS[name]
    start, cpu = time.perf_counter(), time.process_time()
    cluster = ClusterConfig(node="DGX-A100", nodes=spec["nodes"],
                            gpu_overrides={"hbm_capacity_bytes": "1 TiB"}).build()
    work = TrainingWorkload(kind="training", model=spec["model"], seq_len=2048,
                            micro_batch_size=1, global_batch_size=spec["global_batch_size"],
                            parallel=spec["parallel"], schedule="1f1b", granularity="layer",
                            replicas="one", recompute="full")
    built = time.perf_counter()
    work.check(cluster)
    checked = time.perf_counter()
    result = work.run(cluster, rng=np.random.default_rng(0), record_trace=False)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    print(f"{name}: {done - start:.1f} s (cluster {built - start:.1f}, check {checked - built:.1f}, "
          f"run {done - checked:.1f}; CPU {cpu:.1f} s); tasks {result.metrics['tasks']}, step "
          f"{result.metrics.get('step_time_s', float('nan')):.2f} s simulated", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RUNS), default=None)
    args = parser.parse_args()
    for name in ([args.only] if args.only else list(RUNS)):
        run(name)


if __name__ == "__main__":
    main()

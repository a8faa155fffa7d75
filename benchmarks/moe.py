"""MoE speed: simulated expert-parallel MoE layers per wall-second at EP 8..256.

Each point simulates ``--layers`` forward MoE blocks of DeepSeek-V3-shaped experts (256 routed
experts of 2048, top-8, one shared expert, hidden 7168) on an EP group of ``ep`` H100s (8 per
DGX node, nodes under a 1:1 leaf-spine with ECMP): per layer, routing drawn for 4096 tokens per
GPU (uniform popularity), per-pair dispatch, grouped expert GEMMs per GPU, hierarchical all-to-allv
dispatch and combine on the fabric. Reported:

* ``build_s``: routing, placement, dispatch matrices and the Program (flow steps included);
* ``run_s``: the engine run; ``layers_per_s`` = layers / (build_s + run_s);
* ``flows``: flow events of the all-to-alls; ``sim_layer_s``: simulated time per layer;
* ``cost_vs_ep8``: wall time per layer relative to EP = 8 (how cost grows with EP).

    python benchmarks/moe.py [--ep 8 16 32 64 128 256] [--layers 4] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program
from clustersim.workloads.models import get_model
from clustersim.workloads.moe.ep_layer import EPOptions, EPPlan
from clustersim.workloads.moe.routing import RoutingSpec


def bench(ep: int, layers: int, seed: int = 0) -> dict:
    base = get_model("deepseek-v3")
    model = dataclasses.replace(base, num_layers=layers)
    nodes = max(1, ep // 8)
    network = {"kind": "leaf_spine", "hosts_per_leaf": min(4, nodes), "spines": 8,
               "oversubscription": 1, "routing": "ecmp"} if nodes > 1 else None
    cluster = ClusterConfig(node="DGX-H100", nodes=nodes, network=network).build()
    start = time.perf_counter()
    options = EPOptions(RoutingSpec(model.num_experts, model.experts_per_token, "uniform"),
                        placement="load_balanced")
    plan = EPPlan(model, tp=1, dp=ep, ep=ep, micro_batch=1, seq_len=4096, dtype="bf16",
                  options=options, cluster=cluster, device_of=lambda s, t, d: d,
                  rng=np.random.default_rng(seed))
    program = Program()
    for name in cluster.names:
        program.device(name)
    last = {}
    for layer in range(layers):
        deps = {(0, r): [last[(0, r)]] if (0, r) in last else [] for r in range(ep)}
        last = plan.emit(program, stage=0, tp_ranks=[0], group_first=0, layer=layer, microbatch=0,
                         phase="fwd", dgrad=True, wgrad=True, deps=deps, labels={})
    kwargs = cluster.simulation_kwargs()
    kwargs.pop("memory")
    sim = Simulation(**kwargs, record_trace=False)
    built = time.perf_counter()
    sim.run_program(program)
    run = time.perf_counter() - built
    wall = built - start + run
    return {"ep": ep, "gpus": ep, "layers": layers, "tasks": len(program.tasks),
            "build_s": built - start, "run_s": run, "layers_per_s": layers / wall,
            "flows": sim.fabric.flow_events if sim.fabric else 0,
            "sim_layer_s": sim.env.now / layers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ep", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    rows = []
    for ep in args.ep:
        row = bench(ep, args.layers)
        rows.append(row)
        first = rows[0]
        row["cost_vs_ep8"] = (first["layers_per_s"] / row["layers_per_s"])
        sys.stdout.write(f"EP {ep:4d}: {row['layers_per_s']:8.2f} layers/s "
                         f"(build {row['build_s']:.2f} s, run {row['run_s']:.2f} s, "
                         f"{row['flows']} flow events, {row['tasks']} tasks), "
                         f"{row['sim_layer_s'] * 1e3:.3f} ms simulated per layer, "
                         f"cost x{row['cost_vs_ep8']:.1f} vs EP {first['ep']}\n")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

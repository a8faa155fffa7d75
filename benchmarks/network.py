"""Network speed: collectives over leaf-spine fabrics from 16 to 4096 hosts (8 GPUs each).

For each host count, routing and collective, builds the cluster network and a hierarchical
collective (NVLink phases in the nodes, rail phases across them), runs it, and reports:

* ``wall_s``: wall time of the simulation (building the network and the steps excluded;
  ``build_s`` reports those);
* ``flows``: logical flow events (starts + ends) the collective is made of, replayed ones
  included, and ``flows_per_s`` = flows / wall_s;
* ``solved``: flow events the max-min solver actually handled (repeats of an identical step on
  an idle fabric are replayed, not re-solved), and ``solved_per_s``;
* ``solves``: max-min recomputations (a coflow of equal flows alone on the fabric, which ends at
  size / its first water level, counts one: ``sim/water_level.py``); ``sim_s``: the simulated
  completion time;
* ``relabelled``: coflows replayed from another coflow's recording on renamed links (an
  all-to-all's steps with sprayed or ideal routing, ``sim/coflow_replay.py``); ``solo``:
  coflows that started alone on an idle fabric and were solved start to end in one go
  (``sim/solo_coflows.py``: an all-to-all's ECMP steps); ``cpu_s``: the process CPU time of
  the simulation, steadier than ``wall_s`` on a shared machine.

The all-to-all at 4096 hosts is the issue's goal case (within 10 s, ECMP and spraying):

    python benchmarks/network.py --hosts 4096 --collectives all_to_all --routing spray
    python benchmarks/network.py --hosts 4096 --collectives all_to_all --routing ecmp

The fabric: ``hosts_per_leaf`` hosts per leaf, all 8 NICs of a host on its leaf, leaf uplinks
at the NIC rate (non-blocking, 1:1), ``spines`` spines with the uplinks spread evenly. Sizes:
all-reduce 256 MiB per GPU; all-to-all 64 MiB per GPU.

    python benchmarks/network.py [--hosts 16 64 256 1024 4096] [--routing ecmp spray]
                                 [--collectives all_reduce all_to_all] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from clustersim.hardware.network import NodeFabric, build_network, collective_steps
from clustersim.sim.engine import Simulation
from clustersim.sim.program import Program

SIZES = {"all_reduce": 256 * 2**20, "all_to_all": 64 * 2**20, "all_gather": 256 * 2**20,
         "reduce_scatter": 256 * 2**20}


def bench(hosts: int, routing: str, collective: str, *, hosts_per_leaf: int = 4, spines: int = 16,
          gpus_per_node: int = 8, seed: int = 0) -> dict:
    start = time.perf_counter()
    nodes = NodeFabric(num_nodes=hosts, gpus_per_node=gpus_per_node,
                       nvlink_bandwidth_bytes_per_s=450e9, nvlink_latency_s=0.5e-6,
                       nic_bandwidth_bytes_per_s=50e9, nic_latency_s=2.7e-6)
    links, router = build_network({"kind": "leaf_spine", "hosts_per_leaf": hosts_per_leaf,
                                   "spines": spines, "routing": routing},
                                  nodes=nodes, rng=np.random.default_rng(seed))
    program = Program()
    ids = [program.device(f"gpu{i}") for i in range(hosts * gpus_per_node)]
    steps = collective_steps(collective, ids, SIZES[collective], gpus_per_node=gpus_per_node,
                             step_latency_s=5e-6, intra_node_step_latency_s=1e-6)
    program.collective(collective, [(d, "comm", ()) for d in ids], steps)
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=False)
    built = time.perf_counter()
    cpu = time.process_time()
    sim.run_program(program)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - built
    fabric = sim.fabric
    return {"hosts": hosts, "gpus": hosts * gpus_per_node, "routing": routing,
            "collective": collective, "links": len(links), "build_s": built - start,
            "wall_s": wall, "flows": fabric.flow_events, "flows_per_s": fabric.flow_events / wall,
            "solved": fabric.solved_flow_events, "solved_per_s": fabric.solved_flow_events / wall,
            "solves": fabric.recomputations, "replayed": fabric.replayed_coflows,
            "relabelled": getattr(fabric, "relabelled_coflows", 0),
            "solo": getattr(fabric, "solo_coflows", 0), "cpu_s": cpu, "sim_s": sim.env.now}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--routing", nargs="+", default=["ecmp", "spray"])
    parser.add_argument("--collectives", nargs="+", default=["all_reduce", "all_to_all"])
    parser.add_argument("--hosts-per-leaf", type=int, default=4)
    parser.add_argument("--spines", type=int, default=16)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    rows = []
    header = (f"{'collective':<11} {'routing':<8} {'hosts':>5} {'links':>7} {'build_s':>8} "
              f"{'wall_s':>8} {'flows':>11} {'flows/s':>11} {'solved':>10} {'solved/s':>10} "
              f"{'solves':>7} {'relabel':>7} {'solo':>5} {'cpu_s':>7} {'sim_ms':>9}")
    print(header)
    for collective in args.collectives:
        for routing in args.routing:
            for hosts in args.hosts:
                row = bench(hosts, routing, collective, hosts_per_leaf=args.hosts_per_leaf,
                            spines=args.spines)
                rows.append(row)
                print(f"{collective:<11} {routing:<8} {hosts:>5} {row['links']:>7} "
                      f"{row['build_s']:>8.2f} {row['wall_s']:>8.2f} {row['flows']:>11,} "
                      f"{row['flows_per_s']:>11,.0f} {row['solved']:>10,} "
                      f"{row['solved_per_s']:>10,.0f} {row['solves']:>7} {row['relabelled']:>7} "
                      f"{row['solo']:>5} "
                      f"{row['cpu_s']:>7.2f} {row['sim_s'] * 1e3:>9.3f}",
                      flush=True)
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()

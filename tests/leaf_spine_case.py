"""One test case for the fabric's coflow fast paths: a leaf-spine fabric of DGX-like nodes and a
collective over all its GPUs in one Program (shared by the solo-coflow and water-level tests)."""

import numpy as np

from clustersim.hardware.network import NodeFabric, build_network, collective_steps
from clustersim.sim.program import Program


def leaf_spine_collective(hosts, gpus, hosts_per_leaf, spines, routing, seed, *,
                          collective="all_to_all", oversubscription=1.0):
    """(links, router, program, device ids): ``collective`` of 8 MiB per GPU over the fabric."""
    nodes = NodeFabric(num_nodes=hosts, gpus_per_node=gpus, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.5e-6, nic_bandwidth_bytes_per_s=50e9,
                       nic_latency_s=2.7e-6)
    links, router = build_network(
        {"kind": "leaf_spine", "hosts_per_leaf": hosts_per_leaf, "spines": spines,
         "routing": routing, "oversubscription": oversubscription},
        nodes=nodes, rng=np.random.default_rng(seed))
    program = Program()
    ids = [program.device(f"gpu{i}") for i in range(hosts * gpus)]
    steps = collective_steps(collective, ids, 8 * 2**20, gpus_per_node=gpus,
                             step_latency_s=5e-6, intra_node_step_latency_s=1e-6)
    program.collective("c", [(d, "comm", ()) for d in ids], steps)
    return links, router, program, ids

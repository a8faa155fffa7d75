"""A coflow whose routes are a recorded one's up to renaming destination links replays that
recording: the same completion time and link bytes as solving it, interrupted or not."""

import math

import numpy as np
import pytest

from clustersim.hardware.network import NodeFabric, build_network, collective_steps
from clustersim.sim.engine import Simulation
from clustersim.sim.fabric import Fabric
from clustersim.sim.program import Program

HOSTS, GPUS = 12, 4


def _network(routing: str):
    nodes = NodeFabric(num_nodes=HOSTS, gpus_per_node=GPUS, nvlink_bandwidth_bytes_per_s=450e9,
                       nvlink_latency_s=0.5e-6, nic_bandwidth_bytes_per_s=50e9,
                       nic_latency_s=2.7e-6)
    if routing == "non_blocking":
        return nodes.links(), nodes
    config = {"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2, "routing": routing}
    if routing == "spray_rail_optimized":
        config.update(routing="spray", rail_optimized=True)
    if routing == "two_planes":   # nodes 0-7 on a sprayed leaf-spine, all on Ethernet
        config = {"kind": "non_blocking", "planes": [
            {"name": "ib", "kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2,
             "routing": "spray", "nodes": "0-7"},
            {"name": "eth", "kind": "non_blocking", "nic": "ethernet",
             "nic_bandwidth": "25 GB/s", "nic_latency": "5 us"}]}
    return build_network(config, nodes=nodes, rng=np.random.default_rng(0))


def _all_to_all(routing: str, relabel: bool, interrupt_s: tuple = ()):
    links, router = _network(routing)
    program = Program()
    ids = [program.device(f"gpu{i}") for i in range(HOSTS * GPUS)]
    steps = collective_steps("all_to_all", ids, 8 * 2**20, gpus_per_node=GPUS,
                             step_latency_s=5e-6, intra_node_step_latency_s=1e-6)
    program.collective("a2a", [(d, "comm", ()) for d in ids], steps)
    for number, start_s in enumerate(interrupt_s):   # sends amid the all-to-all's steps
        device, peer = (0, 21) if number % 2 else (9, 30)
        wait = program.compute(device, f"other{number}", "wait", start_s)
        program.transfer(device, peer, 4e6, stream=f"x{number}", name="send", deps=[wait])
    sim = Simulation(device_names=program.device_names, links=links, router=router,
                     record_trace=False)
    sim.fabric.relabel_replays = relabel and sim.fabric.relabel_replays
    sim.run_program(program)
    return sim.env.now, sim.fabric


@pytest.fixture(autouse=True)
def small_coflows(monkeypatch):
    monkeypatch.setattr(Fabric, "_RELABEL_MIN_FLOWS", 8)
    monkeypatch.setattr(Fabric, "_RELABEL_SAMPLE", 4)


@pytest.mark.parametrize("routing", ["spray", "ideal", "non_blocking", "spray_rail_optimized",
                                     "two_planes"])
@pytest.mark.parametrize("interrupt", [False, True])
def test_a_relabelled_replay_is_the_solved_coflow(routing, interrupt):
    alone, _ = _all_to_all(routing, relabel=False)
    starts = tuple(alone * f for f in (0.37, 0.52, 0.61, 0.83)) if interrupt else ()
    replayed, fabric = _all_to_all(routing, relabel=True, interrupt_s=starts)
    solved, reference = _all_to_all(routing, relabel=False, interrupt_s=starts)
    assert fabric.relabelled_coflows > 0 and reference.relabelled_coflows == 0
    assert math.isclose(replayed, solved, rel_tol=1e-9)
    np.testing.assert_allclose(fabric.bytes_carried, reference.bytes_carried, rtol=1e-9)
    if interrupt and routing != "two_planes":   # (there the sends fall between replays)
        assert fabric.interrupted_replays > 0


def test_hashed_paths_between_leaves_are_never_taken_for_renamings():
    _, router = _network("ecmp")
    src = np.arange(0, 8)                       # hosts 0-1: leaf 0
    assert router.destination_ends(src, src + 16) is None
    assert not router.relabels(src, src + 16, src + 32)
    replayed, fabric = _all_to_all("ecmp", relabel=True)
    solved, _ = _all_to_all("ecmp", relabel=False)
    assert math.isclose(replayed, solved, rel_tol=1e-9)


def test_renamings_shift_destinations_by_whole_leaves_only():
    _, router = _network("spray")
    src = np.arange(0, 8)                       # leaf 0 (hosts 0, 1), all GPUs
    to_leaf1, to_leaf2 = src + 8, src + 16      # hosts 2-3, hosts 4-5
    straddling = src + 4                        # hosts 1-2: half within leaf 0
    assert router.relabels(src, to_leaf1, to_leaf2)
    assert not router.relabels(src, to_leaf1, straddling)
    # Two sources' destinations merged into one host are not one-to-one.
    assert not router.relabels(src, to_leaf1, np.repeat(src[:4] + 16, 2))

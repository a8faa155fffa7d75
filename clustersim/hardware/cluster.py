"""A cluster: devices with names, their memory, and the fabric that connects them.

This is what workloads run on. It hands the engine the device names, memory capacities, links
and router, and it hands workloads the device models (for ``op_time``) and collective steps
over groups of device indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from clustersim.hardware.device import Device
from clustersim.hardware.network.collectives import collective_steps
from clustersim.sim.fabric import Link, Router
from clustersim.sim.program import FlowStep


@dataclass
class Cluster:
    """``devices[i]`` is the model of device i; ``names[i]`` its trace name."""

    devices: list[Device]
    names: list[str]
    links: list[Link]
    router: Router
    gpus_per_node: int
    # The per-step latency of collectives (NCCL's alpha) in seconds, by scope.
    intra_node_step_latency_s: float = 0.0
    inter_node_step_latency_s: float = 0.0
    description: dict = field(default_factory=dict)
    # Optional analytical model of collectives inside one node (``network/nccl.py``
    # NcclCollectives): its ``steps(kind, group, size)`` replaces the flow algorithm when it
    # returns steps.
    collective_model: object | None = None
    # Workloads may place state that does not fit a device's default tier on its offload tier
    # (``cluster.spill: true``; see ``hardware/spill.py``). Off: they refuse instead.
    spill: bool = False

    def __post_init__(self) -> None:
        if len(self.devices) != len(self.names):
            raise ValueError(f"{len(self.devices)} devices but {len(self.names)} names")

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_nodes(self) -> int:
        return -(-self.num_devices // self.gpus_per_node)

    def node_of(self, device: int) -> int:
        return device // self.gpus_per_node

    def memory(self) -> dict[str, dict[str, float]]:
        return {name: {tier.name: tier.capacity_bytes for tier in device.memory_tiers}
                for name, device in zip(self.names, self.devices)}

    def collective(self, kind: str, group: Sequence[int], size_bytes: float,
                   algorithm: str | None = None) -> tuple[FlowStep, ...]:
        """Flow steps for ``kind`` over device indices ``group`` (one node or several)."""
        for device in group:
            if not 0 <= device < self.num_devices:
                raise ValueError(f"{kind}: device {device} is not in the cluster "
                                 f"(it has {self.num_devices} devices)")
        spans_nodes = len({self.node_of(d) for d in group}) > 1
        if self.collective_model is not None and not spans_nodes and algorithm is None:
            steps = self.collective_model.steps(kind, list(group), size_bytes)
            if steps is not None:
                return steps
        latency = self.inter_node_step_latency_s if spans_nodes else self.intra_node_step_latency_s
        # Knowing the nodes lets groups that span them use the hierarchical algorithms (NVLink
        # inside a node, the fabric between nodes), as NCCL does.
        return collective_steps(kind, group, size_bytes, algorithm=algorithm, step_latency_s=latency,
                                intra_node_step_latency_s=self.intra_node_step_latency_s,
                                gpus_per_node=self.gpus_per_node)

    def simulation_kwargs(self) -> dict:
        """Arguments for ``sim.engine.Simulation`` describing this cluster."""
        return {"device_names": list(self.names), "memory": self.memory(),
                "links": list(self.links), "router": self.router}

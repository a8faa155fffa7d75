"""The ``cluster:`` section of an experiment file, and how it builds a ``Cluster``.

A cluster is nodes of one preset (GPU model, GPUs per node, NVLink and NIC figures) with
optional overrides. Inter-node traffic crosses a non-blocking network unless ``network:``
describes a fabric (leaf-spine, with a routing policy).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clustersim.hardware.cluster import Cluster
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.units import BytesPerSecond, Seconds


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str = Field("DGX-H100", description="node preset (see `clustersim presets`)")
    gpu: str | None = Field(None, description="GPU preset; defaults to the node preset's GPU")
    nodes: int = Field(1, ge=1, description="number of nodes")
    gpus_per_node: int | None = Field(None, ge=1, description="override the preset's GPUs per node")
    gpu_overrides: dict[str, Any] = Field(default_factory=dict,
                                          description="GPU model parameters to override, e.g. "
                                                      "{matmul_efficiency: 0.7}")
    profile: str | None = Field(None, description="calibration profile (YAML) from "
                                                  "`clustersim calibrate`; devices then use its timings")
    profile_force: bool = Field(False, description="use a profile measured on another device")
    nvlink_bandwidth: BytesPerSecond | None = Field(
        None, description="per-GPU NVLink bandwidth per direction, overrides the preset")
    nic_bandwidth: BytesPerSecond | None = Field(
        None, description="per-NIC bandwidth per direction, overrides the preset")
    intra_node_step_latency: Seconds = Field(
        1e-6, description="per-step latency of collectives inside a node (NCCL's alpha over "
                          "NVLink is about 1 us: NCCL src/graph/tuning.cc hwLat)")
    inter_node_step_latency: Seconds = Field(
        5e-6, description="per-step latency of collectives across nodes (about 5 us over IB: "
                          "NCCL src/graph/tuning.cc hwLat for NET)")
    network: dict[str, Any] | None = Field(
        None, description="a fabric between nodes (kind: leaf_spine ...); default: non-blocking")
    collectives: Literal["flows", "nccl"] = Field(
        "flows", description="collectives inside a node: flows (algorithm steps on the fabric) "
                             "or nccl (NCCL's tuning model, fitted by the profile when it has one)")

    def build(self, *, base_dir: str | None = None, rng=None) -> Cluster:
        """The cluster; ``rng`` (the run's Generator) seeds routing hashes such as ECMP's."""
        from clustersim.hardware.presets import load_gpu, load_node

        node = load_node(self.node)
        gpu_name = self.gpu or node.gpu
        overrides = dict(self.gpu_overrides)
        if self.profile:
            from clustersim.hardware.calibration import load_profile

            overrides["profile"] = load_profile(self.profile, base_dir=base_dir,
                                                force=self.profile_force)
        per_node = self.gpus_per_node or node.gpus_per_node
        # Each GPU's share of the node's host DDR, over its PCIe link (KV swapping, offload).
        overrides.setdefault("host_memory_bytes", node.host_memory_bytes / per_node)
        overrides.setdefault("host_link_bandwidth_bytes_per_s", node.pcie_bandwidth_bytes_per_s)
        gpu = load_gpu(gpu_name, **overrides)
        nodes = NodeFabric(
            num_nodes=self.nodes, gpus_per_node=per_node,
            nvlink_bandwidth_bytes_per_s=self.nvlink_bandwidth or node.nvlink_bandwidth_bytes_per_s,
            nvlink_latency_s=node.nvlink_latency_s,
            nic_bandwidth_bytes_per_s=self.nic_bandwidth or node.nic_bandwidth_bytes_per_s,
            nic_latency_s=node.nic_latency_s,
            nics_per_node=min(node.nics_per_node, per_node) if node.nics_per_node else None)
        count = nodes.num_gpus
        names = ([f"gpu{i}" for i in range(count)] if self.nodes == 1 else
                 [f"n{i // per_node}.gpu{i % per_node}" for i in range(count)])
        links, router = nodes.links(), nodes
        if self.network is not None:
            from clustersim.hardware.network import build_network

            links, router = build_network(self.network, nodes=nodes, rng=rng)
        collective_model = None
        if self.collectives == "nccl":
            from clustersim.hardware.network.nccl import NcclCollectives, arch_of

            collective_model = NcclCollectives(
                arch_of(gpu.name), nodes.nvlink_bandwidth_bytes_per_s, node.nvlink_latency_s,
                getattr(gpu.profile, "nccl_models", None) or {})
        return Cluster(devices=[gpu] * count, names=names, links=links, router=router,
                       gpus_per_node=per_node,
                       intra_node_step_latency_s=self.intra_node_step_latency,
                       inter_node_step_latency_s=self.inter_node_step_latency,
                       collective_model=collective_model,
                       description={"node": node.name, "gpu": gpu.name, "nodes": self.nodes,
                                    "gpus": count})

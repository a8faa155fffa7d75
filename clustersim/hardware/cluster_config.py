"""The ``cluster:`` section of an experiment file, and how it builds a ``Cluster``.

A cluster is nodes of one node preset or one inline node (``node: {device: SN40L, count: 16,
link_bandwidth: ...}``): N devices of one preset of any kind (GPU, systolic array, RDU,
NPU+PIM) plus the node's links, with optional overrides. Inter-node traffic crosses a
non-blocking network unless ``network:`` describes a fabric (leaf-spine, with a routing policy).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.hardware.node import InlineNode
from clustersim.units import BytesPerSecond, Seconds

# Trace-name prefix per device kind ("gpu3", "rdu0", "n1.tpu2").
_NAME_PREFIX = {"gpu": "gpu", "systolic": "tpu", "pim": "pim", "rdu": "rdu", "npu_pim": "npu"}


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str | InlineNode = Field(
        "DGX-H100", description="node preset (see `clustersim presets --kind node`), or an inline "
                                "node {device, count, link_bandwidth, ...}")
    device: str | None = Field(None, description="device preset of any kind (GPU, systolic, RDU, "
                                                 "NPU+PIM); defaults to the node's device")
    gpu: str | None = Field(None, description="the same as device: (kept for GPU-era files)")
    nodes: int = Field(1, ge=1, description="number of nodes")
    gpus_per_node: int | None = Field(None, ge=1, description="override the preset's devices per "
                                                              "node")
    gpu_overrides: dict[str, Any] = Field(default_factory=dict,
                                          description="device model parameters to override, e.g. "
                                                      "{matmul_efficiency: 0.7} (any device kind); "
                                                      "attention_efficiency also replaces the "
                                                      "profile's fitted attention")
    profile: str | None = Field(None, description="calibration profile (YAML) from "
                                                  "`clustersim calibrate`; devices then use its timings")
    profile_force: bool = Field(False, description="use a profile measured on another device")
    nvlink_bandwidth: BytesPerSecond | None = Field(
        None, description="per-device intra-node link bandwidth (NVLink on GPUs) per direction, "
                          "overrides the node's")
    nic_bandwidth: BytesPerSecond | None = Field(
        None, description="per-NIC bandwidth per direction, overrides the preset")
    intra_node_step_latency: Seconds = Field(
        1e-6, description="per-step latency of collectives inside a node (NCCL's alpha over "
                          "NVLink is about 1 us: NCCL src/graph/tuning.cc hwLat)")
    inter_node_step_latency: Seconds = Field(
        5e-6, description="per-step latency of collectives across nodes (about 5 us over IB: "
                          "NCCL src/graph/tuning.cc hwLat for NET)")
    spill: bool = Field(
        False, description="training: place the optimizer states, then the gradients "
                           "(ZeRO-Offload's order), that do not fit a device's default tier on "
                           "its offload tier (RDU DDR, GPU host memory), paying the offload "
                           "bandwidth in the optimizer step; false: refuse before the run. "
                           "Serving ignores it (its KV cache swaps with kv_cache.preemption: swap)")
    network: dict[str, Any] | None = Field(
        None, description="a fabric between nodes (kind: leaf_spine ...); default: non-blocking")
    collectives: Literal["flows", "nccl"] = Field(
        "flows", description="collectives inside a node: flows (algorithm steps on the fabric) "
                             "or nccl (NCCL's tuning model, fitted by the profile when it has one)")

    @field_validator("node", mode="before")
    @classmethod
    def _inline_node(cls, value: Any) -> Any:
        """An inline node's own errors (a misspelt key, a count of 0), not the union's."""
        if not isinstance(value, dict):
            return value
        from clustersim.hardware.preset_file import nearest

        valid = list(InlineNode.model_fields)
        for key in value:
            if key not in valid:
                raise ValueError(f"inline node: unknown key {key!r}{nearest(str(key), valid)}; "
                                 f"valid keys: {valid}")
        missing = [k for k, f in InlineNode.model_fields.items()
                   if f.is_required() and k not in value]
        if missing:
            raise ValueError(f"inline node: missing {missing} (an inline node needs device, "
                             "count and link_bandwidth)")
        try:
            return InlineNode(**value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"inline node: {where}: {first['msg']}") from None

    def node_spec(self):
        """The node: the preset's, or the inline node's."""
        from clustersim.hardware.presets import load_node

        inline = isinstance(self.node, InlineNode)
        try:
            return self.node.spec() if inline else load_node(self.node)
        except ValueError as exc:
            raise ConfigError(str(exc), key="cluster.node.device" if inline else "cluster.node") \
                from None

    def build(self, *, base_dir: str | None = None, rng=None) -> Cluster:
        """The cluster; ``rng`` (the run's Generator) seeds routing hashes such as ECMP's."""
        from clustersim.hardware.node import describe_device, device_kind

        if self.device and self.gpu and describe_device(self.device) != describe_device(self.gpu):
            raise ValueError(f"cluster.device ({self.device!r}) and cluster.gpu ({self.gpu!r}) name "
                             "different devices; give only device:")
        node = self.node_spec()
        key = ("cluster.device" if self.device else "cluster.gpu" if self.gpu else
               "cluster.node.device" if isinstance(self.node, InlineNode) else "cluster.node")
        try:
            device_name = describe_device(self.device or self.gpu or node.device)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from None
        kind = device_kind(device_name)
        overrides = dict(self.gpu_overrides)
        if self.profile:
            from clustersim.hardware.calibration import load_profile

            profile = load_profile(self.profile, base_dir=base_dir, force=self.profile_force)
            if "attention_efficiency" in self.gpu_overrides:
                # An explicit attention efficiency beats the profile's fitted one: the run models
                # another attention kernel than the one the profile measured.
                from clustersim.ops import OpKind

                profile = profile.without_fits(OpKind.ATTENTION)
            overrides["profile"] = profile
        per_node = self.gpus_per_node or node.devices_per_node
        # A GPU gets its share of the node's host DDR over its PCIe link (KV swapping, offload).
        if kind == "gpu" and node.host_memory_bytes is not None:
            overrides.setdefault("host_memory_bytes", node.host_memory_bytes / per_node)
            overrides.setdefault("host_link_bandwidth_bytes_per_s", node.pcie_bandwidth_bytes_per_s)
        from clustersim.hardware.node import load_device

        try:
            device = load_device(device_name, **overrides)
        except ValueError as exc:      # a bad override names its own key
            raise ConfigError(str(exc.args[0] if exc.args else exc),
                              key="cluster.gpu_overrides" if self.gpu_overrides else key) from None
        device = _with_host_tier(device, node, per_node)
        if (isinstance(self.node, InlineNode) and self.node.host_memory is not None
                and "host" not in {t.name for t in device.memory_tiers}):
            raise ConfigError(f"{device.name} ({kind}) cannot use the node's host memory: only a "
                              "GPU, or an NPU+PIM device on a GPU, reaches host DDR as a tier; "
                              "remove host_memory, or pick such a device (an RDU offloads to its "
                              "own DDR)", key="cluster.node.host_memory")
        nodes = NodeFabric(
            num_nodes=self.nodes, gpus_per_node=per_node,
            nvlink_bandwidth_bytes_per_s=self.nvlink_bandwidth or node.link_bandwidth_bytes_per_s,
            nvlink_latency_s=node.link_latency_s,
            nic_bandwidth_bytes_per_s=self.nic_bandwidth or node.nic_bandwidth_bytes_per_s,
            nic_latency_s=node.nic_latency_s,
            nics_per_node=min(node.nics_per_node, per_node) if node.nics_per_node else None)
        count = nodes.num_gpus
        prefix = _NAME_PREFIX[kind]
        names = ([f"{prefix}{i}" for i in range(count)] if self.nodes == 1 else
                 [f"n{i // per_node}.{prefix}{i % per_node}" for i in range(count)])
        links, router = nodes.links(), nodes
        if self.network is not None:
            from clustersim.hardware.network import build_network

            links, router = build_network(self.network, nodes=nodes, rng=rng)
        collective_model = None
        if self.collectives == "nccl":
            if kind != "gpu":
                raise ConfigError(f"collectives: nccl models NVIDIA GPUs' NCCL, but this node holds "
                                  f"{kind} devices ({device.name}); use collectives: flows",
                                  key="cluster.collectives")
            from clustersim.hardware.network.nccl import NcclCollectives, arch_of

            collective_model = NcclCollectives(
                arch_of(device.name), nodes.nvlink_bandwidth_bytes_per_s, node.link_latency_s,
                getattr(device.profile, "nccl_models", None) or {})
        return Cluster(devices=[device] * count, names=names, links=links, router=router,
                       gpus_per_node=per_node,
                       intra_node_step_latency_s=self.intra_node_step_latency,
                       inter_node_step_latency_s=self.inter_node_step_latency,
                       collective_model=collective_model,
                       spill=self.spill,
                       description={"node": node.name, "device": device.name,
                                    "device_kind": kind, "gpu": device.name, "nodes": self.nodes,
                                    "devices": count, "gpus": count})


def _with_host_tier(device, node, per_node: int):
    """An NPU+PIM device whose host is a GPU gets the node's host DDR over PCIe as its offload
    tier, as a plain GPU does (a GPU gets it through its overrides above)."""
    import dataclasses

    from clustersim.hardware.gpu import GPU
    from clustersim.hardware.npu_pim import NpuPim

    if (not isinstance(device, NpuPim) or not isinstance(device.npu, GPU)
            or node.host_memory_bytes is None or device.npu.host_memory_bytes is not None):
        return device
    host = dataclasses.replace(device.npu, host_memory_bytes=node.host_memory_bytes / per_node,
                               host_link_bandwidth_bytes_per_s=node.pcie_bandwidth_bytes_per_s)
    return dataclasses.replace(device, npu=host)

"""Networks: NVLink in nodes, NIC planes (non-blocking, leaf-spine, fat tree), routing
policies and collective algorithms as flows.

``build_network(config, nodes=NodeFabric)`` turns a cluster's ``network:`` section (see
``config.py``) into ``(links, router)`` for ``sim.engine.Simulation``. The router is a
``routing.NetworkRouter``; ``rebuild_network(router, routing=..., rng=...)`` gives the same
network with another routing policy or another hash seed (the ideal multipath reference of a
run is ``rebuild_network(router, routing="ideal")``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from clustersim.config_errors import validate
from clustersim.errors import ConfigError
from clustersim.hardware.network.collectives import bus_bandwidth_factor, collective_steps
from clustersim.hardware.network.config import (NetworkConfig, PlaneConfig, RoutingConfig,
                                                TopologyConfig, parse_nodes)
from clustersim.hardware.network.fat_tree import FatTreePlane
from clustersim.hardware.network.leaf_spine import LeafSpinePlane
from clustersim.hardware.network.node_fabric import NodeFabric
from clustersim.hardware.network.routing import NetworkRouter, make_policy, salt_from
from clustersim.hardware.network.topology import Network, NonBlockingPlane, Plane
from clustersim.sim.fabric import Link

__all__ = ["build_network", "rebuild_network", "collective_steps", "bus_bandwidth_factor",
           "Network", "NetworkRouter", "NodeFabric", "RoutingConfig"]

_TOPOLOGY_KEYS = set(TopologyConfig.model_fields)
_REQUIRED = {"leaf_spine": ("hosts_per_leaf", "spines"),
             "fat_tree": ("hosts_per_leaf", "spines", "leaves_per_pod", "cores_per_spine"),
             "non_blocking": ()}
_USED = {"non_blocking": {"kind"},
         "leaf_spine": {"kind", "hosts_per_leaf", "leaves", "spines", "leaf_uplinks", "oversubscription",
                        "uplink_bandwidth", "hop_latency", "rail_optimized"},
         "fat_tree": _TOPOLOGY_KEYS - {"leaf_uplinks", "leaves"}}


def build_network(config: dict[str, Any], *, nodes: NodeFabric,
                  rng: np.random.Generator | None = None,
                  prefix: str = "cluster.network") -> tuple[list[Link], NetworkRouter]:
    """``(links, router)`` for the ``network:`` section ``config`` over ``nodes``.

    Raises ``ConfigError`` naming the key (under ``prefix``) and the valid choices.
    """
    if isinstance(config, BaseModel):
        config = config.model_dump(exclude_unset=True)
    parts = tuple(prefix.split("."))
    network = validate(NetworkConfig, config, file=None, prefix=parts)
    top = {k: v for k, v in config.items() if k in _TOPOLOGY_KEYS}
    specs: list[tuple[PlaneConfig, set[str], str]] = []
    if network.planes is None:
        specs.append((validate(PlaneConfig, {"name": "", **top}, file=None, prefix=parts),
                      set(top), prefix))
    else:
        if not network.planes:
            raise ConfigError("list at least one plane (or leave `planes` out)", key=f"{prefix}.planes")
        for index, raw in enumerate(network.planes):
            key = f"{prefix}.planes.{index}"
            if not isinstance(raw, dict):
                raise ConfigError("expected a mapping", key=key)
            plane = validate(PlaneConfig, {**top, **raw}, file=None, prefix=tuple(key.split(".")))
            specs.append((plane, set(raw), key))
        names = [plane.name for plane, _, _ in specs]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ConfigError(f"plane name {name!r} is used twice",
                                  key=f"{prefix}.planes.{index}.name")
    planes, policies = [], []
    for plane_config, explicit, key in specs:
        routing = plane_config.routing or network.routing
        policies.append(make_policy(routing.kind, subflows=routing.subflows))
        planes.append(_plane(plane_config, explicit, key, nodes, trunked=routing.kind == "ideal"))
    try:
        net = nodes.network(planes)
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{prefix}.planes" if network.planes else prefix) from None
    spec = {"config": dict(config), "nodes": nodes, "prefix": prefix}
    return list(net.links), NetworkRouter(net, policies, salt_from(rng), spec)


def rebuild_network(router, *, routing: str | dict | RoutingConfig | None = None,
                    rng: np.random.Generator | None = None) -> tuple[list[Link], NetworkRouter]:
    """The network of ``router`` again, with every plane on ``routing`` and hashes from ``rng``.

    ``router`` must come from ``build_network``; a default ``NodeFabric`` has no routing
    choices and is returned unchanged (its links and itself).
    """
    if isinstance(router, NodeFabric):
        return router.links(), router
    spec = getattr(router, "spec", None)
    if not spec:
        raise ValueError("rebuild_network needs a router made by build_network")
    config = dict(spec["config"])
    if routing is not None:
        if isinstance(routing, RoutingConfig):
            routing = routing.model_dump()
        config["routing"] = routing
        if config.get("planes"):
            config["planes"] = [{k: v for k, v in plane.items() if k != "routing"}
                                for plane in config["planes"]]
    return build_network(config, nodes=spec["nodes"], rng=rng, prefix=spec["prefix"])


def _plane(cfg: PlaneConfig, explicit: set[str], key: str, nodes: NodeFabric,
           trunked: bool) -> Plane:
    for name in _REQUIRED[cfg.kind]:
        if getattr(cfg, name) is None:
            raise ConfigError(f"kind {cfg.kind} needs {name}", key=f"{key}.{name}")
    unused = sorted((explicit & _TOPOLOGY_KEYS) - _USED[cfg.kind])
    if unused:
        raise ConfigError(f"not used by kind {cfg.kind} (it uses: "
                          f"{', '.join(sorted(_USED[cfg.kind]))})", key=f"{key}.{unused[0]}")
    if cfg.nic == "ethernet":
        for name in ("nic_bandwidth", "nic_latency"):
            if getattr(cfg, name) is None:
                raise ConfigError(f"an ethernet plane needs {name}: no node preset describes its "
                                  "Ethernet NICs", key=f"{key}.{name}")
    try:
        members = parse_nodes(cfg.nodes, nodes.num_nodes)
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{key}.nodes") from None
    nics = cfg.nics_per_node or nodes.nics
    if nodes.gpus_per_node % nics:
        raise ConfigError(f"{nics} NICs per node do not divide {nodes.gpus_per_node} GPUs per node "
                          "evenly", key=f"{key}.nics_per_node")
    common = dict(name=cfg.name, nic_kind=cfg.nic, nodes=np.array(members),
                  num_cluster_nodes=nodes.num_nodes, nics_per_node=nics,
                  nic_bandwidth_bytes_per_s=cfg.nic_bandwidth or nodes.nic_bandwidth_bytes_per_s,
                  nic_latency_s=nodes.nic_latency_s if cfg.nic_latency is None else cfg.nic_latency)
    try:
        if cfg.kind == "non_blocking":
            return NonBlockingPlane(**common)
        if cfg.kind == "leaf_spine":
            return LeafSpinePlane(hosts_per_leaf=cfg.hosts_per_leaf, spines=cfg.spines,
                                  leaf_uplinks=cfg.leaf_uplinks, leaves=cfg.leaves,
                                  oversubscription=cfg.oversubscription,
                                  uplink_bandwidth_bytes_per_s=cfg.uplink_bandwidth,
                                  hop_latency_s=cfg.hop_latency, rail_optimized=cfg.rail_optimized,
                                  trunked=trunked, **common)
        return FatTreePlane(hosts_per_leaf=cfg.hosts_per_leaf, leaves_per_pod=cfg.leaves_per_pod,
                            spines=cfg.spines, cores_per_spine=cfg.cores_per_spine,
                            oversubscription=cfg.oversubscription,
                            uplink_bandwidth_bytes_per_s=cfg.uplink_bandwidth,
                            core_oversubscription=cfg.core_oversubscription,
                            core_link_bandwidth_bytes_per_s=cfg.core_link_bandwidth,
                            hop_latency_s=cfg.hop_latency, rail_optimized=cfg.rail_optimized,
                            trunked=trunked, **common)
    except ValueError as exc:
        message = str(exc)
        field, sep, rest = message.partition(": ")
        if sep and field in _TOPOLOGY_KEYS:
            raise ConfigError(rest, key=f"{key}.{field}") from None
        if "oversubscription or uplink_bandwidth" in message:
            raise ConfigError(message, key=f"{key}.uplink_bandwidth") from None
        raise ConfigError(message, key=key) from None

"""Resource guard: estimate what a run will cost from its config, before building anything.

An experiment that asks for a billion nodes or a hundred million micro-batches should be
refused in a second with the estimate and the key to change, not die of ``MemoryError`` after
a minute or run for hours without a word. The estimates are analytical, counted the way the
workloads build their programs, and checked against measured runs (``tests/test_resource_guard.py``):

* training, ``granularity: op``: one task per op, 30 per layer per micro-batch (forward +
  backward, TP collectives included) and 14 more per micro-batch, on every simulated device:
  ``devices x micro-batches x (layers per stage x 30 + 14)``; ``granularity: layer`` folds TP
  into one device and has 2 tasks per layer per micro-batch and 4 more;
* collective: flows of the algorithm, at most ``n (n - 1)`` for all-to-all and ``2 n (n - 1)``
  for the ring family over ``n`` ranks (the hierarchical default has far fewer);
* serving: the number of requests (``count``, or closed-loop users x requests per user).

Memory is estimated at ``BYTES_PER_TASK`` (measured 2.2 KB per task in the engine with its
trace, rounded up) and ``BYTES_PER_REQUEST``. Limits (``LIMITS``) are documented in the README;
``clustersim run --allow-large`` (or ``CLUSTERSIM_ALLOW_LARGE=1``) lifts them, but never the
refusal of a run whose memory estimate exceeds the machine's physical memory.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from clustersim.errors import ConfigError

LIMITS = {"devices": 262_144, "tasks": 5_000_000, "flows": 1_000_000_000, "requests": 1_000_000}
# Tasks per layer and per micro-batch (forward + backward), plus those of each micro-batch
# outside the layers (embedding, head, loss), per granularity: counted from the engine's
# programs (LLaMA-2-7B TP=8: 31,240 tasks for 4 micro-batches, 249,864 for 32; tiny: 306,
# 610, 1,218 for 2, 4, 8).
TASKS_PER_LAYER = {"op": 30.0, "layer": 2.0}
TASKS_PER_MICROBATCH = {"op": 14.0, "layer": 4.0}
RECOMPUTE_FACTOR = {"none": 1.0, "selective": 1.1, "full": 1.35}
BYTES_PER_TASK = 3_000
BYTES_PER_DEVICE = 4_000
BYTES_PER_FLOW = 8
BYTES_PER_REQUEST = 2_000
ALLOW_ENV = "CLUSTERSIM_ALLOW_LARGE"


@dataclass(frozen=True)
class Estimate:
    """One quantity a run will create: how many, the limit, the memory, and what to change."""

    what: str             # a key of LIMITS
    count: float
    memory_bytes: float
    key: str              # the YAML key that drives it
    fix: str              # what to change, in words

    @property
    def limit(self) -> int:
        return LIMITS[self.what]


@functools.lru_cache(maxsize=256)  # a sweep checks thousands of points of a few presets
def _gpus_per_node(node: str) -> int:
    from clustersim.hardware.presets import load_node

    try:
        return load_node(node).gpus_per_node
    except (ValueError, KeyError):
        return 8  # an unknown node preset is reported by the cluster check


@functools.lru_cache(maxsize=256)
def _num_layers(model: str) -> int | None:
    from clustersim.workloads.models import get_model

    try:
        return get_model(model).num_layers
    except (ValueError, KeyError):
        return None  # an unknown model is reported by the workload's check


def _devices(cluster: Any) -> int:
    node = cluster.node
    if isinstance(node, str):
        per_node = cluster.gpus_per_node or _gpus_per_node(node)
    else:  # an inline node: {device: ..., count: N, ...}
        per_node = cluster.gpus_per_node or node.count
    return int(cluster.nodes) * int(per_node)


def _training(workload: Any, devices: int) -> list[Estimate]:
    par = workload.parallel
    if isinstance(workload.model, str):
        layers = _num_layers(workload.model)
    else:
        try:
            layers = workload.model_config_.num_layers
        except Exception:  # noqa: BLE001 — a bad model is reported by the workload's check
            layers = None
    if not layers:
        return []
    simulated_dp = 1 if workload.replicas == "one" else par.dp
    microbatches = workload.global_batch_size // max(1, workload.micro_batch_size * par.dp)
    granularity = workload.granularity
    ranks = (par.tp if granularity == "op" else 1) * par.pp * simulated_dp
    per_microbatch = (layers / par.pp * TASKS_PER_LAYER[granularity]
                      * RECOMPUTE_FACTOR.get(workload.recompute, 1.0)
                      + TASKS_PER_MICROBATCH[granularity])
    tasks = ranks * (microbatches * per_microbatch + 1)
    return [Estimate("tasks", tasks, tasks * BYTES_PER_TASK, "workload.global_batch_size",
                     f"{ranks:,} simulated devices x {microbatches:,} micro-batches x "
                     f"{layers / par.pp:g} layers per stage; lower global_batch_size or the "
                     "cluster, or use granularity: layer / replicas: one")]


def _collective(workload: Any, devices: int) -> list[Estimate]:
    group = workload.group
    n = len(group) if isinstance(group, list) else devices
    flows = n * (n - 1) * (1 if workload.collective == "all_to_all" else 2)
    return [Estimate("flows", flows, flows * BYTES_PER_FLOW, "workload.group",
                     f"{workload.collective} over {n:,} ranks; use fewer ranks "
                     "(workload.group or cluster.nodes)")]


def _serving(workload: Any, devices: int) -> list[Estimate]:
    requests = workload.requests
    count = getattr(requests, "count", None)
    arrival = getattr(requests, "arrival", None)
    if not count and getattr(arrival, "users", None):  # a closed loop: users x their requests
        count = arrival.users * (getattr(arrival, "requests_per_user", None) or 1)
    if not count:
        return []
    return [Estimate("requests", count, count * BYTES_PER_REQUEST, "workload.requests.count",
                     "lower requests.count")]


_BY_KIND = {"training": _training, "collective": _collective, "serving": _serving}


def estimate(cluster: Any, workload: Any) -> list[Estimate]:
    """What one run of ``workload`` on the ``cluster:`` config will create (no cluster is built)."""
    devices = _devices(cluster)
    estimates = [Estimate("devices", devices, devices * BYTES_PER_DEVICE, "cluster.nodes",
                          "lower cluster.nodes (or gpus_per_node)")]
    by_kind = _BY_KIND.get(getattr(workload, "kind", None))
    return estimates + (by_kind(workload, devices) if by_kind else [])


@functools.cache
def physical_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def large_runs_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def check_resources(cluster: Any, workload: Any, *, file: str | None,
                    allow_large: bool | None = None) -> list[Estimate]:
    """Raise ConfigError naming the estimate, the limit and the key when a run is too large;
    return the estimates otherwise. ``allow_large`` (default: ``CLUSTERSIM_ALLOW_LARGE``) lifts
    the count limits, never the physical-memory one."""
    allow = large_runs_allowed() if allow_large is None else allow_large
    estimates = estimate(cluster, workload)
    memory = sum(e.memory_bytes for e in estimates)
    physical = physical_memory_bytes()
    for item in estimates:
        if item.count > item.limit and not allow:
            raise ConfigError(
                f"the run would create about {item.count:,.0f} {item.what} and need about "
                f"{memory / 2**30:,.1f} GiB, over the limit of {item.limit:,} {item.what} "
                f"({item.fix}); change {item.key}, or pass --allow-large to run it anyway",
                file=file, key=item.key)
    if memory > 0.8 * physical:
        worst = max(estimates, key=lambda e: e.memory_bytes)
        raise ConfigError(
            f"the run would need about {memory / 2**30:,.1f} GiB of memory ({worst.count:,.0f} "
            f"{worst.what}: {worst.fix}) but this machine has {physical / 2**30:,.1f} GiB; "
            f"change {worst.key}", file=file, key=worst.key)
    return estimates


def estimated_tasks(estimates: list[Estimate]) -> float:
    """The simulation work of a run (tasks, flows or requests), for progress messages."""
    return sum(e.count for e in estimates if e.what != "devices")

"""Serving batch policies as pure decision functions (no simpy, no hardware).

Each policy is a frozen dataclass with ``plan(view: SchedulerView) -> BatchPlan`` (see
``batch.py`` for the contract), one module per paper:

* ``static``: request-level batching (FasterTransformer; Orca's baseline);
* ``continuous``: iteration-level batching, prefill-prioritised, vLLM's default scheduler;
* ``chunked_prefill``: decode-maximal batches under a token budget (SARATHI, SARATHI-Serve);
* ``prefix_aware``: chunked prefill with shared-prefix groups kept together (BatchLLM).

``make_policy(name, **settings)`` builds one by name; an unknown name lists the valid ones.
"""

from __future__ import annotations

from typing import Any

from clustersim.schedules.serving.batch import BatchPlan, Chunk, Prefilling, SchedulerView, Waiting
from clustersim.schedules.serving.chunked_prefill import ChunkedPrefill
from clustersim.schedules.serving.continuous import ContinuousBatching
from clustersim.schedules.serving.prefix_aware import PrefixAware
from clustersim.schedules.serving.queue import WaitingQueue
from clustersim.schedules.serving.static import StaticBatching

POLICIES: dict[str, type] = {cls.name: cls for cls in
                             (StaticBatching, ContinuousBatching, ChunkedPrefill, PrefixAware)}


def make_policy(name: str, **settings: Any):
    """The policy called ``name`` with its settings (unknown settings are a TypeError)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown serving policy {name!r}; expected one of {sorted(POLICIES)}") \
            from None
    return cls(**settings)


__all__ = ["BatchPlan", "Chunk", "ChunkedPrefill", "ContinuousBatching", "POLICIES", "Prefilling",
           "PrefixAware", "SchedulerView", "StaticBatching", "Waiting", "WaitingQueue",
           "make_policy"]

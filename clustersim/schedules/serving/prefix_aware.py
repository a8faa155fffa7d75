"""Prefix-aware grouping: BatchLLM (Zheng et al., 2024), on top of chunked prefill.

Requests that share a prompt prefix are admitted together, and groups whose prefix is already
resident in the KV cache go first, so a shared prefix is computed once and reused while it is
hot instead of being evicted and recomputed between scattered arrivals. Within and between
groups the order is arrival order; batches are otherwise built as in ``ChunkedPrefill``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from clustersim.schedules.serving.batch import SchedulerView, Waiting
from clustersim.schedules.serving.chunked_prefill import ChunkedPrefill


@dataclass(frozen=True)
class PrefixAware(ChunkedPrefill):
    name: ClassVar[str] = "prefix_aware"

    def candidates(self, view: SchedulerView) -> Iterator[Waiting]:
        return view.waiting.grouped(first=view.cached_prefixes)

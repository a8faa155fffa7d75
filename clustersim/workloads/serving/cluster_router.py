"""The cluster router: which replica an arriving request goes to, and the load each one saw.

Policies:

* ``round_robin``: replicas in turn (fixed in advance, so the engines take their requests
  without an event per arrival);
* ``random``: uniformly, from the run's generator (also fixed in advance);
* ``least_outstanding``: the replica with the fewest requests queued, running or arriving
  (vLLM production stack's and SGLang's shortest-queue fallback);
* ``prefix_aware``: KV-cache-aware routing as SGLang's router and Ray Serve's
  PrefixCacheAffinityRouter do it: while the load is balanced (the most and least loaded
  replicas differ by at most ``imbalance_threshold`` outstanding requests), send a request to
  the replica holding the longest prefix of it in its KV cache (its radix tree of hashed
  blocks, or its one-level prefix), the least loaded of those on a tie; when no replica holds
  any of it, or the load is imbalanced, to the least loaded. Real routers keep an approximate
  copy of each replica's cache; here the router reads the engines' caches, so its matches are
  exact (the best case for the policy).

Every routed request records (time, replica, outstanding requests at that replica after it
joined): the load each replica saw over time (``metrics.replica_load``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUTERS = ("round_robin", "least_outstanding", "random", "prefix_aware")
FIXED_ROUTERS = ("round_robin", "random")     # decided before the run, whatever the load


def cached_blocks(engine, seq) -> int:
    """KV blocks of ``seq``'s shareable prefix resident on ``engine`` (held or evictable)."""
    if seq.path:
        return engine.blocks.match_path(seq.path)[0]
    if seq.prefix_blocks and engine.blocks.is_cached(seq.prefix_id):
        return seq.prefix_blocks
    return 0


class ClusterRouter:
    """Chooses an engine for each arriving request (see the module docstring)."""

    def __init__(self, policy: str, replicas: Sequence[Sequence], rng: np.random.Generator, *,
                 imbalance_threshold: int = 16):
        if policy not in ROUTERS:
            raise ValueError(f"unknown router {policy!r}; expected one of {list(ROUTERS)}")
        self.policy, self.replicas, self.rng = policy, list(replicas), rng
        self.imbalance_threshold = imbalance_threshold
        self._turn = 0
        self.routed_to_cache = 0       # prefix_aware: requests sent where a prefix was cached
        self.samples: list[tuple[float, int, int]] = []   # (time, replica, outstanding)

    def fixed_routes(self, count: int) -> np.ndarray:
        """Replica of each of ``count`` requests in arrival order (fixed policies only)."""
        if self.policy == "random":
            return self.rng.integers(len(self.replicas), size=count)
        return np.arange(count) % len(self.replicas)

    def choose(self, seq):
        """The engine ``seq`` goes to."""
        replicas, policy = self.replicas, self.policy
        if policy == "round_robin":
            group = replicas[self._turn % len(replicas)]
            self._turn += 1
        elif policy == "random":
            group = replicas[int(self.rng.integers(len(replicas)))]
        else:
            loads = [sum(e.outstanding() for e in engines) for engines in replicas]
            group = replicas[self._prefix_choice(seq, loads) if policy == "prefix_aware"
                             else loads.index(min(loads))]
        if len(group) == 1:
            return group[0]
        return min(group, key=lambda e: e.outstanding())

    def _prefix_choice(self, seq, loads: list[int]) -> int:
        least = loads.index(min(loads))
        if not (seq.path or seq.prefix_blocks) or max(loads) - loads[least] \
                > self.imbalance_threshold:
            return least
        best, best_key = least, (0, -loads[least])
        for r, engines in enumerate(self.replicas):
            blocks = max(cached_blocks(e, seq) for e in engines)
            key = (blocks, -loads[r])
            if key > best_key:
                best, best_key = r, key
        if best_key[0] > 0:
            self.routed_to_cache += 1
        return best

    def note(self, now: float, replica: int, outstanding: int) -> None:
        self.samples.append((now, replica, outstanding))

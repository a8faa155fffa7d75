"""Expert offloading for MoE inference: experts in host memory, an HBM expert cache, PCIe fetches.

Fidelity: event-level (simpy), one GPU serving a batch of sequences. Routed experts live in the
device's ``offload`` tier (host DDR behind PCIe); an HBM cache holds ``cache_experts`` of them
(ExpertFlow, He et al. 2024; HybriMoE, Zhong et al. 2025; Fiddler, Kamahori et al. 2024). Per
layer of every prefill or decode iteration:

1. attention and the router run on the GPU for the batch's tokens;
2. the tokens' top-k experts (drawn from the routing model, so skew and inter-layer affinity
   shape what is needed) are looked up in the cache: a hit runs on the GPU at once; a miss is
   fetched over the PCIe link (one DMA queue, demand fetches ahead of prefetches) and runs when
   it has arrived, the GPU stalling meanwhile, or, with ``cpu_execution``, runs on the host CPU
   (``hardware/cpu.py``) in parallel with the GPU's hits when that is sooner than the fetch
   (HybriMoE's hybrid scheduling);
3. with ``prefetch: next_layer``, as soon as the router has chosen, the experts the next layer
   will most likely need (the batch's primary experts pushed through the routing model's
   inter-layer transition matrix: an oracle of the *distribution*, not of the draw, as ExpertFlow's
   predictor approximates) are queued for fetch.

Eviction: ``lru`` (least recently used) or ``score`` (lowest use count, decayed by 0.9 per
iteration: HybriMoE's score-aware caching, a frequency over the last iterations rather than
recency, which a layer-by-layer sweep defeats; among equal scores the expert whose layer comes
back last goes, as Belady's rule does for a cyclic sweep); experts the current layer needs are
never evicted. The cache
starts with the experts most popular in a profiling sample. Fetch time is bytes / the offload
tier's bandwidth (PCIe per direction); a fetch overwrites an evicted slot, so HBM use is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from clustersim import ops
from clustersim.ops import dtype_bytes
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.moe import expert_ops
from clustersim.workloads.moe.routing import RoutingModel, expert_counts

POLICIES = ("lru", "score")
PREFETCH = ("none", "next_layer")
SCORE_DECAY = 0.9   # per iteration: uses of the last ~10 iterations count most


@dataclass(frozen=True)
class OffloadOptions:
    cache_experts: int
    policy: str = "lru"
    prefetch: str = "none"
    prefetch_experts: int = 2
    cpu_execution: bool = False


@dataclass
class OffloadStats:
    lookups: int = 0
    hits: int = 0
    prefetch_hits: int = 0          # arrived (or in flight) thanks to a prefetch
    misses: int = 0
    cpu_runs: int = 0
    prefetch_dropped: int = 0
    stall_s: float = 0.0
    fetched_bytes: float = 0.0
    step_times_s: list[float] = field(default_factory=list)


class ExpertCache:
    """Which (layer, expert) weights are in HBM, and what to evict."""

    def __init__(self, capacity: int, policy: str, warm: list[tuple[int, int]]):
        self.capacity, self.policy = capacity, policy
        self.resident: dict[tuple[int, int], float] = {}   # key -> last use or score
        self.clock = 0
        for key in warm[:capacity]:
            self.resident[key] = 0.0

    def touch(self, key: tuple[int, int]) -> None:
        self.clock += 1
        if self.policy == "lru":
            self.resident[key] = float(self.clock)
        else:
            self.resident[key] = self.resident.get(key, 0.0) + 1.0

    def decay(self) -> None:
        if self.policy == "score":
            for key in self.resident:
                self.resident[key] *= SCORE_DECAY

    def admit(self, key: tuple[int, int], pinned: set, layer: int, num_layers: int) -> None:
        """Make room (never evicting ``pinned``) and insert ``key``; ``layer`` is running."""
        if key in self.resident or self.capacity <= 0:
            return
        if len(self.resident) >= self.capacity:
            victims = [k for k in self.resident if k not in pinned]
            if not victims:
                return  # everything cached is needed now: the fetched expert streams through
            if self.policy == "lru":
                victim = min(victims, key=lambda k: (self.resident[k], k))
            else:
                # lowest score; among equals, the expert whose layer comes back last
                victim = min(victims, key=lambda k: (self.resident[k],
                                                     -((k[0] - layer - 1) % num_layers), k))
            del self.resident[victim]
        self.resident[key] = float(self.clock) if self.policy == "lru" else 1.0


class OffloadRun:
    """One prefill plus ``output_len`` decode iterations of a batch on one GPU."""

    def __init__(self, model: ModelConfig, routing: RoutingModel, gpu, cpu, *, batch: int,
                 prompt_len: int, output_len: int, dtype: str, options: OffloadOptions,
                 rng: np.random.Generator):
        self.model, self.routing, self.gpu, self.cpu = model, routing, gpu, cpu
        self.batch, self.prompt_len, self.output_len = batch, prompt_len, output_len
        self.dtype, self.options, self.rng = dtype, options, rng
        self.expert_bytes = float(model.params_expert * dtype_bytes(dtype))
        self.fetch_s = self.expert_bytes / gpu.tier_for("offload").bandwidth_bytes_per_s
        profile = expert_counts(routing.sample(4096, rng), model.num_experts)
        order = np.dstack(np.unravel_index(np.argsort(-profile, axis=None, kind="stable"),
                                           profile.shape))[0]
        self.cache = ExpertCache(options.cache_experts, options.policy,
                                 [(int(l), int(e)) for l, e in order])
        self.stats = OffloadStats()
        self.env = simpy.Environment()
        self.pcie = simpy.PriorityResource(self.env, capacity=1)
        self.inflight: dict[tuple[int, int], simpy.Event] = {}
        self.prefetched: set[tuple[int, int]] = set()
        self.pinned: set[tuple[int, int]] = set()
        self.position = -1   # layer visits so far (iteration x layers + layer)
        self.layer = 0

    # -- costs --------------------------------------------------------------------------------
    def _attention_s(self, tokens_per_seq: int, context: int) -> float:
        m, t = self.model, self.batch * tokens_per_seq
        h, dt = m.hidden_size, self.dtype
        work = [ops.matmul(t, m.q_dim + 2 * m.kv_dim, h, dtype=dt, shared_b=True),
                ops.attention(self.batch, m.num_heads, m.num_kv_heads, tokens_per_seq, context,
                              m.head_dim, dtype=dt, causal=tokens_per_seq > 1),
                ops.matmul(t, h, m.q_dim, dtype=dt, shared_b=True),
                ops.elementwise(t * h, inputs=2, dtype=dt, name="norms_residuals"),
                ops.matmul(t, m.num_experts, h, dtype=dt, shared_b=True, name="router")]
        if m.num_shared_experts:
            shared_ffn = m.ffn_hidden_size * m.num_shared_experts
            work += expert_ops.expert_forward_ops(m, t, ffn=shared_ffn, dtype=dt)
        return expert_ops.time_s(self.gpu, work)

    def _expert_s(self, device, tokens: int) -> float:
        return expert_ops.time_s(device, expert_ops.expert_forward_ops(
            self.model, tokens, ffn=self.model.ffn_hidden_size, dtype=self.dtype))

    # -- fetching -----------------------------------------------------------------------------
    def _fetch(self, key, priority: int, target: int):
        """Copy an expert's weight matrices one by one (each its own tensor), so a demand fetch
        waits for at most one matrix of a prefetch already on the link."""
        stale = False
        for _ in range(self.model.mlp_matrices):
            # a prefetch the running layer now waits for is as urgent as a demand fetch
            urgent = priority == 0 or (self.position == target and key in self.pinned)
            with self.pcie.request(priority=0 if urgent else 1) as slot:
                yield slot
                # A prefetch whose layer has already run (or runs without needing it) is
                # dropped when the link comes free, rather than evicting something useful.
                stale = priority > 0 and (self.position > target or
                                          (self.position == target and key not in self.pinned))
                if stale:
                    break
                yield self.env.timeout(self.fetch_s / self.model.mlp_matrices)
        if stale:
            self.stats.prefetch_dropped += 1
            self.prefetched.discard(key)
        else:
            self.stats.fetched_bytes += self.expert_bytes
            self.cache.admit(key, self.pinned, self.layer, self.model.num_layers)
        self.inflight.pop(key).succeed()

    def _start_fetch(self, key, priority: int, target: int = 0) -> simpy.Event:
        if key not in self.inflight:
            self.inflight[key] = self.env.event()
            self.env.process(self._fetch(key, priority, target))
        return self.inflight[key]

    # -- one layer ----------------------------------------------------------------------------
    def _layer(self, layer: int, choices: np.ndarray, tokens_per_seq: int, context: int):
        env, stats, cache = self.env, self.stats, self.cache
        yield env.timeout(self._attention_s(tokens_per_seq, context))
        counts = np.bincount(choices[:, layer].ravel(), minlength=self.model.num_experts)
        needed = [(layer, int(e)) for e in np.argsort(-counts, kind="stable") if counts[e]]
        self.pinned = set(needed)
        self.position += 1
        self.layer = layer
        if self.options.prefetch == "next_layer" and layer + 1 < self.model.num_layers:
            self._prefetch(layer, choices)
        gpu_free, cpu_free = env.now, env.now
        for key in needed:
            tokens = int(counts[key[1]])
            stats.lookups += 1
            if key in self.prefetched and (key in cache.resident or key in self.inflight):
                stats.prefetch_hits += 1
            self.prefetched.discard(key)
            if key in cache.resident:
                stats.hits += 1
            elif key in self.inflight:      # a prefetch still on its way: wait for the rest
                yield from self._wait_for(self.inflight[key], gpu_free)
            else:
                stats.misses += 1
                gpu_s = self._expert_s(self.gpu, tokens)
                if self.options.cpu_execution and self.cpu is not None:
                    cpu_s = self._expert_s(self.cpu, tokens)
                    cpu_done = max(cpu_free, env.now) + cpu_s
                    if cpu_done < max(gpu_free, env.now + self.fetch_s) + gpu_s:
                        stats.cpu_runs += 1
                        cpu_free = cpu_done
                        continue
                yield from self._wait_for(self._start_fetch(key, priority=0), gpu_free)
            if key in cache.resident:
                cache.touch(key)
            gpu_free = max(gpu_free, env.now) + self._expert_s(self.gpu, tokens)
        end = max(gpu_free, cpu_free)
        if end > env.now:
            yield env.timeout(end - env.now)

    def _wait_for(self, arrival: simpy.Event, gpu_free: float):
        """Wait for an expert's weights; GPU idle time after its queued work counts as stall."""
        if arrival.triggered:
            return
        start = self.env.now
        yield arrival
        self.stats.stall_s += max(0.0, self.env.now - max(start, gpu_free))

    def _prefetch(self, layer: int, choices: np.ndarray) -> None:
        trans = self.routing.transitions[layer]
        # P(a token's pick is e), averaged over the batch; only above-uniform experts are worth
        # the link time (a confident prediction, as ExpertFlow's predictor thresholds)
        predicted = trans[choices[:, layer, 0]].mean(axis=0)
        count = 0
        for e in np.argsort(-predicted, kind="stable"):
            key = (layer + 1, int(e))
            if count >= self.options.prefetch_experts or predicted[e] < 1.0 / len(predicted):
                break
            if key in self.cache.resident or key in self.inflight:
                continue
            self.prefetched.add(key)
            self._start_fetch(key, priority=1, target=self.position + 1)
            count += 1

    # -- the run ------------------------------------------------------------------------------
    def _iteration(self, tokens_per_seq: int, context: int):
        start = self.env.now
        self.cache.decay()
        choices = self.routing.sample(self.batch * tokens_per_seq, self.rng)
        for layer in range(self.model.num_layers):
            yield from self._layer(layer, choices, tokens_per_seq, context)
        self.stats.step_times_s.append(self.env.now - start)

    def _run(self):
        yield from self._iteration(self.prompt_len, self.prompt_len)
        for step in range(self.output_len):
            yield from self._iteration(1, self.prompt_len + step + 1)

    def run(self) -> dict[str, float]:
        self.env.process(self._run())
        self.env.run()
        s = self.stats
        decode = s.step_times_s[1:]
        return {"ttft_s": s.step_times_s[0], "tpot_s": float(np.mean(decode)) if decode else 0.0,
                "hit_rate": s.hits / s.lookups if s.lookups else 1.0,
                "prefetch_hits": s.prefetch_hits, "prefetch_dropped": s.prefetch_dropped,
                "misses": s.misses, "cpu_expert_runs": s.cpu_runs,
                "stall_s": s.stall_s, "fetched_gib": s.fetched_bytes / 2**30,
                "fetch_ms_per_expert": self.fetch_s * 1e3, "total_s": self.env.now}

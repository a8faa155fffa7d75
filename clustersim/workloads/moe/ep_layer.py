"""Expert parallelism in a training step: the MoE block of each layer on an EP group.

Fidelity: event-level. Megatron-Core's all-to-all token dispatcher (``MoEAlltoAllTokenDispatcher``)
with expert data parallelism: an EP group is ``ep`` consecutive data-parallel ranks (of one
pipeline stage and tensor rank); each holds E/ep experts (plus hot replicas) and the tokens of
its own micro-batch. Per layer and micro-batch, on every member:

    permute -> dispatch all-to-allv -> grouped expert GEMMs -> combine all-to-allv -> unpermute

the all-to-allvs carrying the exact per-pair tokens of the sampled routing (``dispatch.py``) as
coflows on the fabric (``hardware/network/all_to_all.py``: hierarchical over NVLink then the
NICs), the expert GEMMs timed per device from its own tokens per expert (``expert_ops.py``).
With ``chunks`` > 1 each pair's tokens are split into chunks whose dispatch, experts and
combine pipeline on separate streams, so all-to-all overlaps expert compute (Tutel's adaptive
pipelining, Hwang et al. 2023; FSMoE, Pan et al. 2025). The backward pass mirrors it (the
combine's gradient goes out as a dispatch, the dispatch's comes back as a combine). Shared
experts (DeepSeekMoE) run on every device's own tokens, between dispatch and combine.

Routing is drawn per (micro-batch, data-parallel rank) from the run's generator, so every
micro-batch has its own imbalance; the placement comes from a profiling sample of the same
routing model (MoETuner and Lina profile routing before placing experts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clustersim import ops
from clustersim.hardware.network.all_to_all import all_to_allv_steps
from clustersim.ops import dtype_bytes
from clustersim.schedules.expert_placement import ExpertPlacement, make_placement, placement_cost
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.moe import expert_ops
from clustersim.workloads.moe.dispatch import LayerDispatch, dispatch, split_chunks
from clustersim.workloads.moe.routing import (RoutingModel, RoutingSpec, affinity_counts,
                                              apply_capacity, capacity_per_expert, expert_counts,
                                              expected_counts, routing_model)


# Tokens of the profiling sample the placement is computed from (enough for ~1% load error on
# 256 experts at top-8).
PROFILE_TOKENS = 65536


@dataclass(frozen=True)
class EPOptions:
    """How the MoE layers run (the YAML ``workload.moe`` block)."""

    routing: RoutingSpec
    placement: str = "round_robin"
    replicas_per_device: int = 0
    chunks: int = 1
    hierarchical: bool = True
    max_levels: int = 16
    ilp_time_limit_s: float = 5.0
    sampling: str = "tokens"     # "tokens": each token draws; "expected": noise-free counts


@dataclass
class EPRecord:
    """What the runs of the MoE blocks did, for metrics (forward passes count tokens)."""

    tokens_expert: np.ndarray              # [layer, expert] (forward, all micro-batches)
    tokens_device: np.ndarray              # [layer, global device]
    dropped: int = 0
    routed: int = 0
    pair_bytes: np.ndarray | None = None   # [global device, global device], fwd + bwd a2a
    blocks: list = field(default_factory=list)  # (layer, {device: (first, experts, last)})


class EPPlan:
    """Routing, placement and the emitter of MoE blocks for one training step."""

    def __init__(self, model: ModelConfig, *, tp: int, dp: int, ep: int, micro_batch: int,
                 seq_len: int, dtype: str, options: EPOptions, cluster, device_of,
                 rng: np.random.Generator, tokens_of=None,
                 activation_tier: str | None = None):
        self.model, self.tp, self.dp, self.ep = model, tp, dp, ep
        # Where the experts' saved activations go (None: not tracked, e.g. inference or full
        # recompute): each device keeps what its own experts received, not the balanced share.
        self.activation_tier = activation_tier
        self.tokens = micro_batch * seq_len
        # tokens per rank of micro-batch (or serving iteration) m; training: always the same
        self.tokens_of = tokens_of or (lambda m: self.tokens)
        self.dtype, self.options, self.cluster = dtype, options, cluster
        self.device_of = device_of          # (stage, tp_rank, dp_rank) -> device index
        self.rng = rng
        self.routing: RoutingModel = routing_model(options.routing, model.num_layers, rng)
        # profile: one micro-batch per EP rank, as a user would measure before placing
        profile = self.routing.sample(min(self.tokens * ep, PROFILE_TOKENS), rng)
        self.profile_loads = expert_counts(profile, model.num_experts)
        self.profile_affinity = affinity_counts(profile, model.num_experts)
        extra = {"time_limit_s": options.ilp_time_limit_s} \
            if options.placement == "affinity_aware" else {}
        self.placement: ExpertPlacement = make_placement(
            options.placement, self.profile_loads, self.profile_affinity, ep,
            devices_per_node=max(1, cluster.gpus_per_node // tp) if cluster.gpus_per_node >= tp
            else 1, replicas_per_device=options.replicas_per_device, **extra)
        self._choices: dict[tuple[int, int], np.ndarray] = {}
        self._dispatch: dict[tuple[int, int, int], LayerDispatch] = {}
        n = cluster.num_devices
        self.record = EPRecord(np.zeros((model.num_layers, model.num_experts), dtype=np.int64),
                               np.zeros((model.num_layers, n), dtype=np.int64),
                               pair_bytes=np.zeros((n, n)))
        self._recorded: set[tuple[int, int, int]] = set()
        self.device = cluster.devices[0]
        self.ffn = model.ffn_hidden_size // tp

    # -- data ---------------------------------------------------------------------------------
    def group_ranks(self, dp_rank: int) -> list[int]:
        first = dp_rank - dp_rank % self.ep
        return list(range(first, first + self.ep))

    def layer_dispatch(self, layer: int, microbatch: int, group_first: int) -> LayerDispatch:
        key = (layer, microbatch, group_first)
        if key not in self._dispatch:
            if self.options.sampling == "expected":
                row = expected_counts(self.routing.popularity[layer:layer + 1],
                                      self.tokens_of(microbatch), self.model.experts_per_token)[0]
                counts = np.tile(row, (self.ep, 1))
            else:
                counts = np.stack([expert_counts(self._sample(microbatch, d)[:, layer:layer + 1],
                                                 self.model.num_experts)[0]
                                   for d in range(group_first, group_first + self.ep)])
            capacity = capacity_per_expert(self.tokens_of(microbatch), self.model.experts_per_token,
                                           self.model.num_experts,
                                           self.options.routing.capacity_factor)
            kept, dropped = apply_capacity(counts, capacity)
            self._dispatch[key] = dispatch(kept, dropped, self.placement.replicas[layer], self.ep)
        return self._dispatch[key]

    def _sample(self, microbatch: int, dp_rank: int) -> np.ndarray:
        key = (microbatch, dp_rank)
        if key not in self._choices:
            self._choices[key] = self.routing.sample(self.tokens_of(microbatch), self.rng)
        return self._choices[key]

    # -- emission -----------------------------------------------------------------------------
    def _a2a(self, program, name, devices, streams_deps, matrix_tokens, labels):
        """One all-to-allv collective over ``devices``; returns task id per device."""
        cluster = self.cluster
        matrix = matrix_tokens * float(self.model.hidden_size * dtype_bytes(self.dtype))
        steps = all_to_allv_steps(matrix, devices, devices_per_node=cluster.gpus_per_node,
                                  intra_latency_s=cluster.intra_node_step_latency_s,
                                  inter_latency_s=cluster.inter_node_step_latency_s,
                                  hierarchical=self.options.hierarchical,
                                  max_levels=self.options.max_levels)
        pb = self.record.pair_bytes
        pb[np.ix_(devices, devices)] += matrix
        members = [(d, stream, deps) for d, (stream, deps) in zip(devices, streams_deps)]
        return program.collective(name, members, steps, labels=labels)

    def emit(self, program, *, stage: int, tp_ranks, group_first: int, layer: int,
             microbatch: int, phase: str, dgrad: bool, wgrad: bool,
             deps: dict[tuple[int, int], list[int]], labels: dict) -> dict[tuple[int, int], int]:
        """The MoE block of ``layer`` for one EP group; returns the last task per (tp, dp)."""
        d = self.layer_dispatch(layer, microbatch, group_first)
        ranks = list(range(group_first, group_first + self.ep))
        backward = phase == "bwd"
        h = self.model.hidden_size
        key = (layer, microbatch, group_first)
        record_tokens = phase == "fwd" and key not in self._recorded
        if record_tokens:
            self._recorded.add(key)
            self.record.tokens_expert[layer] += d.kept.sum(axis=0)
            self.record.dropped += int(d.dropped.sum())
            self.record.routed += int(d.kept.sum() + d.dropped.sum())
        last: dict[tuple[int, int], int] = {}
        block_tasks = {}
        base = {**labels, "layer": layer, "phase": phase, "block": "moe"}
        for t in tp_ranks:
            devices = [self.device_of(stage, t, r) for r in ranks]
            if record_tokens:
                self.record.tokens_device[layer, devices] += d.device_tokens
            if not dgrad:   # weight gradients only (zero-bubble W): local compute, no all-to-all
                for i, r in enumerate(ranks):
                    work = expert_ops.grouped_ops(self.model, enumerate(d.device_expert[i]),
                                                  ffn=self.ffn, dtype=self.dtype, phase="bwd",
                                                  dgrad=False, wgrad=True)
                    _, free = self._activation_effects(d, i, self.options.chunks - 1, phase, True)
                    last[(t, r)] = program.compute(
                        devices[i], "compute", f"experts.wgrad L{layer}",
                        expert_ops.time_s(self.device, work), deps=deps.get((t, r), []),
                        free=free, labels=base)
                continue
            sent = d.kept.sum(axis=1)
            first = {}
            for i, r in enumerate(ranks):
                name = "moe_unpermute.bwd" if backward else "moe_permute"
                op = ops.elementwise(max(int(sent[i]) * h, 1), inputs=2 if backward else 1,
                                     flops_per_element=1.0 if backward else 0.0, dtype=self.dtype)
                first[r] = program.compute(devices[i], "compute", f"{name} L{layer}",
                                           self.device.op_time(op) if sent[i] else 0.0,
                                           deps=deps.get((t, r), []), labels=base)
            pair_chunks = split_chunks(d.pair_tokens, self.options.chunks)
            expert_chunks = split_chunks(d.device_expert, self.options.chunks)
            out_name, back_name = ("grad combine", "grad dispatch") if backward else \
                ("dispatch", "combine")
            combine = {}
            experts = {r: [] for r in ranks}
            for c in range(self.options.chunks):
                chunk_labels = {**base, "chunk": c}
                if self.ep > 1:
                    sent_ids = self._a2a(program, f"{out_name} L{layer} c{c}", devices,
                                         [("ep out", [first[r]]) for r in ranks],
                                         pair_chunks[c], chunk_labels)
                else:
                    sent_ids = [first[r] for r in ranks]
                done = []
                for i, r in enumerate(ranks):
                    work = expert_ops.grouped_ops(self.model, enumerate(expert_chunks[c][i]),
                                                  ffn=self.ffn, dtype=self.dtype,
                                                  phase="bwd" if backward else "fwd",
                                                  dgrad=True, wgrad=wgrad)
                    work += self._shared_ops(microbatch, c, backward, wgrad)
                    alloc, free = self._activation_effects(d, i, c, phase, wgrad)
                    task = program.compute(devices[i], "compute", f"experts L{layer} c{c}",
                                           expert_ops.time_s(self.device, work),
                                           deps=[sent_ids[i]], alloc=alloc, free=free,
                                           labels=chunk_labels)
                    experts[r].append(task)
                    done.append(task)
                if self.ep > 1:
                    back = self._a2a(program, f"{back_name} L{layer} c{c}", devices,
                                     [("ep back", [done[i]]) for i in range(len(ranks))],
                                     pair_chunks[c].T, chunk_labels)
                    for i, r in enumerate(ranks):
                        combine[r] = back[i]
                else:
                    combine = {r: done[i] for i, r in enumerate(ranks)}
            for i, r in enumerate(ranks):
                name = "moe_permute.bwd" if backward else "moe_unpermute"
                op = ops.elementwise(max(int(sent[i]) * h, 1), inputs=1 if backward else 2,
                                     flops_per_element=1.0, dtype=self.dtype)
                last[(t, r)] = program.compute(devices[i], "compute", f"{name} L{layer}",
                                               self.device.op_time(op) if sent[i] else 0.0,
                                               deps=[combine[r]], labels=base)
                block_tasks[devices[i]] = (first[r], tuple(experts[r]), last[(t, r)])
        if phase == "fwd":
            self.record.blocks.append((layer, block_tasks))
        return last

    def _activation_effects(self, d: LayerDispatch, rank: int, chunk: int, phase: str,
                            wgrad: bool):
        """(alloc, free) of the device's expert activations: allocated by the forward's first
        chunk, freed by the last chunk of the pass that computes the weight gradients."""
        if self.activation_tier is None or phase == "recompute":
            return (), ()
        size = float(d.device_tokens[rank]) * self.activation_bytes_per_token()
        if size <= 0:
            return (), ()
        effect = ((self.activation_tier, size),)
        if phase == "fwd" and chunk == 0:
            return effect, ()
        if phase == "bwd" and wgrad and chunk == self.options.chunks - 1:
            return (), effect
        return (), ()

    def _shared_ops(self, microbatch: int, chunk: int, backward: bool, wgrad: bool) -> list:
        shared = getattr(self.model, "num_shared_experts", 0)
        if not shared:
            return []
        tokens = int(split_chunks(np.array([self.tokens_of(microbatch)]),
                                  self.options.chunks)[chunk][0])
        if tokens <= 0:
            return []
        ffn = shared * self.ffn
        if backward:
            return expert_ops.expert_backward_ops(self.model, tokens, ffn=ffn, dtype=self.dtype,
                                                  wgrad=wgrad, expert="shared")
        return expert_ops.expert_forward_ops(self.model, tokens, ffn=ffn, dtype=self.dtype,
                                             expert="shared")

    def layer_params_per_rank(self) -> float:
        """Parameters of one layer on one rank: everything but the routed experts (as with TP),
        plus the rank's most loaded share of routed experts: E/ep and its replicas."""
        from clustersim.workloads import transformer as tfm

        m = self.model
        full = tfm.params_per_rank(m, part="layer", tp=self.tp)
        routed = m.num_experts * m.params_expert // self.tp
        return float(full - routed + self.experts_held() * m.params_expert // self.tp)

    def activation_bytes_per_token(self) -> float:
        """What one routed (token, expert) pair keeps for the backward pass on the expert's
        device: its input row (h) and the up projection's output and down projection's input
        (2f + f for a gated MLP, f/tp each): ``transformer.activation_bytes_breakdown``'s
        MoE terms per routed token."""
        m = self.model
        ffn_terms = (3 if m.gated_mlp else 2) * m.ffn_hidden_size / self.tp
        return float(dtype_bytes(self.dtype) * (m.hidden_size + ffn_terms))

    def balanced_activation_bytes(self) -> float:
        """The same terms for a balanced layer (top-k x tokens per rank), which the per-layer
        activation estimate already counts and EP replaces by each device's own."""
        return self.model.experts_per_token * self.tokens * self.activation_bytes_per_token()

    def experts_held(self) -> int:
        """Most experts (with replicas) any rank holds in one layer."""
        return max(len(self.placement.experts_on(layer, r))
                   for layer in range(self.placement.num_layers) for r in range(self.ep))

    def expert_params_per_rank(self, layers: int) -> float:
        """Routed-expert parameters one rank holds over ``layers`` layers."""
        return float(layers * self.experts_held() * self.model.params_expert // self.tp)

    def placement_summary(self) -> dict[str, float]:
        kw = {"devices_per_node": max(1, self.cluster.gpus_per_node // self.tp)}
        return placement_cost(self.placement, self.profile_loads, self.profile_affinity, **kw)

"""How long one serving iteration takes on each pipeline stage of a replica, from the op model.

Fidelity: op-level, analytical. An iteration runs ``T`` tokens (decodes + prefill chunks) through
every layer. Per layer on one tensor-parallel rank:

* the token-parallel ops of ``transformer.layer_forward`` on ``T`` tokens (norms, QKV, RoPE, the
  output projection, the MLP or MoE experts) and its TP all-reduces (labelled
  ``collective="all_reduce"``), without its attention core, which depends on the batch:
* decode attention: one op over the decode batch, ``attention(D, heads/tp, kv_heads/tp, 1, L)``
  where ``L`` is the mean context, so its KV reads are exactly the batch's (it is memory-bound);
* prefill attention: one causal op per chunk, ``attention(1, ..., q_len=chunk, kv_len=context
  after the chunk)``, so a chunk late in a long prompt pays for the KV it attends to.

The first stage adds the (vocabulary-parallel) embedding, the last the final norm, the LM head on
the sampled tokens only, the logits gather and sampling; between stages the activations
(``T x hidden``) cross the fabric. Collectives and sends are timed in closed form on the idle
fabric (the alpha-beta cost of their flow steps), which is exact for a replica's TP group inside
a node, where NVSwitch gives each GPU its own links.

Caching (the run's cost must not grow with tokens): each component is computed once per bucket
of its sizes (``bucket``: exact up to 1024, then 64 buckets per octave, rounded up, so at most
1.6 % high), and a decode-only iteration is one dictionary lookup per (decode batch, context
bucket).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clustersim import ops
from clustersim.hardware.device import Device
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.serving.kv_cache import kv_heads_per_rank


def bucket(n: int) -> int:
    """``n`` rounded up to its bucket: exact to 1024, then steps of 1/64 of the octave."""
    if n <= 1024:
        return n
    shift = n.bit_length() - 7
    return -(-n >> shift) << shift if n & ((1 << shift) - 1) else n


@dataclass(frozen=True)
class IterationTime:
    """Seconds of compute on each stage, and of the send after each stage but the last."""

    stages_s: tuple[float, ...]
    sends_s: tuple[float, ...]

    @property
    def latency_s(self) -> float:
        """Time through an idle pipeline."""
        return sum(self.stages_s) + sum(self.sends_s)


class IterationModel:
    """Predicts iteration times for one replica layout (model, device, TP, PP).

    ``collective_s(kind, size_bytes)`` times a collective over one TP group and
    ``send_s(stage, size_bytes)`` the send from ``stage`` to the next; both come from the cluster
    (``fabric_timing``) or from a test. ``overhead_s`` is added to each iteration's first stage
    (the scheduler's and sampler's CPU time).
    """

    def __init__(self, model: ModelConfig, device: Device, *, tp: int = 1, pp: int = 1,
                 dtype: str = "bf16", kv_dtype: str | None = None,
                 collective_s: Callable[[str, float], float] | None = None,
                 send_s: Callable[[int, float], float] | None = None, overhead_s: float = 0.0):
        if model.num_layers % pp:
            raise ValueError(f"{model.name}: {model.num_layers} layers do not split over pp={pp}")
        self.model, self.device, self.tp, self.pp = model, device, tp, pp
        self.dtype, self.kv_dtype = dtype, kv_dtype or dtype
        self.layers_per_stage = model.num_layers // pp
        self.q_heads = model.num_heads // tp
        self.kv_heads = kv_heads_per_rank(model, tp)
        self._collective_s = collective_s or (lambda kind, size: 0.0)
        self._send_s = send_s or (lambda stage, size: 0.0)
        self.overhead_s = overhead_s
        self._linear: dict[int, float] = {}
        self._embedding: dict[int, float] = {}
        self._head: dict[int, float] = {}
        self._decode_attention: dict[tuple[int, int], float] = {}
        self._prefill_attention: dict[tuple[int, int], float] = {}
        self._sends: dict[int, tuple[float, ...]] = {}
        self._decode_only: dict[tuple[int, int, int], IterationTime] = {}
        self.predictions = 0     # component computations (cache misses), for benchmarks

    # -- components (cached) ----------------------------------------------------------------
    def _time(self, op_list: Sequence[Op]) -> float:
        total = 0.0
        for op in op_list:
            if op.kind.is_communication:
                if self.tp > 1:
                    total += self._collective_s(str(op.labels.get("collective", "all_reduce")),
                                                op.bytes_read)
            else:
                total += self.device.op_time(op)
        return total

    def linear_s(self, tokens: int) -> float:
        """One layer on ``tokens`` tokens, without its attention core."""
        key = bucket(tokens)
        value = self._linear.get(key)
        if value is None:
            self.predictions += 1
            layer = tfm.layer_forward(self.model, micro_batch=1, seq_len=key, tp=self.tp,
                                      dtype=self.dtype)
            value = self._time([op for op in layer if op.name != "attn_core"])
            self._linear[key] = value
        return value

    def embedding_s(self, tokens: int) -> float:
        key = bucket(tokens)
        value = self._embedding.get(key)
        if value is None:
            self.predictions += 1
            value = self._time(tfm.embedding_forward(self.model, micro_batch=1, seq_len=key,
                                                     tp=self.tp, dtype=self.dtype))
            self._embedding[key] = value
        return value

    def head_s(self, sampled: int) -> float:
        """Final norm, LM head on the sampled tokens, logits gather, sampling."""
        if sampled <= 0:
            return 0.0
        key = bucket(sampled)
        value = self._head.get(key)
        if value is None:
            self.predictions += 1
            m, dtype = self.model, self.dtype
            vocab = math.ceil(m.vocab_size / self.tp)
            head = [ops.elementwise(key * m.hidden_size, kind=OpKind.NORM, flops_per_element=5.0,
                                    dtype=dtype, name="final_norm"),
                    ops.matmul(key, vocab, m.hidden_size, dtype=dtype, shared_b=True,
                               name="lm_head"),
                    ops.elementwise(key * vocab, kind=OpKind.SOFTMAX, flops_per_element=5.0,
                                    dtype="fp32", name="sampling")]
            if self.tp > 1:
                head.append(ops.communication(OpKind.COLLECTIVE,
                                              key * vocab * self.tp * dtype_bytes(dtype),
                                              name="logits.all_gather", collective="all_gather"))
            value = self._time(head)
            self._head[key] = value
        return value

    def decode_attention_s(self, batch: int, mean_context: float) -> float:
        """One layer's attention over ``batch`` single-token queries with this mean context."""
        key = (batch, bucket(max(1, math.ceil(mean_context))))
        value = self._decode_attention.get(key)
        if value is None:
            self.predictions += 1
            op = ops.attention(batch, self.q_heads, self.kv_heads, 1, key[1], self.model.head_dim,
                               dtype=self.kv_dtype, causal=True, name="decode_attention")
            value = self.device.op_time(op)
            self._decode_attention[key] = value
        return value

    def prefill_attention_s(self, tokens: int, context: int) -> float:
        """One layer's causal attention of a ``tokens`` chunk ending at ``context`` tokens."""
        key = (bucket(tokens), bucket(context))
        value = self._prefill_attention.get(key)
        if value is None:
            self.predictions += 1
            q_len = key[0]
            kv_len = max(key[1], q_len)
            op = ops.attention(1, self.q_heads, self.kv_heads, q_len, kv_len, self.model.head_dim,
                               dtype=self.kv_dtype, causal=True, name="prefill_attention")
            value = self.device.op_time(op)
            self._prefill_attention[key] = value
        return value

    def sends_s(self, tokens: int) -> tuple[float, ...]:
        if self.pp == 1:
            return ()
        key = bucket(tokens)
        value = self._sends.get(key)
        if value is None:
            size = key * self.model.hidden_size * dtype_bytes(self.dtype)
            value = tuple(self._send_s(stage, size) for stage in range(self.pp - 1))
            self._sends[key] = value
        return value

    # -- iterations -------------------------------------------------------------------------
    def iteration(self, *, decodes: int = 0, decode_context: int = 0,
                  chunks: Sequence[tuple[int, int]] = (), sampled: int | None = None,
                  pad_decodes_to: int = 0) -> IterationTime:
        """Times of one iteration.

        ``decodes`` sequences decode with ``decode_context`` KV tokens in total (after this
        iteration's token); ``chunks`` are (prefill tokens, context after the chunk);
        ``sampled`` tokens go through the LM head (default: the decodes plus every chunk);
        ``pad_decodes_to`` charges decode work as if that many sequences ran (static batching).
        """
        if not chunks:
            return self.decode_iteration(decodes, decode_context, pad_decodes_to, sampled)
        batch = max(decodes, pad_decodes_to)
        tokens = batch + sum(c for c, _ in chunks)
        per_layer = self.linear_s(tokens)
        if decodes:
            per_layer += self.decode_attention_s(batch, decode_context / decodes)
        for chunk, context in chunks:
            per_layer += self.prefill_attention_s(chunk, context)
        if sampled is None:
            sampled = batch + len(chunks)
        return self._assemble(tokens, per_layer, sampled)

    def decode_iteration(self, decodes: int, decode_context: int, pad_decodes_to: int = 0,
                         sampled: int | None = None) -> IterationTime:
        """A decode-only iteration: one cache lookup per (batch, context bucket)."""
        batch = max(decodes, pad_decodes_to)
        context = bucket(max(1, -(-decode_context // decodes))) if decodes else 0
        key = (batch, decodes, context) if sampled is None else (batch, decodes, context, sampled)
        value = self._decode_only.get(key)
        if value is None:
            per_layer = self.linear_s(batch) if batch else 0.0
            if decodes:
                per_layer += self.decode_attention_s(batch, context)
            value = self._assemble(batch, per_layer, batch if sampled is None else sampled)
            self._decode_only[key] = value
        return value

    def _assemble(self, tokens: int, per_layer: float, sampled: int) -> IterationTime:
        if tokens == 0:
            return IterationTime((self.overhead_s,) + (0.0,) * (self.pp - 1), (0.0,) * (self.pp - 1))
        stages = [self.layers_per_stage * per_layer for _ in range(self.pp)]
        stages[0] += self.embedding_s(tokens) + self.overhead_s
        stages[-1] += self.head_s(sampled)
        return IterationTime(tuple(stages), self.sends_s(tokens))

    def prefill_s(self, prompt_tokens: int) -> float:
        """A lone request's prefill iteration through an idle pipeline (its TTFT)."""
        return self.iteration(chunks=[(prompt_tokens, prompt_tokens)]).latency_s


# -- the idle-fabric closed forms the model is built with -------------------------------------

def idle_steps_s(fabric, steps) -> float:
    """Alpha-beta time of collective flow steps on an idle fabric: per repetition, the step's
    latency plus the longest path latency plus the most loaded link's bytes over its capacity."""
    total = 0.0
    for step in steps:
        load: dict[int, float] = {}
        latency = 0.0
        for src, dst in step.pairs:
            for path, fraction in fabric.router.paths(src, dst, fabric):
                latency = max(latency, fabric.path_latency_s(path))
                for link in path:
                    load[link] = load.get(link, 0.0) + step.bytes_per_flow * fraction
        drain = max((size / fabric.capacity[link] for link, size in load.items()), default=0.0)
        total += step.repeat * (step.latency_s + latency + drain)
    return total


def fabric_timing(cluster, fabric, group: Sequence[int], stage_leads: Sequence[int]):
    """``collective_s`` and ``send_s`` callables for a replica: TP collectives over ``group``
    (the first stage's ranks; every stage's group is alike), sends between stage leads."""
    from clustersim.sim.program import FlowStep

    cache: dict[tuple[str, float], float] = {}

    def collective_s(kind: str, size_bytes: float) -> float:
        key = (kind, size_bytes)
        if key not in cache:
            cache[key] = idle_steps_s(fabric, cluster.collective(kind, list(group), size_bytes))
        return cache[key]

    def send_s(stage: int, size_bytes: float) -> float:
        src, dst = stage_leads[stage], stage_leads[stage + 1]
        return idle_steps_s(fabric, (FlowStep(((src, dst),), size_bytes),))

    return collective_s, send_s

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

Caching (the run's cost must not grow with tokens): the token-parallel part of each stage is
computed once per (tokens bucket, sampled tokens bucket) (``bucket``: exact up to 512, then 32
buckets per octave, rounded up, so at most 3 % high); attention ops once per (batch, query bucket,
context grid point), the grid being exact to 64 and 16 points per octave above, with linear
interpolation between points (exact within a roofline regime, since for a fixed query shape
an attention op's FLOPs and bytes are linear in its context). A decode-only iteration is two or
three dictionary lookups and a few additions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from clustersim import ops
from clustersim.hardware.device import Device
from clustersim.ops import Op, OpKind, dtype_bytes
from clustersim.workloads import transformer as tfm
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.serving import pim_split
from clustersim.workloads.serving.iteration_cache import shared_caches
from clustersim.workloads.serving.kv_cache import kv_heads_per_rank


def context_grid(context: float) -> tuple[int, int]:
    """Grid points around a context length: integers to 64, then 16 per octave."""
    n = int(context)
    if n < 64:
        return n, n + 1
    shift = n.bit_length() - 5
    lo = (n >> shift) << shift
    return lo, lo + (1 << shift)


def bucket(n: int) -> int:
    """``n`` rounded up to its bucket: exact to 512, then 32 steps per octave (so at most 3 %
    high). Up to 4096 every multiple of 128 (a GEMM tile row) is a bucket edge, so rounding up
    never adds a tile row."""
    if n <= 512:
        return n
    shift = n.bit_length() - 6
    return -(-n >> shift) << shift


@functools.lru_cache(maxsize=16384)
def _layer_ops(model: ModelConfig, tokens: int, tp: int, dtype: str) -> tuple[Op, ...]:
    """One layer's forward ops on ``tokens`` tokens: a pure function of its (hashable, frozen)
    arguments, kept for the process, since building the ops is most of an uncached iteration
    time and every run (sweep point, replica) of the same model asks for the same buckets."""
    return tuple(tfm.layer_forward(model, micro_batch=1, seq_len=tokens, tp=tp, dtype=dtype))


@functools.lru_cache(maxsize=16384)
def _embedding_ops(model: ModelConfig, tokens: int, tp: int, dtype: str) -> tuple[Op, ...]:
    """The embedding's forward ops on ``tokens`` tokens (pure, kept as ``_layer_ops``)."""
    return tuple(tfm.embedding_forward(model, micro_batch=1, seq_len=tokens, tp=tp, dtype=dtype))


@functools.lru_cache(maxsize=65536)
def _attention_op(batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int,
                  head_dim: int, dtype: str) -> Op:
    """A causal attention op (pure, kept as ``_layer_ops``: the device caches its time by the
    op's cost, so a kept op skips building and validating it again)."""
    return ops.attention(batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype=dtype,
                         causal=True,
                         name="decode_attention" if q_len == 1 else "prefill_attention")


class IterationTime(NamedTuple):
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
    (the scheduler's and sampler's CPU time). ``cache_key`` (hashable) names what else the
    collective and send times depend on, with ``cache_anchors`` the objects whose ``id`` it
    holds: models with equal arguments and keys share their component caches
    (``iteration_cache``); None (the default, and always with ``overlap``) keeps them private.
    """

    def __init__(self, model: ModelConfig, device: Device, *, tp: int = 1, pp: int = 1,
                 dtype: str = "bf16", kv_dtype: str | None = None,
                 collective_s: Callable[[str, float], float] | None = None,
                 send_s: Callable[[int, float], float] | None = None, overhead_s: float = 0.0,
                 overlap=None, cache_key: tuple | None = None, cache_anchors: tuple = ()):
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
        key = None
        if cache_key is not None and overlap is None:
            key = (model, id(device), tp, pp, dtype, self.kv_dtype, float(overhead_s), cache_key)
        # linear / embedding / head: per token bucket; attention: (batch, query, context);
        # sends and all-reduces per bucket; fixed parts: (tokens, sampled) -> (stages, sends)
        (self._linear, self._embedding, self._head, self._attention, self._sends,
         self._all_reduces, self._fixed_parts) = shared_caches(key, (device, *cache_anchors))
        self._prefill_alone: dict[int, float] = {}     # prompt tokens -> first-stage seconds
        self.predictions = 0     # component computations (cache misses), for benchmarks
        # NanoFlow nano-batch overlap (a ``nanoflow.NanoFlowConfig``), or None: ops in series.
        self.overlap = None
        if overlap is not None:
            from clustersim.workloads.serving.nanoflow import NanoBatchOverlap

            self.overlap = NanoBatchOverlap(overlap, self)

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
            layer = _layer_ops(self.model, key, self.tp, self.dtype)
            value = self._time([op for op in layer if op.name != "attn_core"])
            self._linear[key] = value
        return value

    def layer_all_reduces(self, tokens: int) -> tuple[int, float]:
        """(all-reduces, their bytes) of one layer on ``tokens`` tokens (its bucket): what the
        engine puts on the shared fabric when TP collectives run as flows."""
        key = bucket(tokens)
        value = self._all_reduces.get(key)
        if value is None:
            layer = _layer_ops(self.model, key, self.tp, self.dtype)
            sizes = [op.bytes_read for op in layer if op.kind.is_communication
                     and op.labels.get("collective", "all_reduce") == "all_reduce"]
            value = self._all_reduces[key] = (len(sizes), float(sum(sizes)))
        return value

    def embedding_s(self, tokens: int) -> float:
        key = bucket(tokens)
        value = self._embedding.get(key)
        if value is None:
            self.predictions += 1
            value = self._time(_embedding_ops(self.model, key, self.tp, self.dtype))
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

    def _attention_point(self, batch: int, q_len: int, kv_len: int) -> float:
        key = (batch, q_len, kv_len)
        value = self._attention.get(key)
        if value is None:
            self.predictions += 1
            value = self.device.op_time(_attention_op(batch, self.q_heads, self.kv_heads, q_len,
                                                      kv_len, self.model.head_dim, self.kv_dtype))
            self._attention[key] = value
        return value

    def _along_context(self, batch: int, q_len: int, context: float) -> float:
        """Attention time at a context between two grid points, interpolated linearly (for a
        fixed query shape the op's FLOPs and bytes are linear in the context)."""
        if context < q_len:
            context = q_len
        whole = int(context)            # ``context_grid``, inline (the hot path of a run)
        if whole < 64:
            lo, hi = whole, whole + 1
        else:
            shift = whole.bit_length() - 5
            lo = (whole >> shift) << shift
            hi = lo + (1 << shift)
        if lo < q_len:
            lo = q_len                  # a chunk never sees fewer keys than its own queries
        cache = self._attention
        t_lo = cache.get((batch, q_len, lo))
        if t_lo is None:
            t_lo = self._attention_point(batch, q_len, lo)
        if context <= lo:
            return t_lo
        t_hi = cache.get((batch, q_len, hi))
        if t_hi is None:
            t_hi = self._attention_point(batch, q_len, hi)
        return t_lo + (t_hi - t_lo) * (context - lo) / (hi - lo)

    def decode_segment(self, batch: int, mean_context: float) -> tuple[int, int, float, float]:
        """(lo, hi, t_lo, t_hi): for lo <= c < hi, decode attention at mean context c is t_lo
        when c <= lo, else t_lo + (t_hi - t_lo) (c - lo) / (hi - lo), exactly as
        ``decode_attention_s`` computes it (lets a run of decode iterations skip the lookups)."""
        lo, hi = context_grid(mean_context if mean_context >= 1 else 1)
        if lo < 1:
            lo = 1
        cache = self._attention
        t_lo = cache.get((batch, 1, lo))
        if t_lo is None:
            t_lo = self._attention_point(batch, 1, lo)
        t_hi = cache.get((batch, 1, hi))
        if t_hi is None:
            t_hi = self._attention_point(batch, 1, hi)
        return lo, hi, t_lo, t_hi

    def decode_attention_s(self, batch: int, mean_context: float) -> float:
        """One layer's attention over ``batch`` single-token queries with this mean context."""
        return self._along_context(batch, 1, mean_context)

    def prefill_attention_s(self, tokens: int, context: int) -> float:
        """One layer's causal attention of a ``tokens`` chunk ending at ``context`` tokens."""
        return self._along_context(1, bucket(tokens), context)

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
        batch = max(decodes, pad_decodes_to) if decodes else 0
        if sampled is None:
            sampled = batch + len(chunks)
        if self.overlap is not None:
            return self._overlapped(batch, decode_context / decodes if decodes else 0.0, chunks,
                                    sampled)
        if not chunks:
            return self.decode_iteration(decodes, decode_context, pad_decodes_to, sampled)
        # (``decode_attention_s`` and ``prefill_attention_s`` inlined: a mixed iteration per
        # request is the hot path of chunked prefill)
        along = self._along_context
        tokens = batch
        per_layer = 0.0
        if decodes:
            per_layer += along(batch, 1, decode_context / decodes)
        for chunk, context in chunks:
            tokens += chunk
            per_layer += along(1, chunk if chunk <= 512 else bucket(chunk), context)
        stages, sends = self._fixed(tokens, sampled)
        extra = self.layers_per_stage * per_layer
        if self.pp == 1:
            return IterationTime((stages[0] + extra,), sends)
        return IterationTime(tuple(t + extra for t in stages), sends)

    def decode_iteration(self, decodes: int, decode_context: int, pad_decodes_to: int = 0,
                         sampled: int | None = None) -> IterationTime:
        """A decode-only iteration: a few cache lookups and a little arithmetic."""
        batch = (decodes if decodes >= pad_decodes_to else pad_decodes_to) if decodes else 0
        if self.overlap is not None:
            return self._overlapped(batch, decode_context / decodes if decodes else 0.0, (),
                                    batch if sampled is None else sampled)
        key = (batch, batch if sampled is None else sampled)
        fixed = self._fixed_parts.get(key)
        stages, sends = fixed if fixed is not None else self._fixed(*key)
        if not decodes:
            return IterationTime(stages, sends)
        extra = self.layers_per_stage * self._along_context(batch, 1, decode_context / decodes)
        extra -= pim_split.overlap_saving_s(self, batch, decode_context / decodes)  # NPU+PIM
        if self.pp == 1:
            return IterationTime((stages[0] + extra,), sends)
        return IterationTime(tuple(t + extra for t in stages), sends)

    def _overlapped(self, batch: int, mean_context: float, chunks, sampled: int) -> IterationTime:
        """An iteration whose layers overlap nano-batches (``nanoflow.py``): the stage times
        with each layer's ops in series replaced by the overlapped layer time."""
        tokens = batch + sum(c for c, _ in chunks)
        stages, sends = self._fixed(tokens, sampled)
        prefill = sum(self.prefill_attention_s(c, context) for c, context in chunks)
        layers = self.layers_per_stage
        swap = layers * (self.overlap.layer_s(tokens, batch, mean_context, prefill)
                         - self.linear_s(tokens)) if tokens else 0.0
        return IterationTime(tuple(t + swap for t in stages), sends)

    def _fixed(self, tokens: int, sampled: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Stage times without attention cores, and sends, for ``tokens`` and ``sampled``."""
        key = (tokens, sampled)
        value = self._fixed_parts.get(key)
        if value is None:
            bucketed = (bucket(tokens), bucket(sampled))
            value = self._fixed_parts.get(bucketed)
            if value is None:
                value = self._fixed_parts[bucketed] = self._fixed_uncached(*bucketed)
            self._fixed_parts[key] = value
        return value

    def _fixed_uncached(self, tokens: int, sampled: int):
        if tokens == 0:
            return ((self.overhead_s,) + (0.0,) * (self.pp - 1), (0.0,) * (self.pp - 1))
        stages = [self.layers_per_stage * self.linear_s(tokens)] * self.pp
        stages[0] += self.embedding_s(tokens) + self.overhead_s
        stages[-1] += self.head_s(sampled)
        return tuple(stages), self.sends_s(tokens)

    def prefill_alone_s(self, tokens: int) -> float:
        """First-stage seconds of an iteration that prefills one whole prompt of ``tokens``
        alone (nothing cached, nothing decoding): ``iteration`` itself, kept per length for
        the engine's fast path (``continuous_run``)."""
        value = self.iteration(decodes=0, decode_context=0, chunks=[(tokens, tokens)],
                               sampled=1, pad_decodes_to=0).stages_s[0]
        self._prefill_alone[tokens] = value
        return value

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

    lines: dict[str, tuple[float, float]] = {}
    probe = float(2**20)

    def collective_s(kind: str, size_bytes: float) -> float:
        # A collective's flow steps do not change with its size, only their bytes, so its
        # idle-fabric time is affine in the size: two evaluations give every size exactly.
        line = lines.get(kind)
        if line is None:
            one, two = (idle_steps_s(fabric, cluster.collective(kind, list(group), size))
                        for size in (probe, 2 * probe))
            line = lines[kind] = (one - (two - one), (two - one) / probe)
        return line[0] + line[1] * size_bytes

    def send_s(stage: int, size_bytes: float) -> float:
        src, dst = stage_leads[stage], stage_leads[stage + 1]
        return idle_steps_s(fabric, (FlowStep(((src, dst),), size_bytes),))

    return collective_s, send_s

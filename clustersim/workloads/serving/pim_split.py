"""A decode layer split between a host NPU and PIM, blocked or concurrent (NeuPIMs).

On an ``NpuPim`` device (``hardware/npu_pim.py``) each decode layer has three parts for a
batch of B sequences: the host's GEMMs before attention (norm, QKV, RoPE: ``g1``), attention
over the KV cache (on PIM under dispatch ``attention``: ``a``) and the host's work after it
(output projection, TP all-reduce, MLP: ``g2``); each is the device model's time for the ops
at that batch, so the side each op runs on follows the device's dispatch rule.

* ``blocked`` (a plain PIM: its banks are either serving the host or computing):
  layer = g1(B) + a(B) + g2(B), which is what the serving iteration charges anyway.
* ``concurrent`` (NeuPIMs' dual row buffers with sub-batch interleaving, Heo et al. ASPLOS
  2024, section 5): the batch is split in two halves; the host runs one half's GEMMs while
  PIM runs the other half's attention. Per half, the host's block between two attentions is
  ``x = g2(B/2) of layer l + g1(B/2) of layer l + 1``; the two halves alternate on each side::

      host:  X(0,0) X(1,0) X(0,1) X(1,1) ...      X(s,l) waits for A(s,l-1)
      PIM:          A(0,0) A(1,0) A(0,1) ...      A(s,l) waits for X(s,l)

  The schedule is computed exactly (list scheduling, O(layers)). Splitting the batch reads
  the host's weights twice, so for a small batch it can be slower; the runtime then keeps the
  batch whole (dual row buffers alone give no overlap along one dependency chain), so
  concurrent = min(interleaved, blocked) and never exceeds blocked.

The serving iteration calls ``overlap_saving_s`` for each decode-only iteration (0 for any
other device) and subtracts it from its blocked time; ``busy_s`` gives the host's and PIM's
busy time for the trace.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from clustersim import ops
from clustersim.hardware.npu_pim import NpuPim
from clustersim.workloads import transformer as tfm


class LayerParts(NamedTuple):
    """Seconds of one decode layer's parts at one batch (``g1``, ``a``, ``g2``) and the part
    of them that ran on PIM."""

    g1: float
    a: float
    g2: float
    pim_s: float


def layer_parts(iteration, batch: int, context: float) -> LayerParts:
    """``iteration`` is the serving ``IterationModel`` (model, device, tp, collectives)."""
    device: NpuPim = iteration.device
    model, tp, dtype = iteration.model, iteration.tp, iteration.dtype
    layer = tfm.layer_forward(model, micro_batch=1, seq_len=batch, tp=tp, dtype=dtype)
    before, after, pim = 0.0, 0.0, 0.0
    seen_attention = False
    for op in layer:
        if op.name == "attn_core":
            seen_attention = True
            continue
        if op.kind.is_communication:
            seconds = iteration._collective_s(str(op.labels.get("collective", "all_reduce")),
                                              op.bytes_read) if tp > 1 else 0.0
        else:
            seconds = device.op_time(op)
            if device.place(op) == "pim":
                pim += seconds
        if seen_attention:
            after += seconds
        else:
            before += seconds
    attention = ops.attention(batch, iteration.q_heads, iteration.kv_heads, 1,
                              max(1, int(round(context))), model.head_dim,
                              dtype=iteration.kv_dtype, causal=True, name="decode_attention")
    a = device.op_time(attention)
    if device.place(attention) == "pim":
        pim += a
    return LayerParts(before, a, after, pim)


def interleaved_s(half: LayerParts, other: LayerParts, layers: int) -> float:
    """Two sub-batches through ``layers`` layers, host and PIM alternating (module docstring).
    ``half`` and ``other`` are the parts of the two sub-batches (equal or one row apart)."""
    parts = (half, other)
    host_free = pim_free = 0.0
    attention_done = [0.0, 0.0]
    for layer in range(layers + 1):
        for s in (0, 1):
            p = parts[s]
            host = (p.g2 if layer else 0.0) + (p.g1 if layer < layers else 0.0)
            start = max(host_free, attention_done[s])
            host_free = start + host
            if layer < layers:
                start = max(pim_free, host_free)
                pim_free = start + p.a
                attention_done[s] = pim_free
    return host_free


def overlap_saving_s(iteration, batch: int, context: float) -> float:
    """Seconds a concurrent NPU+PIM saves on one pipeline stage's decode layers, against the
    blocked sum the iteration charges; 0 for other devices, blocked mode or a batch of one."""
    device = iteration.device
    if not isinstance(device, NpuPim) or device.overlap != "concurrent" or batch < 2:
        return 0.0
    cache = iteration.__dict__.setdefault("_pim_overlap_cache", {})
    key = (batch, _grid(context))
    saved = cache.get(key)
    if saved is None:
        layers = iteration.layers_per_stage
        context = key[1]
        whole = layer_parts(iteration, batch, context)
        blocked = layers * (whole.g1 + whole.a + whole.g2)
        first, second = math.ceil(batch / 2), batch // 2
        split = interleaved_s(layer_parts(iteration, first, context),
                              layer_parts(iteration, second, context), layers)
        saved = cache[key] = max(0.0, blocked - split)
    return saved


def _grid(context: float) -> int:
    """The serving iteration's context grid point at or below ``context`` (exact to 64, then 16
    per octave), so that decode steps share cached layer parts."""
    from clustersim.workloads.serving.iteration import context_grid

    return max(1, context_grid(max(1.0, context))[0])


def busy_s(iteration, batch: int, context: float) -> tuple[float, float]:
    """(host seconds, PIM seconds) of one stage's decode layers at this batch (for traces)."""
    cache = iteration.__dict__.setdefault("_pim_busy_cache", {})
    key = (batch, _grid(context))
    value = cache.get(key)
    if value is None:
        parts = layer_parts(iteration, batch, key[1])
        layers = iteration.layers_per_stage
        total = parts.g1 + parts.a + parts.g2
        value = cache[key] = (layers * (total - parts.pim_s), layers * parts.pim_s)
    return value


def record_split(recorder, device_name: str, start_s: float, iteration, batch: int,
                 context: float) -> None:
    """Spans on the device's ``npu`` and ``pim`` streams with each side's busy time in this
    decode iteration: one after the other when the sides cannot overlap (blocked, or when the
    batch is kept whole), side by side when sub-batch interleaving overlaps them. Their length
    is each side's total over the stage's layers; the layer-by-layer alternation is not drawn."""
    device = iteration.device
    if not isinstance(device, NpuPim) or batch < 1:
        return
    host, pim = busy_s(iteration, batch, context)
    overlapped = overlap_saving_s(iteration, batch, context) > 0
    pim_start = start_s if overlapped else start_s + host
    labels = {"batch": batch, "overlap": device.overlap, "overlapped": overlapped,
              "layers": iteration.layers_per_stage}
    recorder.span(device_name, "npu", "npu: GEMMs and vector ops", start_s, start_s + host,
                  "npu", **labels)
    if pim > 0:
        recorder.span(device_name, "pim", "pim: attention / GEMV", pim_start, pim_start + pim,
                      "pim", **labels)

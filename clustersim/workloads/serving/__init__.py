"""LLM serving with KV-cache behaviour: the ``serving`` workload.

Parts: ``requests`` (arrivals, lengths, CSV traces), ``trace_formats`` (the Azure, BurstGPT and
Mooncake traces), ``kv_cache`` (bytes per token, capacity, paged block accounting with shared
prefixes and swap), ``radix_cache`` (prefix tree of hashed blocks, LRU), ``iteration`` (iteration
time from the op model, cached per batch-shape bucket), ``nanoflow`` (nano-batch overlap inside
an iteration), ``sequence`` (sequences and the O(1) decode group), ``replica`` (a virtual
engine as a simpy process), ``decode_run`` (its back-to-back decode fast path),
``continuous_run`` (its low-load fast path for continuous batching and chunked prefill:
arrivals, prefills, decodes and finishes in one loop), ``iteration_cache`` (iteration-model
caches shared by runs of one replica layout), ``tp_fabric``
(TP all-reduces as fabric flows), ``placement`` and ``outcome``, ``disaggregation`` (pools,
prefill-to-decode KV transfer), ``cluster_router``, ``deployment`` (pools, replicas, arrivals,
the run), ``metrics``, ``plots`` and ``workload`` (the YAML schema). Batch policies are pure
functions in ``clustersim.schedules.serving``.

Fidelity: event-level per scheduler iteration, op-level (analytical) inside an iteration.
"""

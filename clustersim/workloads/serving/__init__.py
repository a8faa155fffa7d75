"""LLM serving with KV-cache behaviour: the ``serving`` workload.

Parts: ``requests`` (arrivals, lengths, CSV traces), ``kv_cache`` (bytes per token, capacity,
paged block accounting with shared prefixes and swap), ``iteration`` (iteration time from the op
model, cached per batch-shape bucket), ``sequence`` (sequences and the O(1) decode group),
``replica`` (a virtual engine as a simpy process; pipeline stages), ``deployment`` (replicas,
routing, arrivals, the run), ``metrics``, ``plots`` and ``workload`` (the YAML schema). Batch
policies are pure functions in ``clustersim.schedules.serving``.

Fidelity: event-level per scheduler iteration, op-level (analytical) inside an iteration.
"""

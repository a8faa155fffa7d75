"""Workloads: what runs. Ops for transformer layers, model configs, training steps, MoE
routing and LLM serving; each YAML ``workload: {kind: ...}`` is a registered ``Workload``.

Fidelity: op-level. Work is expressed as ``clustersim.ops.Op``s whose durations come from the
device model; static workloads compile to a ``sim.Program``, dynamic ones are simpy processes.
"""

from clustersim.workloads import training  # noqa: F401  (registers kind "training")
from clustersim.workloads.serving import workload as _serving  # noqa: F401  (registers kind "serving")
from clustersim.workloads import collective_bench  # noqa: F401
from clustersim.workloads import layer_sweep  # noqa: F401  (registers kind "layer_sweep")
from clustersim.workloads import coe  # noqa: F401  (registers kind "coe")
from clustersim.workloads.moe import inference as _moe_inference  # noqa: F401  (registers kind "moe_inference")

"""Workloads: what runs. Ops for transformer layers, model configs, training steps, MoE
routing and LLM serving; each YAML ``workload: {kind: ...}`` is a registered ``Workload``.

Fidelity: op-level. Work is expressed as ``clustersim.ops.Op``s whose durations come from the
device model; static workloads compile to a ``sim.Program``, dynamic ones are simpy processes.
"""

import importlib

# The built-in kinds and the module that registers each: a run imports only its own kind's
# module (all of them cost a newcomer's first run a few tenths of a second).
BUILT_IN_KINDS = {
    "training": "clustersim.workloads.training",
    "serving": "clustersim.workloads.serving.workload",
    "collective": "clustersim.workloads.collective_bench",
    "layer_sweep": "clustersim.workloads.layer_sweep",
    "coe": "clustersim.workloads.coe",
    "moe_inference": "clustersim.workloads.moe.inference",
}


def register_built_in(kind: str | None = None) -> None:
    """Import the module of built-in ``kind`` (every built-in kind when None or unknown)."""
    modules = [BUILT_IN_KINDS[kind]] if kind in BUILT_IN_KINDS else BUILT_IN_KINDS.values()
    for module in modules:
        importlib.import_module(module)

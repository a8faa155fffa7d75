"""Does a model's resident state fit the tier a device keeps it on? Checked before a run.

Fidelity: analytical lower bound. A training rank keeps, per parameter of its share
(``params / (tp x pp)``), bf16 weights (2 B), fp32 gradients (4 B) and Adam's fp32 states
(12 B, divided by dp under ZeRO-1): the same bytes ``training.TrainingWorkload`` makes resident
(Rajbhandari et al. 2020). Under expert parallelism the routed experts are further split over
``ep`` ranks (at least; the bound takes the smallest share). Activations come on top, so
passing this check does not promise the step fits; failing it means no schedule can.
"""

from __future__ import annotations

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.workloads.models import ModelConfig


def training_state_bytes(model: ModelConfig, *, tp: int, pp: int, dp: int,
                         zero_stage: int = 0, ep: int = 1) -> float:
    per_param = 2 + 4 + 12 / (dp if zero_stage >= 1 else 1)
    routed = model.num_layers * model.num_experts * model.params_expert if model.is_moe else 0
    params = (model.params_total - routed) / (tp * pp) + routed / (tp * pp * ep)
    return params * per_param


def check_training_fits(model: ModelConfig, cluster: Cluster, *, tp: int, pp: int, dp: int,
                        zero_stage: int = 0, ep: int = 1) -> None:
    """ConfigError naming the device, its tier and the fixes when the state cannot fit."""
    need = training_state_bytes(model, tp=tp, pp=pp, dp=dp, zero_stage=zero_stage, ep=ep)
    device = cluster.devices[0]
    tier = device.tier_for("weights")
    if need > tier.capacity_bytes:
        gib = 2**30
        raise ConfigError(
            f"{model.name} fits no tier: its weights, gradients and optimizer states need "
            f"{need / gib:.1f} GiB per device at tp={tp}, pp={pp}, dp={dp}, ep={ep} "
            f"(ZeRO-{zero_stage}), "
            f"but {device.name} keeps them on {tier.name!r}, which holds "
            f"{tier.capacity_bytes / gib:.1f} GiB; raise tp, pp or ep, use zero_stage: 1, "
            "or pick a device with more memory", key="workload.parallel")

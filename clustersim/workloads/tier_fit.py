"""Does a model's resident state fit the tier a device keeps it on? Checked before a run; and,
with ``cluster.spill: true``, which part of it waits on the offload tier instead.

Fidelity: analytical lower bound. A training rank keeps, per parameter of its share
(``params / (tp x pp)``), bf16 weights (2 B), fp32 gradients (4 B) and Adam's fp32 states
(12 B, divided by dp under ZeRO-1): the same bytes ``training.TrainingWorkload`` makes resident
(Rajbhandari et al. 2020). Activations come on top, so passing this check does not promise the
step fits; failing it means no schedule can.

Under expert parallelism the routed experts are further split over ``ep`` ranks (at least; the
bound takes the smallest share).

Spilling follows ZeRO-Offload (Ren et al., USENIX ATC 2021): the optimizer states first, then the
gradients, move to the offload tier (an RDU's DDR, a GPU's host memory); the weights stay on the
default tier, which the forward and backward read on every layer. The Adam step reads and writes
every spilled byte once (gradients: written by the backward, read by the step; both counted at
the step), so its spilled traffic is 2 x the spilled bytes, priced by ``hardware.spill``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clustersim.errors import ConfigError
from clustersim.hardware.cluster import Cluster
from clustersim.hardware.device import Device
from clustersim.hardware.spill import SpilledDevice
from clustersim.workloads.models import ModelConfig

GIB = 2**30
SPILL_ORDER = ("optimizer", "gradients")     # ZeRO-Offload: what leaves the device first
_WORDS = {"optimizer": "the optimizer states", "gradients": "the gradients"}


def _size(size_bytes: float) -> str:
    return (f"{size_bytes / GIB:.1f} GiB" if size_bytes >= 0.1 * GIB
            else f"{size_bytes / 2**20:.2f} MiB")


def state_bytes_per_param(*, dp: int, zero_stage: int = 0) -> dict[str, float]:
    """Resident bytes per parameter of a rank's share, by kind (ZeRO-2/3: zero_sharding.py)."""
    if zero_stage >= 2:
        from clustersim.workloads.zero_sharding import state_bytes_per_param as sharded

        return sharded(dp=dp, zero_stage=zero_stage)
    return {"weights": 2.0, "gradients": 4.0, "optimizer": 12.0 / (dp if zero_stage >= 1 else 1)}


def training_state_bytes(model: ModelConfig, *, tp: int, pp: int, dp: int,
                         zero_stage: int = 0, ep: int = 1) -> float:
    per_param = sum(state_bytes_per_param(dp=dp, zero_stage=zero_stage).values())
    return rank_params(model, tp=tp, pp=pp, ep=ep) * per_param


def rank_params(model: ModelConfig, *, tp: int, pp: int, ep: int = 1) -> float:
    """Parameters one rank holds (a lower bound under EP: routed experts split over ep)."""
    routed = model.num_layers * model.num_experts * model.params_expert if model.is_moe else 0
    return (model.params_total - routed) / (tp * pp) + routed / (tp * pp * ep)


@dataclass(frozen=True)
class TrainingSpill:
    """Which state kinds wait on the offload tier (empty: nothing spilled)."""

    kinds: tuple[str, ...]
    per_param: dict[str, float]          # resident bytes per parameter, by kind
    dp: int
    zero_stage: int

    @property
    def spilled_bytes_per_param(self) -> float:
        return sum(self.per_param[k] for k in self.kinds)

    def place(self, device: Device, params: float, *,
              total_bytes: float | None = None) -> dict[str, float]:
        """Bytes per tier for a rank holding ``params`` parameters (``total_bytes`` when the
        caller counts them itself, e.g. optimizer states sharded differently under EP)."""
        total = sum(self.per_param.values()) * params if total_bytes is None else total_bytes
        default = device.tier_for("weights").name
        if not self.kinds:
            return {default: total}
        spilled = self.spilled_bytes_per_param * params
        return {default: total - spilled, device.tier_for("offload").name: spilled}

    def apply(self, cluster: Cluster, *, optimizer_bytes_per_param: float = 32.0) -> Cluster:
        """The cluster with each device's Adam step paying for its spilled traffic.

        The step's ops touch ``shard`` elements (``params / dp`` under ZeRO-1), moving
        ``optimizer_bytes_per_param`` bytes per element in all (30 for a fused AdamW with bf16
        weights, more unfused: ``kernels.adam_ops``); its spilled traffic is 2 x the spilled
        bytes of the ``params`` it updates, spread over those ops in proportion to their bytes."""
        if not self.kinds:
            return cluster
        shard_div = self.dp if self.zero_stage >= 1 else 1
        ratio = 2.0 * self.spilled_bytes_per_param * shard_div / optimizer_bytes_per_param
        return dataclasses.replace(cluster, devices=[SpilledDevice(d, ratio)
                                                     for d in cluster.devices])


def plan_training_spill(model: ModelConfig, cluster: Cluster, *, tp: int, pp: int, dp: int,
                        zero_stage: int = 0, ep: int = 1) -> TrainingSpill:
    """Nothing spilled when the state fits; else, with ``cluster.spill``, the fewest kinds (in
    ZeRO-Offload order) that make it fit. ConfigError naming the key and the fixes otherwise."""
    per_param = state_bytes_per_param(dp=dp, zero_stage=zero_stage)
    params = rank_params(model, tp=tp, pp=pp, ep=ep)
    need = sum(per_param.values()) * params
    device = cluster.devices[0]
    tier, offload = device.tier_for("weights"), device.tier_for("offload")
    plan = TrainingSpill((), per_param, dp, zero_stage)
    if need <= tier.capacity_bytes:
        return plan
    kinds: tuple[str, ...] = ()
    for kind in SPILL_ORDER:
        kinds += (kind,)
        if need - sum(per_param[k] for k in kinds) * params <= tier.capacity_bytes:
            break
    plan = TrainingSpill(kinds, per_param, dp, zero_stage)
    stays = need - plan.spilled_bytes_per_param * params
    spilled = plan.spilled_bytes_per_param * params
    what = " and ".join(_WORDS[k] for k in kinds)
    where = (f"at tp={tp}, pp={pp}, dp={dp} (ZeRO-{zero_stage}) it needs "
             f"{_size(need)} of weights, gradients and optimizer states per device, but "
             f"{device.name} keeps them on {tier.name!r}, which holds {_size(tier.capacity_bytes)}")
    fixes = "raise tp or pp, use zero_stage: 1, or pick a device with more memory"
    can_spill = (offload is not None and stays <= tier.capacity_bytes
                 and spilled <= offload.capacity_bytes)
    if not getattr(cluster, "spill", False):
        hint = (f", or set cluster.spill: true to keep {what} on its "
                f"{offload.name!r} tier ({_size(spilled)})") if can_spill else ""
        raise ConfigError(f"{model.name} fits no tier: {where}; {fixes}{hint}",
                          key="workload.parallel")
    if offload is None:
        raise ConfigError(f"cluster.spill: {device.name} has no offload tier to spill to (its "
                          f"tiers: {[t.name for t in device.memory_tiers]}); {model.name} does not fit: {where}; "
                          f"{fixes}",
                          key="cluster.spill")
    if stays > tier.capacity_bytes:
        raise ConfigError(f"{model.name} does not fit even with spilling: the weights alone need "
                          f"{_size(stays)} per device on {tier.name!r} ({device.name} holds "
                          f"{_size(tier.capacity_bytes)}; optimizer states and gradients "
                          f"spill to {offload.name!r}); {fixes}", key="workload.parallel")
    if spilled > offload.capacity_bytes:
        raise ConfigError(f"{model.name}: {what} need "
                          f"{_size(spilled)} per device on {offload.name!r}, which holds "
                          f"{_size(offload.capacity_bytes)}; {fixes}", key="workload.parallel")
    return plan


def check_training_fits(model: ModelConfig, cluster: Cluster, *, tp: int, pp: int, dp: int,
                        zero_stage: int = 0, ep: int = 1) -> None:
    """ConfigError naming the device, its tier and the fixes when the state cannot fit (and
    cannot be spilled, or spilling is off)."""
    plan_training_spill(model, cluster, tp=tp, pp=pp, dp=dp, zero_stage=zero_stage, ep=ep)

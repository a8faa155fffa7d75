"""The YAML ``workload.moe`` block: routing, placement and how the EP all-to-alls run.

Example (under a ``training`` workload with ``parallel: {ep: 8}``)::

    moe:
      distribution: zipf        # uniform | zipf | trace
      zipf_s: 1.2               # skew exponent, 0..4
      drift: 0.1                # per-layer change of which experts are hot, 0..1
      affinity: 0.6             # inter-layer affinity, 0..1 (ExFlow / MoETuner)
      capacity_factor: null     # null: dropless; else tokens over capacity are dropped
      placement: load_balanced  # round_robin | contiguous | load_balanced | affinity_aware
      replicas_per_device: 0    # spare expert slots per device for hot-expert replicas
      chunks: 1                 # > 1 overlaps all-to-all with expert compute (Tutel, FSMoE)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clustersim.errors import ConfigError
from clustersim.workloads.models import ModelConfig
from clustersim.workloads.moe.ep_layer import EPOptions
from clustersim.workloads.moe.routing import RoutingSpec, read_routing_trace


class MoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    distribution: Literal["uniform", "zipf", "trace"] = Field(
        "uniform", description="expert popularity: uniform, Zipf skew, or a CSV trace")
    zipf_s: float = Field(0.0, description="Zipf exponent of expert popularity (0..4)")
    drift: float = Field(0.0, description="per-layer reshuffling of hot experts (0..1)")
    affinity: float = Field(0.0, description="probability a token follows its expert's preferred "
                                             "successors in the next layer (0..1)")
    affinity_set: int | None = Field(None, description="preferred successors per expert "
                                                       "(default: top-k)")
    trace: str | None = Field(None, description="CSV with header layer,expert,tokens "
                                                "(distribution: trace)")
    capacity_factor: float | None = Field(None, description="expert capacity factor; null is "
                                                            "dropless")
    placement: Literal["round_robin", "contiguous", "load_balanced", "affinity_aware"] = Field(
        "round_robin",
        description="expert placement strategy (clustersim.schedules.expert_placement)")
    replicas_per_device: int = Field(0, ge=0, description="extra expert slots per device for "
                                                          "replicas of hot experts")
    chunks: int = Field(1, ge=1, le=64, description="chunks per all-to-all, overlapped with "
                                                    "expert compute")
    hierarchical: bool = Field(True, description="all-to-all over NVLink first, then one message "
                                                 "per rail between nodes (Tutel 2DH)")
    max_levels: int = Field(16, ge=1, description="distinct pair sizes per all-to-allv before "
                                                  "rounding to levels")
    ilp_time_limit_s: float = Field(5.0, gt=0, description="HiGHS time limit of the "
                                                           "affinity-aware placement")
    sampling: Literal["tokens", "expected"] = Field(
        "tokens", description="tokens: every token draws its experts (noise, affinity); "
                              "expected: noise-free counts in proportion to popularity")

    def routing_spec(self, model: ModelConfig, key: str = "workload.moe") -> RoutingSpec:
        trace = None
        if self.distribution == "trace":
            if not self.trace:
                raise ConfigError("distribution 'trace' needs trace: FILE.csv", key=f"{key}.trace")
            trace = read_routing_trace(self.trace, num_layers=model.num_layers,
                                       num_experts=model.num_experts, key=f"{key}.trace")
        return RoutingSpec(model.num_experts, model.experts_per_token, self.distribution,
                           zipf_s=self.zipf_s, drift=self.drift, affinity=self.affinity,
                           affinity_set=self.affinity_set, capacity_factor=self.capacity_factor,
                           trace=trace)

    def options(self, model: ModelConfig) -> EPOptions:
        return EPOptions(self.routing_spec(model), placement=self.placement,
                         replicas_per_device=self.replicas_per_device, chunks=self.chunks,
                         hierarchical=self.hierarchical, max_levels=self.max_levels,
                         ilp_time_limit_s=self.ilp_time_limit_s, sampling=self.sampling)


def check_ep(model: ModelConfig, *, ep: int, dp: int, granularity: str, replicas: str,
             moe: MoEConfig | None) -> None:
    """The expert-parallel layout errors, each naming its key."""
    if ep == 1:
        if moe is not None and model.is_moe:
            moe.routing_spec(model)
        return
    key = "workload.parallel.ep"
    if not model.is_moe:
        raise ConfigError(f"ep={ep} needs a mixture-of-experts model; {model.name} is dense",
                          key=key)
    if model.num_experts % ep:
        valid = [d for d in range(1, model.num_experts + 1) if model.num_experts % d == 0]
        raise ConfigError(f"ep={ep} must divide the {model.num_experts} experts of {model.name}; "
                          f"valid ep values are {valid}", key=key)
    if dp % ep:
        raise ConfigError(f"ep={ep} must divide dp={dp}: expert-parallel groups are carved out "
                          f"of the data-parallel ranks (Megatron-Core); use dp a multiple of ep",
                          key=key)
    if granularity != "op" or replicas != "all":
        raise ConfigError("expert parallelism needs granularity: op and replicas: all (EP ranks "
                          "see different tokens, so no rank stands for another)", key=key)
    (moe or MoEConfig()).routing_spec(model)

"""Where the ranks of a TP x PP x DP (x EP) training job sit on a cluster.

Rank order follows Megatron-LM's default ("tp-cp-ep-dp-pp"): tensor parallel fastest, then data
parallel, then pipeline, so a TP group shares an NVLink node whenever tp <= GPUs per node.

Expert parallelism is carved out of data parallelism, as Megatron-Core and DeepSpeed-MoE define
it: ``ep`` consecutive DP ranks (same stage and TP rank) form an EP group that splits the
experts, and the ranks holding the same experts across EP groups (dp / ep of them) form the
expert-data-parallel group that reduces those experts' gradients. The world size stays
tp x pp x dp; ``ep`` must divide ``dp``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        if self.ep < 1 or self.dp % self.ep:
            raise ValueError(f"ep={self.ep} must divide dp={self.dp} (EP groups are made of DP ranks)")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def expert_dp(self) -> int:
        """Size of the expert-data-parallel groups (replicas of one expert shard)."""
        return self.dp // self.ep

    def device(self, *, stage: int, tp_rank: int, dp_rank: int) -> int:
        return tp_rank + self.tp * (dp_rank + self.dp * stage)

    def tp_group(self, *, stage: int, dp_rank: int) -> list[int]:
        return [self.device(stage=stage, tp_rank=t, dp_rank=dp_rank) for t in range(self.tp)]

    def dp_group(self, *, stage: int, tp_rank: int) -> list[int]:
        return [self.device(stage=stage, tp_rank=tp_rank, dp_rank=d) for d in range(self.dp)]

    def ep_group(self, *, stage: int, tp_rank: int, dp_rank: int) -> list[int]:
        """The EP group holding ``dp_rank``: ep consecutive DP ranks."""
        first = dp_rank - dp_rank % self.ep
        return [self.device(stage=stage, tp_rank=tp_rank, dp_rank=d)
                for d in range(first, first + self.ep)]

    def expert_dp_group(self, *, stage: int, tp_rank: int, dp_rank: int) -> list[int]:
        """Ranks holding the same experts as ``dp_rank``: one per EP group."""
        return [self.device(stage=stage, tp_rank=tp_rank, dp_rank=d)
                for d in range(dp_rank % self.ep, self.dp, self.ep)]

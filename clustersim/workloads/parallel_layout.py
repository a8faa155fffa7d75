"""Where the ranks of a 3D-parallel (TP x PP x DP) training job sit on a cluster.

Rank order follows Megatron-LM's default ("tp-cp-ep-dp-pp"): tensor parallel fastest, then data
parallel, then pipeline, so a TP group shares an NVLink node whenever tp <= GPUs per node.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def device(self, *, stage: int, tp_rank: int, dp_rank: int) -> int:
        return tp_rank + self.tp * (dp_rank + self.dp * stage)

    def tp_group(self, *, stage: int, dp_rank: int) -> list[int]:
        return [self.device(stage=stage, tp_rank=t, dp_rank=dp_rank) for t in range(self.tp)]

    def dp_group(self, *, stage: int, tp_rank: int) -> list[int]:
        return [self.device(stage=stage, tp_rank=tp_rank, dp_rank=d) for d in range(self.dp)]

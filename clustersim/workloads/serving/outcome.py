"""Per-request results of a serving run, filled in by the engines as requests end."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    """Per-request results, filled by the engines (index = request id)."""

    first_token_s: np.ndarray
    finish_s: np.ndarray
    generated: np.ndarray
    preemptions: np.ndarray
    stall_s: np.ndarray           # time from each preemption to the request's next token, summed
    kv_wait_s: np.ndarray         # disaggregated: prefill end to decode blocks reserved
    kv_transfer_s: np.ndarray     # disaggregated: the KV transfer's duration
    engine: np.ndarray
    status: np.ndarray            # 0 pending, 1 finished, 2 rejected
    reasons: dict[int, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> "Outcome":
        return cls(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int64),
                   np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n), np.zeros(n),
                   np.full(n, -1, dtype=np.int64),
                   np.zeros(n, dtype=np.int8))

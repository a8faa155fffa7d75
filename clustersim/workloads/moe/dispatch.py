"""From routing and placement to per-device work: tokens per device pair and per local expert.

Fidelity: exact counting. Inputs are kept-token counts per (source EP rank, expert) of one layer
and the placement's replica devices per expert; an expert's tokens from one source are split
over its replicas as evenly as integers allow (the remainder to the replicas after the source's
index, so remainders spread). Bytes of an all-to-all are tokens x hidden x dtype bytes: dispatch
sends [S, D] from source to expert device, combine the transpose back (Megatron-Core's
``MoEAlltoAllTokenDispatcher``: one all-to-all each way, tokens unpermuted at the source).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class LayerDispatch:
    """One layer's routed work over an EP group of ``num_devices`` ranks."""

    kept: np.ndarray            # [source rank, expert] tokens sent
    dropped: np.ndarray         # [source rank, expert] tokens over capacity
    pair_tokens: np.ndarray     # [source rank, device rank] tokens dispatched (self included)
    device_expert: np.ndarray   # [device rank, expert] tokens each device computes per expert

    @property
    def device_tokens(self) -> np.ndarray:
        return self.device_expert.sum(axis=1)

    def bytes_matrix(self, hidden_size: int, dtype_bytes: int) -> np.ndarray:
        return self.pair_tokens * float(hidden_size * dtype_bytes)


def split_even(count: int, parts: int, offset: int = 0) -> np.ndarray:
    """``count`` split into ``parts`` integers differing by at most one; the extra units go to
    the parts after ``offset`` (cyclically)."""
    base, extra = divmod(int(count), parts)
    out = np.full(parts, base, dtype=np.int64)
    out[(offset + np.arange(extra)) % parts] += 1
    return out


def dispatch(kept: np.ndarray, dropped: np.ndarray, replicas: Sequence[Sequence[int]],
             num_devices: int) -> LayerDispatch:
    kept = np.asarray(kept, dtype=np.int64)
    sources, experts = kept.shape
    pair = np.zeros((sources, num_devices), dtype=np.int64)
    device_expert = np.zeros((num_devices, experts), dtype=np.int64)
    single = np.array([len(r) == 1 for r in replicas])
    if single.any():  # one replica: every token of the expert goes to its device
        owner = np.array([r[0] for r in replicas])
        for d in range(num_devices):
            mine = single & (owner == d)
            pair[:, d] += kept[:, mine].sum(axis=1)
            device_expert[d, mine] += kept[:, mine].sum(axis=0)
    for e in np.flatnonzero(~single):
        devices = list(replicas[e])
        for s in range(sources):
            if kept[s, e]:
                shares = split_even(kept[s, e], len(devices), offset=s)
                for d, n in zip(devices, shares):
                    pair[s, d] += n
                    device_expert[d, e] += n
    return LayerDispatch(kept, np.asarray(dropped, dtype=np.int64), pair, device_expert)


def split_chunks(matrix: np.ndarray, chunks: int) -> list[np.ndarray]:
    """Integer matrices summing to ``matrix``, each entry split as evenly as it goes."""
    m = np.asarray(matrix, dtype=np.int64)
    bounds = [(m * i) // chunks for i in range(chunks + 1)]
    return [bounds[i + 1] - bounds[i] for i in range(chunks)]

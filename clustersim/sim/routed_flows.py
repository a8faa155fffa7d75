"""Routed flows as arrays: the (src, dst) pairs of a coflow and the incidences of its flows on
links, the form in which routers hand flows to the fabric without a Python object per flow."""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Path = tuple[int, ...]  # link indices, in order


class PairArray(SequenceABC):
    """Immutable (src, dst) endpoint pairs held as numpy arrays, or built on demand.

    Collective steps over thousands of ranks use it instead of tuples of tuples: with ``make``
    (a function returning the src and dst arrays) a step holds no pairs until the fabric
    routes it, so an all-to-all over 4096 nodes does not hold 10^8 tuples. It is a Sequence of
    ``(src, dst)`` int tuples like any other ``pairs``; ``np.asarray`` gives an (n, 2) array.
    The fabric caches routes by identity for tuples and PairArrays (both immutable).
    """

    __slots__ = ("_src", "_dst", "_make", "_length")

    def __init__(self, src=None, dst=None, *, make: Callable | None = None,
                 length: int | None = None):
        if make is None:
            self._src = np.asarray(src, dtype=np.int64)
            self._dst = np.asarray(dst, dtype=np.int64)
            if self._src.shape != self._dst.shape or self._src.ndim != 1:
                raise ValueError(f"src and dst must be 1-d and of one length, got "
                                 f"{self._src.shape} and {self._dst.shape}")
            self._src.flags.writeable = False
            self._dst.flags.writeable = False
            self._make, self._length = None, len(self._src)
        else:
            if length is None:
                raise ValueError("a PairArray built on demand needs its length")
            self._src = self._dst = None
            self._make, self._length = make, int(length)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._make is None:
            return self._src, self._dst
        src, dst = self._make()
        return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        src, dst = self.arrays()
        if isinstance(index, slice):
            return PairArray(src[index], dst[index])
        return int(src[index]), int(dst[index])

    def __iter__(self):
        src, dst = self.arrays()
        return iter(zip(src.tolist(), dst.tolist()))

    def __array__(self, dtype=None, copy=None):
        src, dst = self.arrays()
        return np.stack([src, dst], axis=1).astype(dtype or np.int64, copy=False)

    __hash__ = object.__hash__

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, SequenceABC) or len(other) != len(self):
            return False
        return bool(np.array_equal(np.asarray(self), np.asarray(other, dtype=np.int64).reshape(-1, 2)))

    def __repr__(self) -> str:
        return f"PairArray({self._length} pairs)"

_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class RoutedFlows:
    """The flows of one coflow after routing, as incidence arrays.

    Flow ``f`` carries ``fraction[f]`` of the bytes of pair ``pair[f]``; incidence ``e`` says
    that ``inc_coef[e]`` of flow ``inc_flow[e]``'s rate crosses link ``inc_link[e]``.
    ``latency_s`` is the longest path latency among the flows (all start after it).
    """

    pair: np.ndarray
    fraction: np.ndarray
    inc_flow: np.ndarray
    inc_link: np.ndarray
    inc_coef: np.ndarray
    latency_s: float

    @property
    def num_flows(self) -> int:
        return len(self.fraction)

    @staticmethod
    def from_paths(per_pair: Sequence[tuple[int, Sequence[tuple[Path, float]]]],
                   link_latency: np.ndarray) -> "RoutedFlows":
        """From ``[(pair index, [(path, fraction), ...]), ...]``: one independent flow per path."""
        pair, fraction, inc_flow, inc_link = [], [], [], []
        latency = 0.0
        for index, paths in per_pair:
            for path, share in paths:
                flow = len(fraction)
                pair.append(index)
                fraction.append(share)
                inc_flow.extend([flow] * len(path))
                inc_link.extend(path)
                latency = max(latency, float(link_latency[list(path)].sum()) if path else 0.0)
        inc_link_a = np.asarray(inc_link, dtype=np.int64)
        return RoutedFlows(np.asarray(pair, dtype=np.int64), np.asarray(fraction, dtype=float),
                           np.asarray(inc_flow, dtype=np.int64), inc_link_a,
                           np.ones(len(inc_link_a)), latency)

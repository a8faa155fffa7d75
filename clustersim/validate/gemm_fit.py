"""Fit the tile/wave/split-K GEMM model (``hardware/gemm_tiles.py``) to measured GEMM times.

Four parameters, fitted by least squares on log time (so a 10 % error weighs the same on a
3 us decode GEMM as on a 3 ms prefill GEMM), in log space so they stay positive; started from
several points because the kernel picker makes the objective piecewise smooth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

from clustersim.hardware.gemm_tiles import (PARTIAL_BYTES, SPLIT_K, TILES, GemmTiles,
                                            gemm_output_bytes)
from clustersim.ops import DTYPE_BYTES

PARAMETERS = ("mma_efficiency", "operand_bandwidth_bytes_per_s", "memory_efficiency", "fixed_s")
_LOWER = np.log([0.2, 1e11, 0.2, 1e-7])
_UPPER = np.log([1.2, 1e15, 1.2, 1e-4])


@dataclass(frozen=True)
class GemmSample:
    batch: int
    m: int
    n: int
    k: int
    dtype: str
    time_s: float


def predict_s(tiles: GemmTiles, gpu, samples: Sequence[GemmSample]) -> np.ndarray:
    """Kernel times (no launch overhead) the model predicts for ``samples`` on ``gpu``."""
    return np.array([tiles.time_s(batch=s.batch, m=s.m, n=s.n, k=s.k,
                                  elem_bytes=DTYPE_BYTES[s.dtype], num_sms=gpu.num_sms,
                                  peak_flops_per_s=gpu.tensor_rate(s.dtype),
                                  hbm_bytes_per_s=gpu.hbm_bandwidth_bytes_per_s,
                                  out_bytes=gemm_output_bytes(s.dtype, DTYPE_BYTES[s.dtype]))
                     for s in samples])


class _Candidates:
    """The parameter-free part of every (sample, tile, split-K) candidate, as arrays, so that
    each evaluation during the fit is a few numpy operations (same formulas as GemmTiles)."""

    def __init__(self, gpu, samples: Sequence[GemmSample]):
        sms, hbm = gpu.num_sms, gpu.hbm_bandwidth_bytes_per_s
        index, mma, operand, memory = [], [], [], []
        for i, s in enumerate(samples):
            eb, peak = DTYPE_BYTES[s.dtype], gpu.tensor_rate(s.dtype)
            ob = gemm_output_bytes(s.dtype, eb)
            for tm, tn in TILES:
                for sk in SPLIT_K:
                    if sk > 1 and sk > max(1, s.k // 128):
                        continue
                    ctas = s.batch * math.ceil(s.m / tm) * math.ceil(s.n / tn) * sk
                    steps = math.ceil(ctas / sms) * math.ceil(s.k / sk)
                    dram = eb * s.batch * (s.m * s.k + s.k * s.n) + ob * s.batch * s.m * s.n
                    if sk > 1:
                        dram += 2 * PARTIAL_BYTES * sk * s.batch * s.m * s.n
                    index.append(i)
                    mma.append(steps * 2.0 * tm * tn / (peak / sms))   # x 1 / mma_efficiency
                    operand.append(steps * (tm + tn) * eb * sms)       # x 1 / operand bandwidth
                    memory.append(dram / hbm)                          # x 1 / memory_efficiency
        self.index = np.array(index)
        self.mma, self.operand, self.memory = np.array(mma), np.array(operand), np.array(memory)
        self.samples = len(samples)

    def times_s(self, tiles: GemmTiles) -> np.ndarray:
        compute = np.maximum(self.mma / tiles.mma_efficiency,
                             self.operand / tiles.operand_bandwidth_bytes_per_s)
        t = tiles.fixed_s + np.maximum(compute, self.memory / tiles.memory_efficiency)
        best = np.full(self.samples, np.inf)
        np.minimum.at(best, self.index, t)
        return best


def _tiles(x: np.ndarray) -> GemmTiles:
    return GemmTiles(**dict(zip(PARAMETERS, (float(v) for v in np.exp(x)))))


def fit_gemm_tiles(gpu, samples: Sequence[GemmSample]) -> GemmTiles:
    """The parameters minimising the squared log error over ``samples`` (at least 4)."""
    if len(samples) < len(PARAMETERS):
        raise ValueError(f"fitting the GEMM model needs at least {len(PARAMETERS)} GEMM timings, "
                         f"got {len(samples)}")
    measured = np.log([s.time_s for s in samples])
    candidates = _Candidates(gpu, samples)

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(candidates.times_s(_tiles(x))) - measured

    starts = [np.log([0.8, 5e12, 0.8, 3e-6]), np.log([0.9, 2e13, 0.9, 1e-6]),
              np.log([0.7, 2e12, 0.6, 6e-6])]
    best = None
    for x0 in starts:
        result = least_squares(residuals, x0, bounds=(_LOWER, _UPPER), diff_step=1e-3,
                               x_scale=1.0, max_nfev=200)
        if best is None or result.cost < best.cost:
            best = result
    return _tiles(best.x)


def ape_percent(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return 100.0 * np.abs(predicted - measured) / measured


def summary(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    ape = ape_percent(predicted, measured)
    return {"samples": int(len(ape)), "mape_percent": round(float(ape.mean()), 2),
            "max_ape_percent": round(float(ape.max()), 2) if len(ape) else math.nan}

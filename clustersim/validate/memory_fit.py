"""A latency-bandwidth model of memory-bound kernels, fitted to measured kernel times.

Fidelity: analytical, two fitted parameters per (kind, dtype). A streaming kernel (elementwise,
norm, softmax, copy, optimizer pass) that moves ``B`` bytes takes

    time = fixed_s + ideal_s / stream_efficiency,     ideal_s = B / hbm_bandwidth

(``fixed_s``: launch-to-first-byte and tail; ``stream_efficiency``: the fraction of datasheet
HBM bandwidth a large streaming kernel sustains). Why not the free-form polynomial of
``fitting.py``: measured small kernels of different ops scatter by 5x at one size (Vidur's
A100 ``add`` vs ``mlp_act`` at 3-5 MB), so a cubic in log bytes chosen by cross-validated MAPE
follows that noise and bends down where the data end; on Vidur's A100 table it predicts
1.14 TB/s for the largest, fitted, 9.4 GB kernel measured at 1.68 TB/s (-32 %), exactly the
size of Megatron-2021's score-matrix dropout. The two-parameter model cannot bend.

The profile stores the model as knots of log efficiency over ``log2_bytes`` (the format
``calibration.EfficiencyFit`` reads), every half octave across the fitted sizes, flat beyond:
``efficiency(B) = ideal_s / (fixed_s + ideal_s / stream_efficiency)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

from clustersim.hardware.calibration import EfficiencyFit, FeatureScale
from clustersim.ops import OpKind
from clustersim.validate.fitting import Sample

STREAMING_KINDS = (OpKind.ELEMENTWISE, OpKind.NORM, OpKind.SOFTMAX, OpKind.MEMCPY,
                   OpKind.OPTIMIZER)
KNOT_STEP = 0.5   # log2 bytes between knots


def fit_parameters(samples: Sequence[Sample]) -> tuple[float, float]:
    """(fixed_s, stream_efficiency) minimising the squared log-time error over ``samples``."""
    if len(samples) < 2:
        raise ValueError(f"the latency-bandwidth model needs at least 2 kernel timings, "
                         f"got {len(samples)}")
    ideal = np.array([s.ideal_s for s in samples])
    measured = np.array([s.measured_s for s in samples])

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(np.exp(x[0]) + ideal / np.exp(x[1])) - np.log(measured)

    x0 = np.log([max(float(measured.min()) / 2, 1e-7), 0.8])
    result = least_squares(residuals, x0, bounds=(np.log([1e-8, 0.05]), np.log([1e-3, 1.5])))
    fixed_s, efficiency = (float(v) for v in np.exp(result.x))
    return fixed_s, efficiency


def fit_streaming(kind: OpKind, dtype: str, samples: Sequence[Sample]) -> EfficiencyFit:
    """The fitted model as an ``EfficiencyFit`` with knots over ``log2_bytes``."""
    fixed_s, efficiency = fit_parameters(samples)
    log2_bytes = np.array([math.log2(max(s.op.bytes_total, 1.0)) for s in samples])
    # seconds of ideal time per byte (the device's roofline: 1 / achievable HBM rate)
    per_byte = float(np.median([s.ideal_s / s.op.bytes_total for s in samples]))
    lo, hi = float(log2_bytes.min()), float(log2_bytes.max())
    xs = list(np.arange(lo, hi, KNOT_STEP)) + [hi]
    knots = []
    for x in xs:
        ideal = per_byte * 2.0 ** x
        log_efficiency = math.log(ideal / (fixed_s + ideal / efficiency))
        knots.append((round(float(x), 4), round(log_efficiency, 6)))
    scale = FeatureScale(center=round((lo + hi) / 2, 4), scale=1.0, min=round(lo, 4),
                         max=round(hi, 4))
    return EfficiencyFit(kind, dtype, {"log2_bytes": scale}, knots=tuple(knots),
                         training={"model": "latency_bandwidth", "fixed_s": fixed_s,
                                   "stream_efficiency": round(efficiency, 4),
                                   "samples": len(samples)})

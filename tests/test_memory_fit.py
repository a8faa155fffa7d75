"""The latency-bandwidth model of memory-bound kernels recovers its parameters and cannot bend."""

import math

from clustersim import ops
from clustersim.hardware.presets import load_gpu
from clustersim.ops import OpKind
from clustersim.validate.fitting import Sample
from clustersim.validate.memory_fit import fit_parameters, fit_streaming


def _samples(fixed_s: float, efficiency: float):
    gpu = load_gpu("A100-SXM4-80GB")
    out = []
    for log2_elements in range(10, 32):
        op = ops.elementwise(2 ** log2_elements, inputs=2, dtype="fp16", name="add")
        ideal = gpu.ideal_time_s(op)
        out.append(Sample(op, ideal, 0.0, fixed_s + ideal / efficiency))
    return out


def test_synthetic_timings_give_back_their_parameters():
    fixed_s, efficiency = fit_parameters(_samples(4e-6, 0.83))
    assert math.isclose(fixed_s, 4e-6, rel_tol=1e-3)
    assert math.isclose(efficiency, 0.83, rel_tol=1e-3)


def test_the_stored_knots_reproduce_the_model_and_never_fall_at_large_sizes():
    samples = _samples(4e-6, 0.83)
    fit = fit_streaming(OpKind.ELEMENTWISE, "fp16", samples)
    for s in samples:   # knots every half octave: piecewise-linear error stays small
        predicted = s.ideal_s / fit.efficiency(s.op)
        assert abs(predicted / s.measured_s - 1) < 0.02
    ys = [y for _, y in fit.knots]
    assert all(b >= a for a, b in zip(ys, ys[1:]))          # efficiency rises with size
    assert math.isclose(math.exp(ys[-1]), 0.83, rel_tol=0.01)  # to the streaming efficiency

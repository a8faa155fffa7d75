"""The whole loop on this machine's CPU, for real: time kernels -> fit -> predict held-out
shapes -> compare, in quick mode (one torch thread, ~15 s).

The error bound. Quick mode times each shape 6-45 times over two rounds; on these 2-vCPU VMs,
shared with other engineers' test runs and other guests of the host, the median of the same
GEMM moves by 5% on average between two runs of the suite on a quiet machine, and individual
shapes by 20% or more when another process competes for the cache and memory bandwidth (which
the preemption filter of ``timing.CPUClock`` cannot see). Held-out error is that noise plus the
fit's own error (about 3-4% for GEMM and attention on a quiet machine). Quick runs measured while
developing: GEMM 7-10%, attention 3-6% on a quiet machine; with two other CPU-bound processes on
the two cores, GEMM 8-19% and attention 20-24%. So the bound is 30% MAPE for matmul, for attention
and over all kinds, and calibration must beat the uncalibrated model overall and on matmul (whose
bf16 GEMMs it predicts 90% too fast): loose enough that a busy machine does not fail it, tight
enough that a broken fit or a wrong device model does (37-45% overall before calibration). The
5%-class numbers come from full mode on a quiet machine, reported by hand, not asserted here.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from clustersim.errors import ConfigError                              # noqa: E402
from clustersim.hardware.calibration import ProfileDeviceMismatch, load_profile   # noqa: E402
from clustersim.hardware.cpu import read_cpu_info                        # noqa: E402
from clustersim.validate import calibrate, validate                    # noqa: E402

BOUND_PER_KIND_PERCENT = {"matmul": 30.0, "attention": 30.0}
BOUND_OVERALL_PERCENT = 30.0


@pytest.fixture(scope="module")
def quick_loop(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration") / "cpu.yaml"
    path = calibrate(out, quick=True, device="cpu", threads=1)
    report = validate(path, quick=True)
    return path, report


def test_calibration_writes_a_profile_of_this_cpu(quick_loop):
    path, _ = quick_loop
    profile = load_profile(path, device_name=read_cpu_info().model_name)
    assert profile.device_kind == "cpu" and profile.model == "cpu"
    env = profile.environment
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["date"]
    assert profile.calibration["mode"] == "quick"
    assert profile.measurements["memory_bandwidth_bytes_per_s"] > 1e9
    assert profile.parameters["memory_bandwidth_bytes_per_s"] == \
        profile.measurements["memory_bandwidth_bytes_per_s"]
    kinds = {(fit.kind.value, fit.dtype) for fit in profile.fits}
    assert {("matmul", "fp32"), ("matmul", "bf16"), ("attention", "fp32"), ("norm", "fp32"),
            ("softmax", "fp32"), ("elementwise", "fp32"), ("memcpy", "int8")} <= kinds


def test_held_out_error_after_calibration_is_within_the_bound_and_below_before(quick_loop):
    _, report = quick_loop
    text = report.to_text()
    summary = report.summary()
    for kind, bound in BOUND_PER_KIND_PERCENT.items():
        assert summary.loc[kind, "after_mape"] < bound, text
    assert summary.loc["matmul", "after_mape"] < summary.loc["matmul", "before_mape"], text
    overall = report.overall()
    assert overall["after_mape"] < BOUND_OVERALL_PERCENT, text
    assert overall["after_mape"] < overall["before_mape"], text


def test_validation_uses_only_shapes_that_were_not_fitted_and_draws_a_parity_plot(quick_loop):
    _, report = quick_loop
    assert len(report.records) >= 30
    assert report.records["case"].is_unique
    from clustersim.validate.cases import Case

    for key in report.records["case"]:
        family, dtype, dims = key.split("/")
        assert Case(family, dtype, tuple(int(d) for d in dims.split("x"))).held_out
    png = report.plot_path.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert report.csv_path.exists()
    assert "MAPE before" in report.to_text() and "all-reduce skipped" in report.to_text()


def test_a_profile_of_another_device_is_refused_unless_forced(quick_loop, tmp_path):
    path, _ = quick_loop
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace(f"name: {read_cpu_info().model_name}",
                                              "name: Imaginary CPU 1", 1))
    with pytest.raises(ProfileDeviceMismatch, match="Imaginary CPU 1"):
        validate(other, quick=True, out_dir=tmp_path / "v")
    with pytest.raises(ConfigError):
        validate(tmp_path / "missing.yaml", quick=True)

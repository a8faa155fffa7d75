"""The whole loop on this machine's CPU, for real: time kernels -> fit -> predict held-out
shapes -> compare, in quick mode (one torch thread, ~15 s).

The error bound. Quick mode times each shape 9-36 times over three rounds in ~10 s. These
2-vCPU VMs are shared with other engineers' test runs and other guests of the host: what they do
to the caches and memory bandwidth for seconds at a time cannot be filtered out (preemption can,
see ``timing.CPUClock``), and it lands on calibration and validation unequally. Quick loops run
while developing, with the load average at 2.5-3 on the 2 cores: held-out MAPE after calibration
5.4-20.5% for GEMM, 2.0-20.1% for attention, 5.0-20.4% over all kinds (the worst run was slowed
as a whole during calibration); before calibration 37-51% over all kinds, with bf16 GEMMs 90%
too fast. So the bound is 30% for matmul, for attention and over all kinds, and calibration must
beat the uncalibrated model overall and on matmul: loose enough for a busy machine, tight enough
that a broken fit, a wrong device model or no calibration at all fails. The 5%-class numbers come
from full mode (reported with the issue, not asserted here: a full run takes ~3 minutes).
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

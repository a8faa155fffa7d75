"""Calibration profiles: the YAML format round-trips, fits compute what the docstring says, a
profile belongs to one device. No torch here: hardware reads profiles without it."""

from __future__ import annotations

import math
import sys

import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.calibration import (EfficiencyFit, EfficiencyModel, FeatureScale,
                                             Profile, ProfileDeviceMismatch, load_profile)
from clustersim.hardware.cpu import CPU
from clustersim.ops import OpKind, elementwise, matmul

CPU_PARAMETERS = {"name": "Test CPU 9000", "cores": 2, "clock_hz": 3e9,
                  "memory_capacity_bytes": 16 * 2**30, "memory_bandwidth_bytes_per_s": 20e9,
                  "dispatch_overhead_s": 2e-6}


def matmul_fit() -> EfficiencyFit:
    scale = FeatureScale(center=8.0, scale=2.0, min=5.0, max=11.0)
    return EfficiencyFit(OpKind.MATMUL, "fp32", {"log2_m": scale, "log2_k": scale},
                         {"1": math.log(0.5), "log2_m": 0.1, "log2_m*log2_k": -0.02},
                         {"model": "polynomial", "degree": 2, "samples": 40, "mape_percent": 2.5})


def softmax_fit() -> EfficiencyFit:
    return EfficiencyFit(OpKind.SOFTMAX, "fp32",
                         {"log2_bytes": FeatureScale(center=20.0, scale=3.0, min=14.0, max=28.0)},
                         knots=((14.0, math.log(0.4)), (20.0, math.log(0.3)), (28.0, math.log(0.1))))


def make_profile(name: str = "Test CPU 9000") -> Profile:
    return Profile(device_name=name, device_kind="cpu", model="cpu",
                   parameters={**CPU_PARAMETERS, "name": name}, fits=(matmul_fit(), softmax_fit()),
                   environment={"torch": "2.13.0+cpu", "threads": 2, "date": "2026-11-25"},
                   calibration={"mode": "quick", "seed": 0},
                   measurements={"launch_overhead_s": 2e-6})


def test_a_profile_survives_yaml_and_disk_unchanged(tmp_path):
    profile = make_profile()
    assert Profile.from_yaml(profile.to_yaml()) == profile
    path = profile.save(tmp_path / "sub" / "cpu.yaml")
    loaded = load_profile("sub/cpu.yaml", base_dir=tmp_path)
    assert loaded == profile
    op = matmul(300, 200, 700, dtype="fp32")
    assert loaded.efficiency(op) == profile.efficiency(op)
    assert path.read_text().startswith("# clustersim calibration profile of Test CPU 9000")


def test_a_polynomial_fit_is_exp_of_its_terms_in_standardised_features():
    op = matmul(512, 64, 128, dtype="fp32")          # log2 m = 9, log2 k = 7
    zm, zk = (9 - 8) / 2, (7 - 8) / 2
    expected = math.exp(math.log(0.5) + 0.1 * zm - 0.02 * zm * zk)
    assert make_profile().efficiency(op) == pytest.approx(expected, rel=1e-12)


def test_features_are_held_at_the_edge_of_the_fitted_range():
    profile = make_profile()
    edge = profile.efficiency(matmul(2048, 64, 2048, dtype="fp32"))      # 2**11: the max
    beyond = profile.efficiency(matmul(16384, 64, 16384, dtype="fp32"))
    assert beyond == edge


def test_knots_interpolate_linearly_and_stay_flat_outside():
    profile = make_profile()
    mid = elementwise(2**17, dtype="fp32", kind=OpKind.SOFTMAX)       # 4 B in + 4 B out each
    assert mid.bytes_total == 2**20
    between = math.exp(math.log(0.4) + (math.log(0.3) - math.log(0.4)) * (20 - 14) / 6)
    assert profile.efficiency(mid) == pytest.approx(between, rel=1e-12)
    tiny = elementwise(16, dtype="fp32", kind=OpKind.SOFTMAX)
    assert profile.efficiency(tiny) == pytest.approx(0.4, rel=1e-12)


def test_a_profile_has_no_opinion_on_kinds_and_dtypes_it_did_not_measure():
    profile = make_profile()
    assert profile.efficiency(matmul(64, 64, 64, dtype="bf16")) is None
    assert profile.efficiency(elementwise(1024, dtype="fp32")) is None
    assert isinstance(profile, EfficiencyModel)


def test_a_device_uses_the_profile_and_falls_back_to_its_parameters():
    profile = make_profile()
    device = profile.build_device()
    op = matmul(512, 512, 512, dtype="fp32")
    assert device.op_time(op) == pytest.approx(
        device.fixed_time_s(op) + device.ideal_time_s(op) / profile.efficiency(op), rel=1e-12)
    unmeasured = elementwise(1 << 20, dtype="fp32")
    plain = CPU(**CPU_PARAMETERS)
    assert device.op_time(unmeasured) == pytest.approx(plain.op_time(unmeasured), rel=1e-12)


def test_a_profile_of_another_device_is_refused_with_a_clear_error_unless_forced(tmp_path):
    path = make_profile("NVIDIA H100 80GB HBM3").save(tmp_path / "h100.yaml")
    with pytest.raises(ProfileDeviceMismatch) as error:
        load_profile(path, device_name="Test CPU 9000")
    message = str(error.value)
    assert "NVIDIA H100 80GB HBM3" in message and "Test CPU 9000" in message
    assert "--force" in message and "clustersim calibrate" in message
    with pytest.raises(ProfileDeviceMismatch):
        CPU(**CPU_PARAMETERS, profile=load_profile(path))
    forced = load_profile(path, device_name="Test CPU 9000", force=True)
    device = CPU(**CPU_PARAMETERS, profile=forced)
    assert device.efficiency(matmul(256, 256, 256, dtype="fp32")) == forced.efficiency(
        matmul(256, 256, 256, dtype="fp32"))


def test_device_names_match_ignoring_case_and_spaces(tmp_path):
    path = make_profile().save(tmp_path / "cpu.yaml")
    assert load_profile(path, device_name="  test cpu 9000 ").device_name == "Test CPU 9000"


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["device"].update(kind="tpu"), "device.kind"),
    (lambda d: d["fits"][0].update(kind="convolution"), "fits[0].kind"),
    (lambda d: d["fits"][0]["terms"].update({"log2_q": 1.0}), "fits[0]"),
    (lambda d: d["fits"][0]["features"]["log2_m"].pop("scale"), "fits[0].features.log2_m"),
    (lambda d: d.update(format="clustersim-profile/99"), "format"),
])
def test_a_broken_profile_names_its_file_and_key(tmp_path, edit, key):
    import yaml

    raw = make_profile().to_dict()
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as error:
        load_profile(path)
    assert error.value.file == str(path) and error.value.key == key


def test_a_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="clustersim calibrate"):
        load_profile(tmp_path / "nope.yaml")


def test_reading_profiles_does_not_import_torch():
    import subprocess

    code = ("import sys, clustersim.hardware.calibration, clustersim.hardware.cpu, "
            "clustersim.validate; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

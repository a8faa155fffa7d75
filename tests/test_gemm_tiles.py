"""The tile/wave/split-K GEMM model: its closed forms, the kernel it picks, and its fit."""

import dataclasses
import math

import numpy as np
import pytest

from clustersim import ops
from clustersim.hardware.gemm_tiles import GemmTiles
from clustersim.hardware.presets import load_gpu
from clustersim.validate.gemm_fit import GemmSample, fit_gemm_tiles, predict_s

REL = 1e-9
A100 = load_gpu("A100-SXM4-80GB")
TILES = GemmTiles(mma_efficiency=0.8, operand_bandwidth_bytes_per_s=5e12, memory_efficiency=0.8,
                  fixed_s=4e-6)
HW = dict(elem_bytes=2, num_sms=108, peak_flops_per_s=312e12, hbm_bytes_per_s=2.039e12)


def test_a_large_square_gemm_runs_at_mma_efficiency_of_peak_in_whole_waves():
    m = n = k = 8192
    t, tile, split = TILES.best(batch=1, m=m, n=n, k=k, **HW)
    tm, tn = tile
    waves = math.ceil(math.ceil(m / tm) * math.ceil(n / tn) / 108)
    expected = 4e-6 + waves * k * 2 * tm * tn / (0.8 * 312e12 / 108)
    assert split == 1 and math.isclose(t, expected, rel_tol=REL)
    assert 0.6 < 2 * m * n * k / 312e12 / t < 0.8     # tile quantisation costs some of the 0.8


def test_decode_gemm_streams_the_weights_at_achieved_bandwidth():
    fast_operands = dataclasses.replace(TILES, operand_bandwidth_bytes_per_s=1e15)
    t, _tile, _split = fast_operands.best(batch=1, m=1, n=4096, k=4096, **HW)
    weights = 2 * (4096 * 4096 + 4096 + 4096)
    assert t >= 4e-6 + weights / (0.8 * 2.039e12) * (1 - 1e-12)
    assert math.isclose(t, 4e-6 + weights / (0.8 * 2.039e12), rel_tol=1e-2)  # split-K partials


def test_split_k_is_picked_when_output_tiles_cannot_fill_the_gpu():
    _t, _tile, split = TILES.best(batch=1, m=128, n=128, k=16384, **HW)
    assert split > 1
    _t, _tile, split = TILES.best(batch=1, m=8192, n=8192, k=1024, **HW)
    assert split == 1


def test_time_grows_in_steps_of_waves():
    times = [TILES.time_s(batch=1, m=m, n=4096, k=4096, **HW) for m in (1024, 2048, 4096, 8192)]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert 1.6 < times[3] / times[2] < 2.4


def test_a_gpu_with_a_gemm_model_times_matmuls_with_it():
    gpu = dataclasses.replace(A100, gemm=TILES)
    op = ops.matmul(2048, 5120, 1280, dtype="bf16")
    expected = gpu.kernel_launch_overhead_s + TILES.time_s(batch=1, m=2048, n=5120, k=1280, **HW)
    assert math.isclose(gpu.op_time(op), expected, rel_tol=REL)
    assert gpu.op_time(ops.elementwise(1 << 20)) == A100.op_time(ops.elementwise(1 << 20))


def test_fit_on_synthetic_timings_recovers_the_parameters():
    rng = np.random.default_rng(0)
    shapes = [(int(2 ** rng.uniform(0, 14)), int(256 * rng.integers(2, 64)),
               int(256 * rng.integers(2, 64))) for _ in range(80)]
    samples = [GemmSample(1, m, n, k, "fp16", 1.0) for m, n, k in shapes]
    truth = predict_s(TILES, A100, samples)
    samples = [dataclasses.replace(s, time_s=float(t)) for s, t in zip(samples, truth)]
    fitted = fit_gemm_tiles(A100, samples)
    for name in ("mma_efficiency", "operand_bandwidth_bytes_per_s", "memory_efficiency", "fixed_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(TILES, name), rel=1e-3), name


def test_a_cluster_can_give_the_gpu_a_gemm_model_in_yaml():
    from clustersim.hardware.cluster_config import ClusterConfig

    cluster = ClusterConfig(node="DGX-A100", nodes=1, gpus_per_node=1,
                            gpu_overrides={"gemm": TILES.to_dict()}).build()
    assert cluster.devices[0].gemm_tiles() == TILES
    with pytest.raises(ValueError, match="missing"):
        GemmTiles.from_dict({"mma_efficiency": 0.8})


def test_an_fp8_gemm_writes_its_output_in_bf16():
    """fp8 GEMMs (Transformer Engine, cuBLASLt with a bf16 D, XLA's f8 x f8 -> bf16) read 1-byte
    operands and write 2-byte outputs: a memory-bound fp8 GEMM moves m n bytes more than an
    int8-sized output would."""
    from clustersim.hardware.gemm_tiles import gemm_output_bytes

    assert gemm_output_bytes("fp8", 1) == 2 and gemm_output_bytes("bf16", 2) == 2
    slow_mma = dataclasses.replace(TILES, mma_efficiency=1.0, operand_bandwidth_bytes_per_s=1e16)
    hw = dict(num_sms=132, peak_flops_per_s=1e18, hbm_bytes_per_s=3.35e12, elem_bytes=1)
    m, n, k = 8192, 8192, 16          # output-dominated, no split-K (k < 256)
    one = slow_mma.candidate_time_s(batch=1, m=m, n=n, k=k, tile=(128, 128), split_k=1, **hw)
    two = slow_mma.candidate_time_s(batch=1, m=m, n=n, k=k, tile=(128, 128), split_k=1,
                                    out_bytes=2, **hw)
    assert math.isclose(two - one, m * n / (0.8 * 3.35e12), rel_tol=1e-9)


def test_the_b200_profile_is_fitted_on_b200_gemms_and_loads():
    from pathlib import Path

    from clustersim.hardware.calibration import load_profile

    profile = load_profile(Path(__file__).parents[1] / "profiles" / "b200-sxm-180gb.yaml")
    assert profile.device_name == "B200-SXM-180GB" and profile.gemm is not None
    assert profile.calibration["held_out"]["matmul"]["mape_percent"] < 10

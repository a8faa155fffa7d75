"""The GPU model: a roofline with wave quantisation, divided by an achieved efficiency.

Each test recomputes by hand what the docstring of clustersim/hardware/gpu.py promises, on the
H100 SXM5 preset (132 SMs, 989.4 TFLOPS dense bf16, 3.35 TB/s), so a wrong model fails here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from clustersim.hardware.attention_waves import causal_effective_waves
from clustersim.hardware.calibration import EfficiencyModel
from clustersim.hardware.gpu import GPU, causal_fraction
from clustersim.hardware.presets import load_gpu
from clustersim.ops import OpKind, attention, communication, elementwise, matmul

SMS, BF16, HBM = 132, 989.4e12, 3.35e12
LAUNCH = 3e-6


@pytest.fixture(scope="module")
def h100() -> GPU:
    return load_gpu("H100-SXM5-80GB")


def wave_s(k: int, peak: float = BF16) -> float:
    """Time of one wave: every SM computes one 128 x 128 output tile over depth k."""
    return 2 * 128 * 128 * k / (peak / SMS)


def rel(x: float) -> object:
    return pytest.approx(x, rel=1e-9)


def test_square_gemm_is_roofline_with_eight_waves(h100):
    op = matmul(4096, 4096, 4096)                       # 32 x 32 = 1024 tiles on 132 SMs
    compute = math.ceil(1024 / SMS) * wave_s(4096)      # 8 waves, the last one 100/132 full
    memory = 3 * 4096 * 4096 * 2 / HBM
    assert compute > memory
    assert h100.ideal_time_s(op) == rel(compute)
    assert h100.op_time(op) == rel(LAUNCH + compute / 0.8)
    # the wave rounding costs 1056/1024 over the plain roofline flops / peak
    assert h100.ideal_time_s(op) == rel(op.flops / BF16 * (8 * SMS) / 1024)


def test_gemm_with_a_nearly_empty_last_wave(h100):
    m = n = 129 * 128                                   # 16641 tiles = 126 full waves + 9 tiles
    op = matmul(m, n, 8192)
    assert h100.ideal_time_s(op) == rel(127 * wave_s(8192))


def test_one_tile_row_past_a_full_wave_adds_a_wave(h100):
    n, k = SMS * 128, 8192                              # each 128-row band of m is one full wave
    times = {m: h100.op_time(matmul(m, n, k)) for m in (385, 448, 511, 512, 513, 640)}
    assert times[385] == times[448] == times[511] == times[512]     # 4 waves
    assert times[513] == times[640]                                  # 5 waves
    assert times[513] - times[512] == rel(wave_s(k) / 0.8)


def test_elementwise_over_one_gib_is_memory_bound(h100):
    op = elementwise(2**29, dtype="bf16")               # reads 1 GiB, writes 1 GiB
    assert h100.roofline(op).bound == "memory"
    assert h100.op_time(op) == rel(LAUNCH + 2 * 2**30 / HBM / 0.85)


def test_memcpy_moves_bytes_read_plus_written_over_hbm(h100):
    from clustersim.ops import memcpy

    assert h100.op_time(memcpy(1e9)) == rel(LAUNCH + 2e9 / HBM / 0.85)


def test_decode_attention_is_memory_bound_and_long_prefill_compute_bound(h100):
    decode = attention(8, 32, 8, 1, 8192, 128, causal=True)
    prefill = attention(1, 32, 8, 8192, 8192, 128, causal=True)
    assert h100.roofline(decode).bound == "memory"
    assert h100.op_time(decode) == rel(LAUNCH + decode.bytes_total / HBM / 0.85)
    assert h100.roofline(prefill).bound == "compute"
    blocks = 32 * 8192 // 128                           # 2048 blocks of unequal (causal) work
    waves = causal_effective_waves(8192, 8192, 32, 128, SMS, False, "launch")   # ~16.8, not 16
    compute = waves * (prefill.flops * causal_fraction(8192, 8192) / blocks) / (BF16 / SMS)
    assert h100.ideal_time_s(prefill) == rel(compute)
    assert h100.op_time(prefill) == rel(LAUNCH + compute / 0.7)


def test_causal_attention_takes_about_half_at_long_sequence(h100):
    s = 16384
    causal, full = (attention(1, 32, 8, s, s, 128, causal=c) for c in (True, False))
    # The masked fraction, times the unequal causal blocks' effective waves over the equal ones'.
    even = math.ceil(32 * s / 128 / SMS)
    waves = causal_effective_waves(s, s, 32, 128, SMS, False, "launch") / even
    assert h100.ideal_time_s(causal) / h100.ideal_time_s(full) == rel((s + 1) / (2 * s) * waves)
    assert h100.op_time(causal) / h100.op_time(full) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("q_len, kv_len",
                         [(1, 1), (1, 7), (4, 4), (2, 4), (3, 8), (5, 3), (128, 200)])
def test_causal_fraction_counts_kept_scores(q_len, kv_len):
    kept = sum(1 for i in range(q_len) for j in range(kv_len) if j <= i + kv_len - q_len)
    assert causal_fraction(q_len, kv_len) == rel(kept / (q_len * kv_len))


def test_fp32_matmul_runs_on_cuda_cores_unless_tf32_is_allowed(h100):
    bf16, fp32 = matmul(8192, 8192, 8192), matmul(8192, 8192, 8192, dtype="fp32")
    assert h100.op_time(fp32) > 10 * h100.op_time(bf16)
    assert h100.ideal_time_s(fp32) == rel(h100.ideal_time_s(bf16) * BF16 / 66.9e12)
    tf32 = replace(h100, allow_tf32=True)
    assert tf32.ideal_time_s(fp32) == rel(h100.ideal_time_s(bf16) * BF16 / 494.7e12)


def test_a_dtype_without_matrix_units_is_an_error():
    a100 = load_gpu("a100")
    with pytest.raises(ValueError, match="no fp8 matrix units.*bf16"):
        a100.op_time(matmul(1024, 1024, 1024, dtype="fp8"))


class FixedProfile:
    device_name = "H100-SXM5-80GB"

    def __init__(self, value):
        self.value, self.calls = value, 0

    def efficiency(self, op):
        self.calls += 1
        return self.value


def test_a_profile_of_one_half_doubles_the_ideal_time(h100):
    profile = FixedProfile(0.5)
    assert isinstance(profile, EfficiencyModel)
    calibrated = load_gpu("h100", profile=profile)
    for op in (matmul(4096, 4096, 4096), elementwise(2**20), attention(1, 8, 8, 1, 4096, 128)):
        assert calibrated.op_time(op) == rel(LAUNCH + 2 * h100.ideal_time_s(op))


def test_a_profile_without_an_opinion_leaves_the_parameters(h100):
    op = matmul(4096, 4096, 4096)
    assert load_gpu("h100", profile=FixedProfile(None)).op_time(op) == h100.op_time(op)


def test_ops_differing_only_in_labels_share_one_cached_time():
    profile = FixedProfile(None)                         # counts uncached evaluations
    gpu = load_gpu("h100", profile=profile)
    first = gpu.op_time(matmul(2048, 2048, 2048, name="fc1", layer=0, microbatch=3))
    second = gpu.op_time(matmul(2048, 2048, 2048, name="fc2", layer=7, stage=1))
    assert first == second
    assert profile.calls == 1


def test_host_tier_only_when_host_memory_is_given(h100):
    assert [t.name for t in h100.memory_tiers] == ["hbm"]
    swap = load_gpu("h100", host_memory_bytes="256 GiB")
    hbm, host = swap.memory_tiers
    assert (hbm.capacity_bytes, hbm.bandwidth_bytes_per_s) == (80 * 2**30, HBM)
    assert (host.name, host.capacity_bytes) == ("host", 256 * 2**30)
    assert host.bandwidth_bytes_per_s == rel(64e9)                  # PCIe Gen5 x16, one way


def test_gpu_is_a_frozen_hashable_value(h100):
    assert hash(h100) == hash(load_gpu("h100-sxm5"))
    assert h100 == replace(h100, profile=FixedProfile(0.5))      # the profile is not compared
    with pytest.raises(AttributeError):
        h100.num_sms = 1


@pytest.mark.parametrize("change, message", [
    ({"matmul_efficiency": 0.0}, "matmul_efficiency"),
    ({"num_sms": 0}, "num_sms"),
    ({"hbm_bandwidth_bytes_per_s": -1.0}, "hbm_bandwidth"),
    ({"vector_flops_per_s": {"fp64": 1e12}}, "fp32"),
    ({"tensor_flops_per_s": {"fp4": 1e15}}, "fp4"),
    ({"host_memory_bytes": 1e12, "host_link_bandwidth_bytes_per_s": None}, "host_link"),
])
def test_bad_parameters_are_rejected_by_name(h100, change, message):
    with pytest.raises(ValueError, match=message):
        replace(h100, **change)


def test_communication_is_not_timed_by_a_device(h100):
    with pytest.raises(ValueError, match="fabric"):
        h100.op_time(communication(OpKind.COLLECTIVE, 1e6, name="allreduce"))


def test_a_flash_backward_does_five_quarters_of_its_counted_flops():
    """FlashAttention-2's backward recomputes S = Q K^T before its four gradient GEMMs: the
    compute bound of a backward attention op is 5/4 of the same op's FLOPs done forward."""
    from clustersim import ops as _ops
    from clustersim.hardware.presets import load_gpu as _load

    gpu = _load("H100-SXM5-80GB")
    fwd = _ops.attention(2, 32, 8, 8192, 8192, 128, dtype="bf16")
    bwd = _ops.attention(2, 32, 8, 8192, 8192, 128, dtype="bf16", backward=True)
    assert abs(bwd.flops / fwd.flops - 2.0) < 1e-12
    ratio = gpu.roofline(bwd).compute_s / gpu.roofline(fwd).compute_s
    # Causal: the backward's key tiles and the forward's query tiles go out in different orders.
    waves = (causal_effective_waves(8192, 8192, 64, 128, 132, True, "launch")
             / causal_effective_waves(8192, 8192, 64, 128, 132, False, "launch"))
    assert abs(ratio - 2.5 * waves) < 1e-9

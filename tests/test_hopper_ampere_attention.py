"""The H100 and A100 profiles' training attention (profiles/data/fit_h100_attention.py,
fit_a100_attention.py on the shared attention_fit.py): they reproduce measured kernel times they
were not fitted on, keep the directions, masks and decode apart, and an explicit
``attention_efficiency`` in a run's spec still beats the profile's fit."""

import importlib.util
import math
from pathlib import Path

import pytest

from clustersim.hardware.calibration import load_profile
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.ops import attention, matmul
from clustersim.workloads.attention_kernels import (TRITON_BACKWARD_SLOWDOWN,
                                                    TRITON_FORWARD_SLOWDOWN, triton_flash_attention)

ROOT = Path(__file__).parents[1]
H100 = ROOT / "profiles" / "h100-sxm5-80gb.yaml"
A100 = ROOT / "profiles" / "a100-sxm4-80gb.yaml"


def module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "profiles" / "data" / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def measured_errors(gpu, fit, rows):
    return [gpu.op_time(fit.af.op_of(r)) / (float(r["time_ms"]) * 1e-3) - 1 for r in rows]


def test_the_h100_profile_reproduces_cudnn_times_it_was_not_fitted_on():
    fit = module("fit_h100_attention")
    gpu = load_profile(H100).build_device()
    held = [r for r in fit.af.rows(fit.TABLE) if r["split"] == "held_out"]
    assert len(held) == 8        # 4096 and 16384 tokens x causal/unmasked x fwd/bwd
    errors = [abs(e) for e in measured_errors(gpu, fit, held)]
    assert sum(errors) / len(errors) < 0.05 and max(errors) < 0.08
    # The preset's 0.7 in both directions was up to 29 % too fast on the same rows (backward).
    preset = [abs(e) for e in measured_errors(fit.af.bare_device(fit.TABLE), fit, held)]
    assert max(preset) > 0.25 and sum(preset) / len(preset) > 0.10


def test_flash_attention_3_on_an_h100_is_within_26_percent_at_training_lengths():
    fit = module("fit_h100_attention")
    gpu = load_profile(H100).build_device()
    fa3 = [r for r in fit.af.rows(fit.TABLE) if r["split"] == "cross_kernel_h100" and int(r["q_len"]) >= 2048]
    assert len(fa3) == 12       # 2048-8192 tokens x causal/unmasked x fwd/bwd
    # 0.26: the profile's causal blocks go out in grid order (cuDNN's fit); FA3 issues them
    # longest first, so its 2048-token causal backward is now the worst row (-25.8 %).
    assert max(abs(e) for e in measured_errors(gpu, fit, fa3)) < 0.26


def test_the_a100_profile_is_within_11_percent_of_cudnn_prefill_on_an_a100_to_16k_tokens():
    fit = module("fit_a100_attention")
    gpu = load_profile(A100).build_device()
    pcie = [r for r in fit.af.rows(fit.TABLE) if r["split"] == "cross_kernel_a100_pcie"]
    assert len(pcie) == 8
    errors = measured_errors(gpu, fit, pcie)
    assert max(abs(e) for e in errors) < 0.11
    # Flat beyond the fitted 4096 tokens, the model is slower there than the measured kernel.
    assert all(e > 0 for r, e in zip(pcie, errors) if int(r["q_len"]) > 4096)


@pytest.mark.parametrize("path", [H100, A100])
def test_backward_is_slower_per_flop_efficiency_rises_with_length_and_decode_keeps_the_preset(path):
    gpu = load_profile(path).build_device()
    for causal in (True, False):
        fwd = [gpu.efficiency(attention(1, 32, 8, s, s, 128, causal=causal)) for s in (1024, 4096)]
        bwd = [gpu.efficiency(attention(1, 32, 8, s, s, 128, causal=causal, backward=True))
               for s in (1024, 4096)]
        assert all(b < f for b, f in zip(bwd, fwd)) and fwd[0] < fwd[1] and bwd[0] < bwd[1]
    short_causal = gpu.efficiency(attention(1, 32, 8, 2048, 2048, 128))
    short_full = gpu.efficiency(attention(1, 32, 8, 2048, 2048, 128, causal=False))
    assert short_causal < short_full
    for dtype in ("bf16", "fp16"):
        decode = attention(64, 32, 8, 1, 8192, 128, dtype=dtype)
        assert gpu.roofline(decode).bound == "memory"
        assert gpu.efficiency(decode) == gpu.memory_efficiency


def test_the_a100_backward_runs_at_63_73_of_the_forward_at_every_length():
    gpu = load_profile(A100).build_device()
    for s in (512, 1024, 2048, 4096, 16384):
        for causal in (True, False):
            ratio = (gpu.efficiency(attention(2, 16, 16, s, s, 64, causal=causal, backward=True))
                     / gpu.efficiency(attention(2, 16, 16, s, s, 64, causal=causal)))
            assert ratio == pytest.approx(0.63 / 0.73, rel=1e-5)


def test_the_shared_fit_recovers_mask_terms_around_a_fixed_backward_term():
    af = module("attention_fit")
    fit = module("fit_a100_attention")
    table, device = fit.TABLE, fit.af.bare_device(fit.TABLE)
    truth = {"1": -0.5, "log2_prefill_q_len": 0.1, "causal": -0.2, "causal*log2_prefill_q_len": 0.05}
    rows = []
    for seq in (1024, 2048, 4096):
        for causal in ("true", "false"):
            for direction in ("fwd", "bwd"):
                row = {"batch": "2", "q_len": str(seq), "kv_len": str(seq), "q_heads": "16",
                       "kv_heads": "16", "head_dim": "64", "causal": causal,
                       "direction": direction, "split": "fit"}
                op = af.op_of(row)
                z = math.log2(seq) - 11.0
                log_eff = (truth["1"] + truth["log2_prefill_q_len"] * z
                           + op.causal * (truth["causal"] + truth["causal*log2_prefill_q_len"] * z)
                           + table.fixed["backward"] * op.backward)
                seconds = device.kernel_launch_overhead_s + device.ideal_time_s(op) / math.exp(log_eff)
                rows.append({**row, "time_ms": repr(seconds * 1e3)})
    fitted = af.fit(table, device, rows)
    for term, value in truth.items():
        assert fitted.terms[term] == pytest.approx(value, abs=1e-5)
    assert fitted.terms["backward"] == table.fixed["backward"]


def test_triton_flash_attention_is_the_slowdown_times_the_fitted_fused_kernel_per_direction():
    gpu = load_profile(A100).build_device()
    launch = gpu.kernel_launch_overhead_s
    for backward, slowdown in ((False, TRITON_FORWARD_SLOWDOWN), (True, TRITON_BACKWARD_SLOWDOWN)):
        fused = attention(8, 16, 16, 2048, 2048, 128, backward=backward)
        pair = sum(gpu.op_time(op) - launch for op in triton_flash_attention(fused))
        assert pair == pytest.approx(slowdown * (gpu.op_time(fused) - launch), rel=1e-9)


def test_an_explicit_attention_efficiency_beats_the_profiles_fit_and_nothing_else():
    plain = ClusterConfig(node="DGX-H100", profile=str(H100)).build().devices[0]
    override = ClusterConfig(node="DGX-H100", profile=str(H100),
                             gpu_overrides={"attention_efficiency": 0.3386}).build().devices[0]
    prefill = attention(4, 16, 16, 2048, 2048, 128)
    assert plain.efficiency(prefill) != pytest.approx(0.3386)
    assert override.efficiency(prefill) == pytest.approx(0.3386, rel=1e-12)
    gemm = matmul(4096, 4096, 4096, dtype="bf16")
    assert override.op_time(gemm) == pytest.approx(plain.op_time(gemm), rel=1e-12)

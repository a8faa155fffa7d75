"""The parts of validate/ that need no kernels: timing statistics, the suite and its split, the
fitting. Plus the rotating random buffers, which need torch but time nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clustersim.hardware.cpu import CPU
from clustersim.ops import OpKind
from clustersim.validate.cases import Case, cpu_families, suite
from clustersim.validate.fitting import Sample, fit_group
from clustersim.validate.timing import CaseTimer, TimingPlan, TimingStats


def test_timing_stats_are_quantiles_of_the_samples():
    stats = TimingStats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median_s, stats.min_s, stats.repeats) == (3.0, 1.0, 5)
    assert stats.p10_s == pytest.approx(1.4) and stats.p90_s == pytest.approx(4.6)
    assert stats.spread == pytest.approx((4.6 - 1.4) / 3.0)


class ScriptedClock:
    """A clock that replays given (seconds, clean) samples and records the buffer indices."""

    def __init__(self, samples):
        self.samples, self.indices = list(samples), []

    def time_calls(self, run, starts, count):
        self.indices += list(range(starts, starts + count))
        return [self.samples.pop(0) for _ in range(count)]


def test_a_case_timer_warms_up_rotates_buffers_and_sets_interrupted_calls_aside():
    plan = TimingPlan(rounds=1, warmup=2, target_s=0.0, min_repeats=5, max_repeats=5)
    clock = ScriptedClock([(9.0, True), (8.0, True),                        # warm-up, dropped
                           (1.0, True), (1.2, True), (50.0, False), (1.1, True), (0.9, True)])
    timer = CaseTimer(lambda i: None, clock, plan)
    timer.round()
    stats = timer.stats()
    assert clock.indices == list(range(7))          # every call on the next buffer set
    assert stats.repeats == 4 and stats.median_s == pytest.approx(1.05)
    assert stats.preempted == pytest.approx(0.2)


def test_the_split_is_by_shape_and_the_same_in_quick_and_full_mode():
    quick, full = suite(cpu_families(True)), suite(cpu_families(False))
    for cases in (quick, full):
        keys = [c.key for c in cases]
        assert len(keys) == len(set(keys))
        held = sum(c.held_out for c in cases)
        assert 0.15 < held / len(cases) < 0.35
    fit_keys = {c.key for c in quick + full if not c.held_out}
    assert not fit_keys & {c.key for c in quick + full if c.held_out}
    assert {c.family for c in quick} == {"gemm", "bmm", "sdpa_prefill", "sdpa_decode",
                                         "layer_norm", "softmax", "gelu", "memcpy"}
    assert suite(cpu_families(True)) == quick                       # deterministic


def test_cases_build_the_ops_the_workloads_use():
    assert Case("gemm", "fp32", (64, 32, 16)).op.flops == 2 * 64 * 32 * 16
    decode = Case("sdpa_decode", "fp32", (2, 8, 1024, 64)).op
    assert decode.kind is OpKind.ATTENTION and decode.shape == (2, 8, 8, 1, 1024, 64)
    assert Case("layer_norm", "bf16", (16, 4096)).op.kind is OpKind.NORM
    assert Case("memcpy", "int8", (1 << 20,)).op.bytes_total == 2 << 20


def _cpu() -> CPU:
    return CPU(name="fit", cores=1, clock_hz=3e9, memory_capacity_bytes=1e10,
               memory_bandwidth_bytes_per_s=2e10, dispatch_overhead_s=2e-6)


def test_fitting_recovers_a_known_efficiency_curve_and_ignores_one_disturbed_shape():
    cpu = _cpu()
    rng = np.random.default_rng(1)
    samples = []
    for i in range(40):
        m, n, k = (int(16 * round(math.exp(rng.uniform(math.log(32), math.log(2048))) / 16))
                   for _ in range(3))
        op = Case("gemm", "fp32", (m, n, k)).op
        # the truth: efficiency rises with log2(min dim), 0.3 at 32 to 0.9 at 2048
        truth = 0.3 + 0.1 * (math.log2(min(m, n, k)) - 5)
        measured = cpu.fixed_time_s(op) + cpu.ideal_time_s(op) / truth
        if i == 7:
            measured *= 3                                  # another process got in the way
        samples.append(Sample(op, cpu.ideal_time_s(op), cpu.fixed_time_s(op), measured))
    fit = fit_group(OpKind.MATMUL, "fp32", samples)
    errors = [abs(cpu.fixed_time_s(s.op) + s.ideal_s / fit.efficiency(s.op) - s.measured_s)
              / s.measured_s for i, s in enumerate(samples) if i != 7]
    assert np.median(errors) < 0.02
    assert fit.training["samples"] == 40 and fit.training["cv_mape_percent"] is not None


def test_fitting_a_step_picks_knots():
    cpu = _cpu()
    samples = []
    for elements in np.geomspace(2**14, 2**24, 16).astype(int):
        op = Case("gelu", "fp32", (int(elements),)).op
        truth = 0.4 if op.bytes_total < 2**25 else 0.1           # a step at 32 MiB
        samples.append(Sample(op, cpu.ideal_time_s(op), 0.0, cpu.ideal_time_s(op) / truth))
    fit = fit_group(OpKind.ELEMENTWISE, "fp32", samples)
    assert fit.knots and fit.training["mape_percent"] < 1.0


def test_rotating_buffers_are_random_distinct_and_cover_twice_the_cache():
    torch = pytest.importorskip("torch")
    from clustersim.validate.kernels import BufferPool, input_shapes

    pool = BufferPool(torch.device("cpu"), cache_bytes=8 * 2**20)
    case = Case("gemm", "fp32", (128, 64, 256))
    sets = pool.input_sets(input_shapes(case), torch.float32)
    footprint = sum(t.numel() * 4 for t in sets[0])
    assert len(sets) >= min(32, 16 * 2**20 // footprint)
    pointers = {t.data_ptr() for s in sets for t in s}
    assert len(pointers) == 2 * len(sets)
    assert all(bool((t != 0).all()) for t in sets[0])
    assert [tuple(t.shape) for t in sets[0]] == [(128, 256), (256, 64)]


@pytest.mark.parametrize("torch_name, sms, memory_gib, preset", [
    ("NVIDIA H100 80GB HBM3", 132, 79.1, "H100-SXM5-80GB"),
    ("NVIDIA H100 PCIe", 114, 79.6, "H100-PCIe-80GB"),
    ("NVIDIA A100-SXM4-40GB", 108, 39.4, "A100-SXM4-40GB"),
    ("NVIDIA A100-SXM4-80GB", 108, 79.2, "A100-SXM4-80GB"),
    ("NVIDIA GeForce RTX 4090", 128, 23.6, None),
])
def test_a_gpu_is_matched_to_its_preset_by_name_sm_count_and_memory(torch_name, sms, memory_gib,
                                                                     preset):
    pytest.importorskip("torch")
    from clustersim.validate.local_device import _match_preset

    assert _match_preset(torch_name, sms, memory_gib * 2**30) == preset


def test_an_unknown_or_absent_device_is_a_configuration_error():
    torch = pytest.importorskip("torch")
    from clustersim.errors import ConfigError
    from clustersim.validate.local_device import pick_device_kind

    assert pick_device_kind("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N'"):
        pick_device_kind("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            pick_device_kind("cuda:0")

"""The CPU model: peak FLOP/s from cores x clock x SIMD lanes x FMA units, a DRAM roofline,
dispatch and fresh-page costs, and detection of this machine's figures."""

from __future__ import annotations

import math

import pytest

from clustersim.hardware.cpu import (CPU, GLIBC_MMAP_THRESHOLD_MAX_BYTES, CPUInfo, detect_cpu,
                                     read_cpu_info)
from clustersim.hardware.gpu import causal_fraction
from clustersim.ops import OpKind, attention, communication, elementwise, matmul, memcpy


@pytest.fixture
def zen() -> CPU:
    # 4 cores at 3 GHz, AVX2 (256-bit) with two FMA pipes: 4 * 3e9 * 8 lanes * 2 * 2 FLOP
    return CPU(name="Zen", cores=4, clock_hz=3e9, memory_capacity_bytes=32 * 2**30,
               memory_bandwidth_bytes_per_s=40e9, simd_bits=256, fma_units_per_core=2,
               dispatch_overhead_s=2e-6, fresh_page_bandwidth_bytes_per_s=2e9)


def test_peak_flops_are_cores_times_clock_times_lanes_times_fma_times_two(zen):
    assert zen.flops_per_s("fp32") == 4 * 3e9 * 8 * 2 * 2
    assert zen.flops_per_s("fp64") == 4 * 3e9 * 4 * 2 * 2
    # no native bf16 on AVX2: converted and computed at the fp32 rate
    assert zen.flops_per_s("bf16") == zen.flops_per_s("fp32")
    native = CPU(name="SPR", cores=1, clock_hz=2e9, memory_capacity_bytes=1e9,
                 memory_bandwidth_bytes_per_s=1e10, simd_bits=512,
                 native_dtypes=("fp32", "fp64", "bf16"))
    assert native.flops_per_s("bf16") == 2 * native.flops_per_s("fp32") == 2 * 2e9 * 16 * 2 * 2


def test_a_large_gemm_is_compute_bound_and_scaled_by_the_matmul_efficiency(zen):
    op = matmul(1024, 1024, 1024, dtype="fp32")
    ideal = 2 * 1024**3 / zen.flops_per_s("fp32")
    assert zen.roofline(op).bound == "compute"
    assert zen.op_time(op) == pytest.approx(2e-6 + ideal / zen.matmul_efficiency, rel=1e-12)


def test_an_elementwise_op_is_memory_bound_on_dram(zen):
    op = elementwise(1 << 20, dtype="fp32")                 # 4 MiB in, 4 MiB out
    assert zen.roofline(op).memory_s == pytest.approx(8 * 2**20 / 40e9, rel=1e-12)
    assert zen.op_time(op) == pytest.approx(2e-6 + 8 * 2**20 / 40e9 / zen.memory_efficiency,
                                            rel=1e-12)


def test_causal_attention_computes_only_the_unmasked_fraction(zen):
    full = attention(1, 8, 8, 512, 512, 64, dtype="fp32", causal=False)
    causal = attention(1, 8, 8, 512, 512, 64, dtype="fp32", causal=True)
    assert zen.roofline(causal).compute_s == pytest.approx(
        zen.roofline(full).compute_s * causal_fraction(512, 512), rel=1e-12)


def test_outputs_above_the_mmap_threshold_pay_for_fresh_pages_but_copies_do_not(zen):
    small = elementwise(GLIBC_MMAP_THRESHOLD_MAX_BYTES // 4, dtype="fp32")     # 32 MiB out
    large = elementwise(2 * GLIBC_MMAP_THRESHOLD_MAX_BYTES // 4, dtype="fp32")
    assert zen.allocation_time_s(small) == 0.0
    assert zen.allocation_time_s(large) == pytest.approx(64 * 2**20 / 2e9, rel=1e-12)
    assert zen.fixed_time_s(large) == pytest.approx(2e-6 + 64 * 2**20 / 2e9, rel=1e-12)
    assert zen.allocation_time_s(memcpy(1 << 30)) == 0.0


def test_the_fabric_times_communication_not_the_cpu(zen):
    with pytest.raises(ValueError, match="fabric"):
        zen.op_time(communication(OpKind.COLLECTIVE, 1e6, name="ar"))


def test_bad_parameters_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="cores must be a positive integer"):
        CPU(name="x", cores=0, clock_hz=1e9, memory_capacity_bytes=1e9,
            memory_bandwidth_bytes_per_s=1e9)
    with pytest.raises(ValueError, match="matmul_efficiency"):
        CPU(name="x", cores=1, clock_hz=1e9, memory_capacity_bytes=1e9,
            memory_bandwidth_bytes_per_s=1e9, matmul_efficiency=1.5)


def test_detection_reads_flags_clock_and_cache():
    info = CPUInfo(model_name="Example Xeon", available_cores=8,
                   flags=frozenset({"avx2", "avx512f", "fma", "avx512_bf16"}), current_mhz=2000.0,
                   max_mhz=3500.0, llc_bytes=48 * 2**20, memory_bytes=64 * 2**30, source={})
    cpu = detect_cpu(4, info=info)
    assert (cpu.name, cpu.cores, cpu.clock_hz, cpu.simd_bits) == ("Example Xeon", 4, 3.5e9, 512)
    assert cpu.fma_units_per_core == 2 and "bf16" in cpu.native_dtypes
    assert cpu.llc_bytes == 48 * 2**20 and cpu.memory_capacity_bytes == 64 * 2**30
    assert detect_cpu(info=info, memory_bandwidth_bytes_per_s=25e9).memory_bandwidth_bytes_per_s == 25e9


def test_this_machine_is_detected():
    info = read_cpu_info()
    cpu = detect_cpu()
    assert info.model_name and cpu.name == info.model_name
    assert cpu.cores == info.available_cores >= 1
    assert math.isfinite(cpu.flops_per_s("fp32")) and cpu.flops_per_s("fp32") > 1e9

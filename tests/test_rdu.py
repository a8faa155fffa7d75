"""The RDU: operands stream from the fastest tier that holds them; DDR -> HBM model switching.

A toy socket with round numbers: 1 MiB SRAM at 100 GB/s, 1 GiB HBM at 10 GB/s, 16 GiB DDR at
1 GB/s, 1 PFLOPS bf16 - so an elementwise op (1 FLOP per 4 bytes) is memory-bound on every tier.
"""

from __future__ import annotations

import pytest

from clustersim.hardware.accelerator_presets import describe_accelerator, load_rdu
from clustersim.hardware.rdu import RDU
from clustersim.ops import OpKind, elementwise, matmul

MiB, GiB = 2**20, 2**30


def rel(x: float) -> object:
    return pytest.approx(x, rel=1e-9)


def toy(**changes) -> RDU:
    params = dict(name="toy", flops_per_s={"bf16": 1e15},
                  sram_capacity_bytes=MiB, sram_bandwidth_bytes_per_s=100e9,
                  hbm_capacity_bytes=GiB, hbm_bandwidth_bytes_per_s=10e9,
                  ddr_capacity_bytes=16 * GiB, ddr_bandwidth_bytes_per_s=1e9)
    return RDU(**{**params, **changes})


def streaming(total_bytes: int):
    """An elementwise op reading and writing ``total_bytes`` in all (bf16, 1 in, 1 out)."""
    return elementwise(total_bytes // 4)


def test_three_tiers_fastest_first():
    assert [(t.name, t.capacity_bytes) for t in toy().memory_tiers] == [
        ("sram", MiB), ("hbm", GiB), ("ddr", 16 * GiB)]


def test_each_op_streams_at_the_bandwidth_of_the_tier_that_holds_it():
    rdu = toy(operand_placement="working_set")
    fits_sram, fits_hbm, fits_ddr = streaming(MiB), streaming(MiB + 4), streaming(2 * GiB)
    assert rdu.timing(fits_sram).tier == "sram"
    assert rdu.op_time(fits_sram) == rel(MiB / 100e9)
    assert rdu.timing(fits_hbm).tier == "hbm"
    assert rdu.op_time(fits_hbm) == rel((MiB + 4) / 10e9)
    assert rdu.timing(fits_ddr).tier == "ddr"
    assert rdu.op_time(fits_ddr) == rel(2 * GiB / 1e9)


def test_by_default_ops_stream_from_the_resident_weights_tier_not_a_working_set_guess():
    rdu = toy()
    assert rdu.tier_for("weights").name == "hbm" and rdu.tier_for("offload").name == "ddr"
    assert rdu.timing(streaming(MiB)).tier == "hbm"           # would fit SRAM: still HBM
    assert rdu.op_time(streaming(MiB)) == rel(MiB / 10e9)
    # larger than HBM: still HBM. Capacity is the workload's check (refuse or cluster.spill);
    # bytes_total counts an in-place update twice, so it is no test of what fits.
    assert rdu.timing(streaming(2 * GiB)).tier == "hbm"
    assert rdu.timing(streaming(2 * GiB).with_labels(tier="ddr")).tier == "ddr"
    assert rdu.timing(streaming(MiB).with_labels(tier="sram")).tier == "sram"


def test_fp32_vector_ops_without_a_published_rate_are_memory_bound_and_matmuls_refused():
    from clustersim.ops import OpKind, matmul
    rdu = toy()
    adam = elementwise(GiB // 64, inputs=4, outputs=3, flops_per_element=10.0, dtype="fp32",
                       kind=OpKind.OPTIMIZER)
    assert rdu.op_time(adam) == rel(adam.bytes_total / 10e9)
    with pytest.raises(ValueError, match=r"no fp32 peak; it has \['bf16'\]"):
        rdu.op_time(matmul(64, 64, 64, dtype="fp32"))
    assert rdu.peak_flops("bf16") == rel(1e15)


def test_tier_choice_never_goes_back_to_a_faster_tier_as_ops_grow():
    rdu = toy()
    order = {name: i for i, name in enumerate(("sram", "hbm", "ddr"))}
    sizes = [2**e for e in range(10, 35)]
    tiers = [order[rdu.tier_holding(s).name] for s in sizes]
    assert tiers == sorted(tiers) and set(tiers) == {0, 1, 2}
    with pytest.raises(ValueError, match="fits no tier; the largest, 'ddr'"):
        rdu.tier_holding(17 * GiB)


def test_compute_bound_ops_run_at_peak_times_efficiency():
    rdu = toy(flops_per_s={"bf16": 1e12}, compute_efficiency=0.5)
    op = matmul(512, 512, 512)                     # 268 MFLOP on 1.5 MiB: from HBM
    assert rdu.timing(op).tier == "hbm"
    compute, memory = op.flops / (1e12 * 0.5), op.bytes_total / 10e9
    assert compute > memory
    assert rdu.op_time(op) == rel(compute)
    thin = matmul(1, 4096, 4096)                   # a GEMV: memory-bound, efficiency unused
    assert rdu.op_time(thin) == rel(thin.bytes_total / 10e9)


def test_an_explicit_tier_label_wins_and_is_part_of_the_cache_key():
    rdu = toy()
    op = streaming(MiB)
    assert rdu.op_time(op.with_labels(tier="ddr")) == rel(MiB / 1e9)
    assert rdu.op_time(op.with_labels(tier="hbm")) == rel(MiB / 10e9)
    assert rdu.op_time(op.with_labels(tier="sram")) == rel(MiB / 100e9)
    with pytest.raises(ValueError, match=r"tier='l2'; expected one of \['sram', 'hbm', 'ddr'\]"):
        rdu.op_time(op.with_labels(tier="l2"))
    with pytest.raises(ValueError, match="pinned to 'sram'"):
        rdu.op_time(streaming(2 * MiB).with_labels(tier="sram"))


def test_copy_time_is_bytes_over_the_slower_tier_plus_latency():
    rdu = toy(copy_latency_s=5e-6)
    assert rdu.copy_time_s(GiB, "ddr", "hbm") == rel(GiB / 1e9 + 5e-6)
    assert rdu.copy_time_s(GiB, "hbm", "ddr") == rel(GiB / 1e9 + 5e-6)
    assert rdu.copy_time_s(MiB, "hbm", "sram") == rel(MiB / 10e9 + 5e-6)
    assert rdu.model_switch_time_s(GiB) == rdu.copy_time_s(GiB, "ddr", "hbm")
    with pytest.raises(ValueError, match="to itself"):
        rdu.copy_time_s(MiB, "hbm", "hbm")


def test_weights_switched_in_from_ddr_are_paid_before_the_op():
    rdu = toy(copy_latency_s=5e-6)
    op = matmul(1, 4096, 4096)
    switched = op.with_labels(switch_bytes=2 * 4096 * 4096)
    assert rdu.op_time(switched) == rel(rdu.op_time(op) + rdu.model_switch_time_s(2 * 4096**2))


def test_sn40l_preset():
    sn40l = load_rdu("SN40L")
    assert sn40l.flops_per_s["bf16"] == rel(638e12)
    assert [t.capacity_bytes for t in sn40l.memory_tiers] == [520 * MiB, 64 * GiB, 1.5 * 2**40]
    # Hot Chips 2024: Llama 3.1 8B (bf16) switches in 0.01 s on 16 sockets - 1/16 of it each
    per_socket = 8.03e9 * 2 / 16
    assert sn40l.model_switch_time_s(per_socket) == pytest.approx(0.01, rel=0.01)
    for key, figure in describe_accelerator("sn40l", "rdu").figures.items():
        assert figure.source.url.startswith("https://"), key
    assert load_rdu("sn40l", hbm_bandwidth_bytes_per_s="2 TB/s").hbm_bandwidth_bytes_per_s == 2e12


def test_unsupported_dtype_and_communication_ops_are_refused():
    with pytest.raises(ValueError, match=r"no fp32 peak; it has \['bf16'\]"):
        toy().op_time(matmul(8, 8, 8, dtype="fp32"))
    from clustersim.ops import communication
    with pytest.raises(ValueError, match="timed by the fabric"):
        toy().op_time(communication(OpKind.COLLECTIVE, 1024, name="ar").with_labels(tier="hbm"))

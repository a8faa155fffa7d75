"""Processing-in-memory: GEMV at bank parallelism with DRAM command timing, and NPU + PIM.

A toy PIM memory keeps the arithmetic visible: 2 channels x 4 banks, a unit per bank pair
(4 units), 16 fp16 lanes at 1 GHz, 32-byte bursts, 256-byte rows, tRCD = tRP = 10 ns, 10 GB/s
of pins.
"""

from __future__ import annotations

import pytest

from clustersim.hardware.accelerator_presets import describe_accelerator, load_pim
from clustersim.hardware.pim import PIM, CoExecution
from clustersim.hardware.presets import load_gpu
from clustersim.ops import attention, elementwise, matmul

NS = 1e-9


def rel(x: float) -> object:
    return pytest.approx(x, rel=1e-9)


def toy(**changes) -> PIM:
    params = dict(name="toy", channels=2, banks_per_channel=4, banks_per_unit=2, mac_lanes=16,
                  pim_clock_hz=1e9, burst_bytes=32, row_bytes=256, t_rcd_s=10 * NS,
                  t_rp_s=10 * NS, external_bandwidth_bytes_per_s=10e9, capacity_bytes=2**30)
    return PIM(**{**params, **changes})


def test_gemv_is_row_activations_plus_bursts_plus_host_io():
    pim = toy()
    cost = pim.gemv(8, 256, dtype="fp16")
    # 8 output rows over 4 units: 2 rows x 256 x 2 B = 1024 B per unit, which is
    # 1024 / (256 B x 2 banks) = 2 row steps and 1024 / 32 = 32 bursts of 1 ns
    assert (cost.rows_per_unit, cost.row_activations, cost.bursts) == (2, 2, 32)
    assert cost.bank_s == rel(2 * 20 * NS + 32 * 1 * NS)
    # x written into both channels, y read back: (2 x 256 + 8) x 2 B at 10 GB/s
    assert cost.io_s == rel((2 * 256 + 8) * 2 / 10e9)
    assert pim.op_time(matmul(1, 8, 256, dtype="fp16")) == rel(cost.time_s)
    # a batch of rows is that many GEMVs: PIM streams the matrix once per input vector
    assert pim.op_time(matmul(3, 8, 256, dtype="fp16")) == rel(3 * cost.time_s)


def test_every_row_opened_costs_trcd_plus_trp():
    wide, narrow = toy(row_bytes=512), toy(row_bytes=64)       # 1 vs 8 row steps per unit
    assert wide.gemv(8, 256).row_activations == 1
    assert narrow.gemv(8, 256).row_activations == 8
    assert narrow.gemv(8, 256).bank_s - wide.gemv(8, 256).bank_s == rel(7 * 20 * NS)


def test_more_banks_working_in_parallel_divide_the_bank_time():
    small, large = toy(), toy(channels=8)                      # 4 units vs 16 units
    assert small.units == 4 and large.units == 16
    assert large.gemv(64, 256).bank_s == rel(small.gemv(64, 256).bank_s / 4)
    # a unit per bank instead of per bank pair: twice the units, half the rows each
    per_bank = toy(banks_per_unit=1)
    assert per_bank.gemv(64, 256).rows_per_unit == small.gemv(64, 256).rows_per_unit / 2


def test_lanes_narrower_than_a_burst_slow_each_column_access():
    assert toy(mac_lanes=8).column_time_s("fp16") == rel(2 * NS)   # 16 elements on 8 lanes
    assert toy().peak_flops_per_s("fp16") == rel(4 * 16 * 2 * 1e9)


@pytest.fixture(scope="module")
def hbm_pim_with_host():
    """An HBM-PIM cube, and an A100-class NPU reading that same cube through its pins."""
    pim = load_pim("HBM-PIM")
    npu = load_gpu("A100-SXM4-80GB", hbm_bandwidth_bytes_per_s=pim.external_bandwidth_bytes_per_s)
    return CoExecution(npu, pim)


def test_pim_wins_gemv_and_loses_a_big_gemm(hbm_pim_with_host):
    system = hbm_pim_with_host
    gemv = matmul(1, 4096, 4096, dtype="fp16")                 # ~1 FLOP per byte
    gemm = matmul(4096, 4096, 4096, dtype="fp16")              # ~1365 FLOP per byte
    assert system.place(gemv).device == "pim"
    assert system.place(gemv).pim_s < system.place(gemv).npu_s / 3     # 4x the bandwidth
    assert system.place(gemm).device == "npu"
    decode = attention(1, 32, 32, 1, 4096, 128, dtype="fp16")
    assert system.place(decode).device == "pim"


def test_split_balances_both_sides_in_closed_form(hbm_pim_with_host):
    system = hbm_pim_with_host
    for op in (matmul(1, 4096, 4096, dtype="fp16"), matmul(64, 4096, 4096, dtype="fp16")):
        t_npu, t_pim = system.npu.op_time(op), system.pim.op_time(op)
        split = system.split(op)
        assert split.time_s == rel(t_npu * t_pim / (t_npu + t_pim))
        assert split.time_s <= min(t_npu, t_pim)
        assert split.pim_fraction == rel(t_npu / (t_npu + t_pim))
        # balanced: each side's share of its own time is the same finish time
        assert split.pim_fraction * t_pim == rel((1 - split.pim_fraction) * t_npu)
        assert split.pim_columns == round(split.pim_fraction * 4096)
    with pytest.raises(ValueError, match="split needs a matmul op"):
        system.split(elementwise(1024, dtype="fp16"))


def test_presets_match_their_published_figures():
    hbm = load_pim("aquabolt-xl")
    assert hbm.units == 128
    assert hbm.peak_flops_per_s("fp16") == pytest.approx(1.2e12, rel=0.03)      # "1.2 TFLOPS"
    assert hbm.internal_bandwidth_bytes_per_s == rel(4 * hbm.external_bandwidth_bytes_per_s)
    aim = load_pim("GDDR6-AiM")
    assert aim.peak_flops_per_s("bf16") == pytest.approx(1e12, rel=0.03)        # "1 TFLOPS"
    assert aim.internal_bandwidth_bytes_per_s / aim.channels == rel(512e9)       # per channel
    assert aim.internal_bandwidth_bytes_per_s == rel(16 * aim.external_bandwidth_bytes_per_s)
    for name in ("HBM-PIM", "GDDR6-AiM"):
        for key, figure in describe_accelerator(name, "pim").figures.items():
            assert figure.source.url.startswith("https://"), (name, key)


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match=r"its MAC units take \['fp16', 'bf16'\], not fp32"):
        toy().op_time(matmul(1, 8, 8, dtype="fp32"))
    with pytest.raises(ValueError, match=r"banks_per_channel \(3\) must be a multiple of "
                                         r"banks_per_unit \(2\)"):
        toy(banks_per_channel=3)


def test_fp32_elementwise_falls_back_to_the_host_over_the_pins():
    """A standalone PIM runs the fp32 ops its MAC units lack (softmax, sampling, Adam) on its host:
    operands out and results back over the pins, bytes / external bandwidth; fp32 matmuls are
    still refused (they are what the units exist for)."""
    pim = toy(launch_overhead_s=1e-6)
    op = elementwise(1000, inputs=4, outputs=4, flops_per_element=10.0, dtype="fp32")
    assert pim.op_time(op) == rel(1e-6 + 8 * 4 * 1000 / 10e9)
    with pytest.raises(ValueError, match="not fp32"):
        pim.op_time(matmul(1, 8, 8, dtype="fp32"))


def test_standalone_pim_node_trains_and_serves_with_fp32_ops(tmp_path):
    """Regression: an HBM-PIM node failed at run time on fp32 ops (sampling, Adam)."""
    from clustersim.experiment import run_experiment

    spec = tmp_path / "pim.yaml"
    spec.write_text(
        "name: pim_node\nseed: 0\n"
        "cluster: {node: {device: HBM-PIM, count: 2, link_bandwidth: 64 GB/s}}\n"
        "workload: {kind: training, model: tiny, seq_len: 32, micro_batch_size: 1,\n"
        "           global_batch_size: 2, parallel: {tp: 1, pp: 1, dp: 2}}\n"
        "output: {trace: false, plots: false}\n")
    rows = run_experiment(spec, out=tmp_path / "out")
    row = rows.iloc[0]
    assert row["status"] == "ok"
    assert 0 < row["mfu"] <= 1 and row["step_time_s"] > 0


def test_per_bank_commands_saturate_the_command_bus_as_banks_grow():
    """With commands that reach one bank pair each (not all-bank mode), a column step needs one
    command slot per unit of the channel: max(tCCD, commands x t_cmd). With t_cmd = 0.25 ns and
    tCCD = 1 ns the bus keeps up to 4 units per channel; beyond that GEMV time stops falling."""
    def bus(banks: int) -> PIM:
        return toy(banks_per_channel=banks, banks_per_command=2, t_cmd_s=0.25 * NS,
                   t_rrd_s=2 * NS, t_faw_s=12 * NS, row_bytes=1 << 20)
    sizes = [2, 4, 8, 16, 32, 64]
    times = [bus(b).gemv(4096, 256).bank_s for b in sizes]
    for b in sizes:
        pim = bus(b)
        commands = b // 2
        assert pim.commands_per_step == commands
        assert pim.column_time_s("fp16") == rel(max(1 * NS, commands * 0.25 * NS))
        # one row step per unit: tRCD + tRP + the extra activations at max(tRRD, tFAW / 4)
        assert pim.row_step_s == rel(20 * NS + (commands - 1) * 3 * NS)
    assert times[0] > times[1] > times[2]                  # 1 -> 2 -> 4 units per channel
    # from 4 units per channel on, each doubling of banks halves the rows per unit but doubles
    # the command slots per step: the column time per GEMV stays, activations add a little
    for a, b in zip(times[2:], times[3:]):
        assert b >= a * (1 - 1e-9)
    # all-bank mode (the presets'): one command per step whatever the banks, time keeps falling
    all_bank = [toy(banks_per_channel=b, t_cmd_s=0.25 * NS, row_bytes=1 << 20).gemv(4096, 256).bank_s
                for b in sizes]
    assert all(y < x for x, y in zip(all_bank, all_bank[1:]))


def test_command_bus_fields_are_validated():
    with pytest.raises(ValueError, match=r"banks_per_command must be None \(all banks\) or a "
                                         r"positive multiple of banks_per_unit \(2\), got 3"):
        toy(banks_per_command=3)
    with pytest.raises(ValueError, match="t_cmd_s must be > 0"):
        toy(t_cmd_s=0.0)

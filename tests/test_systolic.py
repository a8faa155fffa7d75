"""The systolic array: SCALE-Sim's fold and cycle closed forms, utilisation, DRAM bound, presets.

The closed forms are written out here by hand (not imported), for an 8-row x 4-column array so
that swapping rows and columns anywhere in the model would change the answers.
"""

from __future__ import annotations

import itertools
import math

import pytest

from clustersim.hardware.accelerator_presets import describe_accelerator, load_systolic
from clustersim.hardware.systolic import SystolicArray
from clustersim.ops import attention, elementwise, matmul

R, C = 8, 4


def rel(x: float) -> object:
    return pytest.approx(x, rel=1e-9)


def array(**changes) -> SystolicArray:
    params = dict(name="toy", rows=R, cols=C, clock_hz=1e9, dataflow="os",
                  ifmap_sram_bytes=2**30, filter_sram_bytes=2**30, ofmap_sram_bytes=2**30,
                  dram_bandwidth_bytes_per_s=1e15, dram_capacity_bytes=2**34)
    return SystolicArray(**{**params, **changes})


def closed_form(dataflow: str, m: int, n: int, k: int, rows: int = R, cols: int = C) -> int:
    """SCALE-Sim: folds over (S_R, S_C), each 2 rows + cols + T - 2 cycles."""
    s_r, s_c, t = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    return math.ceil(s_r / rows) * math.ceil(s_c / cols) * (2 * rows + cols + t - 2)


SHAPES = [(16, 8, 10),      # every dimension divides the array
          (17, 9, 11),      # none does: one extra, mostly empty fold per dimension
          (1, 1, 1), (3, 100, 7), (64, 3, 1)]


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_cycles_equal_the_closed_form(dataflow, m, n, k):
    assert array().gemm_cycles(m, n, k, dataflow) == closed_form(dataflow, m, n, k)


def test_one_worked_example_per_dataflow():
    toy = array()
    # OS maps M=16 on 8 rows (2 folds), N=8 on 4 columns (2 folds), streams K=10: 4 x 28
    assert toy.gemm_cycles(16, 8, 10, "os") == 4 * (16 + 4 + 10 - 2) == 112
    # WS maps K=10 on rows (2 folds), N=8 on columns (2 folds), streams M=16: 4 x 34
    assert toy.gemm_cycles(16, 8, 10, "ws") == 4 * (16 + 4 + 16 - 2) == 136
    # IS maps K=10 on rows (2 folds), M=16 on columns (4 folds), streams N=8: 8 x 26
    assert toy.gemm_cycles(16, 8, 10, "is") == 8 * (16 + 4 + 8 - 2) == 208
    # SCALE-Sim v2's OS demand matrices overlap the drain: rows + cols + T - 2 per fold
    assert array(os_drain_overlapped=True).gemm_cycles(16, 8, 10, "os") == 4 * (8 + 4 + 10 - 2)


def test_a_partial_fold_costs_a_full_one():
    toy = array()
    assert toy.gemm_cycles(9, 4, 10, "os") == toy.gemm_cycles(16, 4, 10, "os")
    assert toy.gemm_cycles(17, 4, 10, "os") > toy.gemm_cycles(16, 4, 10, "os")


def test_the_dimension_streamed_in_time_should_not_be_the_skinny_one():
    """With T = 1 a fold is nearly all fill and drain (2R + C - 1 cycles for one MAC per PE), and
    the folds multiply the two large dimensions; the other dataflows put the skinny dimension in
    a single fold and stream a large one. So skinny M hurts WS, skinny N hurts IS, skinny K
    hurts OS (closed forms for a 128 x 128 array, the large dimensions 4096)."""
    mxu = array(rows=128, cols=128)
    cycles = lambda m, n, k: {f: mxu.gemm_cycles(m, n, k, f) for f in ("os", "ws", "is")}
    decode = cycles(1, 4096, 4096)                         # GEMV: one token
    assert decode == {"os": 32 * 4478, "is": 32 * 4478, "ws": 1024 * 383}
    assert max(decode, key=decode.get) == "ws"
    assert max(cycles(4096, 1, 4096).items(), key=lambda kv: kv[1])[0] == "is"
    assert max(cycles(4096, 4096, 1).items(), key=lambda kv: kv[1])[0] == "os"


def test_utilisation_is_useful_macs_over_pe_cycles_and_never_above_one():
    toy = array()
    for m, n, k in itertools.product((1, 3, 8, 9, 31, 64), repeat=3):
        for flow in ("os", "ws", "is"):
            u = toy.utilisation(m, n, k, flow)
            assert 0 < u <= 1
            assert u == rel(m * n * k / (toy.gemm_cycles(m, n, k, flow) * R * C))
    # full folds and a long stream: the fill and drain become negligible
    assert toy.utilisation(R, C, 10**6, "os") == rel(10**6 / (2 * R + C + 10**6 - 2))


def test_big_gemm_approaches_flops_over_peak():
    mxu = array(rows=128, cols=128)
    ratios = []
    for k in (2**12, 2**16, 2**20):
        op = matmul(1024, 1024, k)
        ideal = op.flops / mxu.peak_flops_per_s("bf16")
        ratios.append(mxu.op_time(op) / ideal)
        assert mxu.op_time(op) == rel(ideal * (2 * 128 + 128 + k - 2) / k)
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 1.0004


def test_time_is_the_larger_of_compute_and_dram_traffic():
    """Double-buffered: DRAM transfers overlap compute, so the slower of the two sets the time."""
    fast_dram = array(dram_bandwidth_bytes_per_s=1e12)
    slow_dram = array(dram_bandwidth_bytes_per_s=1e6)
    op = matmul(16, 8, 10)                                  # bf16: (160 + 80 + 128) x 2 B
    assert fast_dram.op_time(op) == rel(112 / 1e9)          # compute-bound: the cycles above
    assert slow_dram.op_time(op) == rel(2 * (160 + 80 + 128) / 1e6)


def test_an_operand_that_does_not_fit_its_buffer_is_read_again_per_fold():
    # WS on 8 x 4: K=16 (2 row folds), N=8 (2 column folds), M=1000 streamed. A (1000 x 16 x 2 B
    # = 32000 B) is needed by both column folds. Its 40 kB buffer (20 kB active) cannot hold it,
    # but one 1000 x 8 column block (16 kB) fits, so row folds go outermost and A is read once;
    # the outputs (1000 x 8 x 2 B) then stay partial across the row folds and, with an ofmap
    # buffer too small for them, go out and back: 2 x 2 - 1 = 3 transfers.
    toy = array(dataflow="ws", ifmap_sram_bytes=40_000, ofmap_sram_bytes=1_000)
    traffic = toy.dram_traffic(1000, 8, 16, dtype_bytes=2)
    a, b, c = 1000 * 16 * 2, 16 * 8 * 2, 1000 * 8 * 2
    assert (traffic.ifmap_bytes, traffic.filter_bytes, traffic.ofmap_bytes) == (a, b, 3 * c)
    # with room for every operand, each moves exactly once
    assert array(dataflow="ws").dram_traffic(1000, 8, 16, 2).total_bytes == a + b + c
    # the op's DRAM bound adds the re-reads to what the op itself moves
    op = matmul(1000, 8, 16)
    assert toy.timing(op).dram_bytes == op.bytes_total + 2 * c


def test_attention_runs_as_two_gemms_per_head():
    toy = array()
    op = attention(2, 4, 2, 16, 24, 8)
    per_head = closed_form("os", 16, 24, 8) + closed_form("os", 16, 8, 24)
    assert toy.timing(op).cycles == 2 * 4 * per_head
    assert toy.timing(attention(2, 4, 2, 16, 24, 8, backward=True)).cycles == 2 * 2 * 4 * per_head


def test_elementwise_ops_run_on_a_vector_unit_one_element_per_column():
    toy = array(dram_bandwidth_bytes_per_s=1e18)
    assert toy.op_time(elementwise(4000)) == rel(4000 / C / 1e9)
    assert array(vector_ops_per_cycle=100.0, dram_bandwidth_bytes_per_s=1e18).op_time(
        elementwise(4000)) == rel(40 / 1e9)


def test_bad_parameters_and_unsupported_dtypes_say_what_was_expected():
    with pytest.raises(ValueError, match=r"dataflow must be one of \['os', 'ws', 'is'\], got 'rs'"):
        array(dataflow="rs")
    with pytest.raises(ValueError, match="rows must be a positive integer, got 0"):
        array(rows=0)
    with pytest.raises(ValueError, match=r"no fp32 MACs; it supports \['bf16'\]"):
        array().op_time(matmul(8, 8, 8, dtype="fp32"))


def test_tpu_v1_preset_matches_the_paper():
    tpu = load_systolic("tpu-v1")
    assert (tpu.rows, tpu.cols, tpu.clock_hz, tpu.dataflow) == (256, 256, 700e6, "ws")
    assert tpu.peak_flops_per_s("int8") == pytest.approx(92e12, rel=0.005)     # "92 TOPS"
    on_chip = tpu.ifmap_sram_bytes + tpu.ofmap_sram_bytes
    assert on_chip == 28 * 2**20                                               # "28 MiB"
    assert tpu.dram_bandwidth_bytes_per_s == rel(34e9)
    assert tpu.peak_flops_per_s("bf16") == rel(tpu.peak_flops_per_s("int8") / 4)


def test_tpu_v3_mxu_preset_adds_up_to_the_chip():
    mxu = load_systolic("TPU-v3-MXU")
    assert (mxu.rows, mxu.cols) == (128, 128)
    assert 4 * mxu.peak_flops_per_s("bf16") == pytest.approx(123e12, rel=0.001)
    assert 4 * mxu.dram_bandwidth_bytes_per_s == rel(900e9)
    assert load_systolic("tpu-v3-mxu", dataflow="os").dataflow == "os"


def test_every_systolic_figure_has_a_source():
    for name in ("TPU-v1", "TPU-v3-MXU"):
        preset = describe_accelerator(name, "systolic")
        for key in ("rows", "cols", "clock_hz", "dram_bandwidth_bytes_per_s", "ifmap_sram_bytes"):
            figure = preset.figures[key]
            assert figure.source.title and figure.source.url.startswith("https://"), (name, key)
    with pytest.raises(ValueError, match="did you mean 'TPU-v1'"):
        load_systolic("tpu-v11")


def test_a_preset_file_with_a_typo_or_an_unsourced_figure_is_refused():
    from clustersim.errors import ConfigError
    from clustersim.hardware.accelerator_presets import read_accelerator_presets

    entry = ("sources: {doc: {title: T, url: 'https://example.org'}}\n"
             "systolic:\n  x:\n    source: doc\n    {key}: 8\n    cols: 8\n"
             "    clock_hz: 1 GHz\n    dataflow: os\n    ifmap_sram_bytes: 1 MiB\n"
             "    filter_sram_bytes: 1 MiB\n    ofmap_sram_bytes: 1 MiB\n"
             "    dram_bandwidth_bytes_per_s: 1 GB/s\n    dram_capacity_bytes: 1 GiB\n")
    assert read_accelerator_presets(entry.replace("{key}", "rows"))["x"].spec.rows == 8
    with pytest.raises(ConfigError, match=r"<string>:systolic\.x\.rowz: unknown key "
                                          r"\(did you mean 'rows'\?\)"):
        read_accelerator_presets(entry.replace("{key}", "rowz"))
    unsourced = entry.replace("{key}", "rows").replace("    source: doc\n", "")
    with pytest.raises(ConfigError, match=r"systolic\.x\.rows: missing source"):
        read_accelerator_presets(unsourced)


# -- random shapes: GEMMs and convolutions mapped by im2col (hypothesis) ---------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from clustersim.workloads.layer_gemms import LayerGemm, mobilenet_v1  # noqa: E402

_dims = st.integers(min_value=1, max_value=5000)
_sizes = st.sampled_from([4, 8, 16, 32, 64, 128, 256])
_flows = st.sampled_from(["os", "ws", "is"])


def _array(size: int, flow: str) -> SystolicArray:
    return SystolicArray(name="a", rows=size, cols=size, clock_hz=1e9, dataflow=flow,
                         ifmap_sram_bytes=2**20, filter_sram_bytes=2**20, ofmap_sram_bytes=2**20,
                         dram_bandwidth_bytes_per_s=1e11, dram_capacity_bytes=2**33)


def _conv_gemms(h: int, c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool):
    side = -(-h // stride)
    if depthwise:
        return LayerGemm("c", "dw", side * side, 1, kernel * kernel, c_in)
    return LayerGemm("c", "conv", side * side, c_out, kernel * kernel * c_in)


@settings(max_examples=150, deadline=None)
@given(m=_dims, n=_dims, k=_dims, size=_sizes, flow=_flows)
def test_random_gemms_never_exceed_full_utilisation_and_bigger_arrays_never_fold_more(
        m, n, k, size, flow):
    small, big = _array(size, flow), _array(2 * size, flow)
    mapping = small.gemm_mapping(m, n, k)
    assert 0 < mapping.utilisation <= 1 and 0 < mapping.mapping_efficiency <= 1
    assert big.gemm_mapping(m, n, k).folds <= mapping.folds
    # Closed form: folds of the two spatial dimensions.
    s_r, s_c = {"os": (m, n), "ws": (k, n), "is": (k, m)}[flow]
    assert mapping.folds == math.ceil(s_r / size) * math.ceil(s_c / size)


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 224), c_in=st.integers(1, 1024), c_out=st.integers(1, 1024),
       kernel=st.sampled_from([1, 3, 5, 7]), stride=st.sampled_from([1, 2]),
       depthwise=st.booleans(), size=_sizes, flow=_flows)
def test_random_convolutions_by_im2col_keep_utilisation_at_most_one(h, c_in, c_out, kernel,
                                                                     stride, depthwise, size, flow):
    layer = _conv_gemms(h, c_in, c_out, kernel, stride, depthwise)
    small, big = _array(size, flow), _array(2 * size, flow)
    cycles = layer.count * small.gemm_mapping(layer.m, layer.n, layer.k).cycles
    assert 0 < layer.macs / (cycles * size * size) <= 1
    assert big.gemm_mapping(layer.m, layer.n, layer.k).folds <= \
        small.gemm_mapping(layer.m, layer.n, layer.k).folds


def test_depthwise_layers_leave_a_128_array_nearly_idle_and_pointwise_do_not():
    array = _array(128, "ws")
    def util(layer):
        return layer.macs / (layer.count * array.gemm_mapping(layer.m, layer.n, layer.k).cycles
                             * 128 * 128)
    layers = mobilenet_v1()
    dw = [util(x) for x in layers if x.group == "mobilenet_dw"]
    pw = [util(x) for x in layers if x.group == "mobilenet_pw"]
    # A depthwise GEMM fills 9 of 128 rows and 1 of 128 columns: at most 9 / 128**2 of the PEs.
    assert max(dw) <= 9 / 128**2
    assert min(pw) > 10 * max(dw)


def test_layer_sweep_runs_each_layer_on_the_engine_and_refuses_a_non_systolic_device(tmp_path):
    import numpy as np

    from clustersim.errors import ConfigError
    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.workloads.layer_sweep import LayerSweep

    cluster = ClusterConfig(node={"device": "TPU-v3-MXU", "count": 1,
                                  "link_bandwidth": "100 GB/s"}).build()
    sweep = LayerSweep(layers=["vit_block"], array_sizes=[16, 128], dataflows=["ws"])
    result = sweep.run(cluster, rng=np.random.default_rng(0), record_trace=True)
    device = cluster.devices[0]
    expected = sum(device.op_time(matmul(g.m, g.n, g.k, batch=g.count, shared_b=True))
                   for g in sweep.gemms())
    assert result.metrics["layers_time_s"] == pytest.approx(expected, rel=1e-9)
    assert len(result.trace.spans) == len(sweep.gemms())
    result.plots["utilisation_heatmap"](str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").exists()
    with pytest.raises(ConfigError, match="systolic array"):
        sweep.check(ClusterConfig(node="DGX-H100").build())

"""NCCL model refinements and the public measurements behind the shipped profiles: NVLS chunk
schedule and per-chunk overhead (exact formulas), NCCL's NVLink budget, the fit recovering known
parameters, measurement files read as published (or refused with file, line and column)."""

import math
from pathlib import Path

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.calibration import load_profile
from clustersim.hardware.network.nccl import (NcclFit, NcclGraph, NcclModel, graph_budget_gbps,
                                              nvls_chunk_bytes)
from clustersim.validate import measurement_files as mf
from clustersim.validate.nccl_fit import (CollectiveSample, _Terms, fit_nccl, graph_options,
                                          predict_s)

REL = 1e-9
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "profiles" / "data" / "nccl_tests"
H100_NVLS = NcclGraph(arch="hopper", ranks=8, channels=24, bw_intra_gbps=15.0, nvls_channels=16,
                      nvls_bw_intra_gbps=20.0)


def test_nvls_chunks_follow_ncclss_enqueue_schedule():
    # 16 channels x 8 heads = 128 concurrent ops: 16 KiB below 2 x 128 x 32 KiB = 8 MiB,
    # 32 KiB below 8 x 128 x 64 KiB = 64 MiB, 64 KiB below 64 x 128 x 128 KiB = 1 GiB, else 128 KiB
    assert [nvls_chunk_bytes(s, 16, 8) for s in (2**20, 8 * 2**20 - 1, 8 * 2**20, 2**26 - 1,
                                                 2**26, 2**30 - 1, 2**30, 2**34)] == [
        16384, 16384, 32768, 32768, 65536, 65536, 131072, 131072]


def test_nvls_time_is_nccls_estimate_with_the_fitted_chunk_overhead():
    fit = NcclFit((1.0, 1.0, 1.3), (1.0, 1.0, 0.9), nvls_bandwidth_scale=0.8,
                  nvls_chunk_overhead_bytes=8192.0)
    m = NcclModel(H100_NVLS, fit)
    size = 2**27                                   # 128 MiB: NVLS, 64 KiB chunks
    assert m.choose("all_reduce", size)[:2] == ("nvls", "Simple")
    lat_us, bw_us = m.terms_us("all_reduce", "nvls", "Simple", size)
    expected = 1e-6 * (lat_us * 1.3 + bw_us / 0.8 * (1 + 8192 / 65536))
    assert math.isclose(m.time_s("all_reduce", size), expected, rel_tol=REL)
    # ring keeps its own per-protocol scale (all-gather never runs NVLS in a node)
    assert m.choose("all_gather", size)[0] == "ring"
    lat_us, bw_us = m.terms_us("all_gather", "ring", "Simple", size)
    assert math.isclose(m.time_s("all_gather", size), 1e-6 * (lat_us * 1.3 + bw_us / 0.9),
                        rel_tol=REL)


def test_nccls_nvlink_budget_is_its_per_link_bandwidth_times_the_links():
    assert math.isclose(graph_budget_gbps("ampere", 300e9), 12 * 20.0, rel_tol=REL)
    assert math.isclose(graph_budget_gbps("hopper", 450e9), 18 * 20.6, rel_tol=REL)
    options = graph_options("hopper", 8, budget_gbps=370.8)
    assert options and all(185.4 <= c * b <= 370.8 and nvc == 16 for c, b, nvc, _ in options)
    assert all(nvc == 0 for *_, nvc, _ in graph_options("hopper", 4, budget_gbps=370.8))


def test_vectorised_fit_terms_equal_the_model():
    m = NcclModel(H100_NVLS, NcclFit((1.7, 1.1, 1.2), (1.4, 0.9, 1.1), 0.95, 12000.0))
    samples = [CollectiveSample("all_reduce", 8, 2.0**e, 1.0) for e in range(11, 31)]
    assert np.allclose(1e-6 * _Terms.of(m, samples).time_us(m.fit), predict_s(m, samples),
                       rtol=REL, atol=0)


def test_fit_recovers_nvls_scale_and_chunk_overhead_from_synthetic_times():
    truth = NcclModel(H100_NVLS, NcclFit((1.8, 1.0, 1.2), (1.3, 1.0, 1.0), 0.9, 10000.0))
    sizes = [2.0**e for e in range(11, 31)]
    samples = [CollectiveSample("all_reduce", 8, s, truth.time_s("all_reduce", s)) for s in sizes]
    fitted = fit_nccl("hopper", 8, samples, budget_gbps=370.8,
                      picks=[("all_reduce", 2**21, "nvls")])
    assert np.allclose(predict_s(fitted, samples), [s.time_s for s in samples], rtol=1e-3)
    assert fitted.graph.nvls_bw_intra_gbps == 20.0
    assert math.isclose(fitted.fit.nvls_bandwidth_scale, 0.9, rel_tol=1e-3)
    assert math.isclose(fitted.fit.nvls_chunk_overhead_bytes, 10000.0, rel_tol=1e-2)


def test_a_fit_refuses_known_picks_no_graph_can_make():
    samples = [CollectiveSample("all_reduce", 4, 2.0**e, 1e-5 * e) for e in range(11, 20)]
    with pytest.raises(ValueError, match="no NCCL graph"):
        fit_nccl("hopper", 4, samples, budget_gbps=370.8, picks=[("all_reduce", 2**30, "nvls")])


def test_profile_fits_round_trip_and_old_profiles_still_load():
    fit = NcclFit((1.5, 1.0, 1.2), (2.0, 1.0, 0.9), 0.96, 13000.0)
    assert NcclFit.from_dict(fit.to_dict()) == fit
    old = {"latency_scale": [1.0, 1.0, 2.0], "bandwidth_scale": [1.0, 1.0, 1.5]}
    assert NcclFit.from_dict(old) == NcclFit((1.0, 1.0, 2.0), (1.0, 1.0, 1.5))
    with pytest.raises(ValueError, match="nvls_chunk_overhead_bytes"):
        NcclFit(nvls_chunk_overhead_bytes=-1.0)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_shipped_nccl_tests_files_are_the_published_rows(name):
    """Each file says where it comes from, and every row's bus bandwidth is its own size / time
    x 2(n-1)/n: a row typed wrong would break that (the columns were copied, not recomputed)."""
    path = DATA / name
    head = path.read_text().splitlines()[0]
    assert head.startswith("# Source:")
    records = mf.read_nccl_tests(path)
    rows = [line.split() for line in path.read_text().splitlines()
            if line.strip() and line.split()[0].isdigit()]
    n = records[0].gpus
    for row in rows:
        size, time_us, busbw = float(row[0]), float(row[5]), float(row[7])
        if busbw >= 1.0:
            assert math.isclose(size / time_us / 1e3 * 2 * (n - 1) / n, busbw, rel_tol=0.01)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*")
                                         if p.suffix in (".txt", ".csv")))
def test_shipped_nccl_sources_ran_over_nvlink_not_pcie(name):
    """The largest all-reduce of every shipped file reaches a bus bandwidth no PCIe link can carry
    (PCIe 5.0 x16: 64 GB/s per direction), so no PCIe-only machine slipped in."""
    path = DATA / name
    records = mf.read_nccl_csv(path) if path.suffix == ".csv" else mf.read_nccl_tests(path)
    for gpus in {r.gpus for r in records}:
        largest = max((r for r in records if r.gpus == gpus), key=lambda r: r.size_bytes)
        busbw = largest.size_bytes / largest.time_s * 2 * (gpus - 1) / gpus
        assert busbw > 150e9, (name, gpus, busbw)


def test_the_h200_table_times_are_its_algorithm_bandwidths():
    path = DATA / "h200_8gpu_mlengineering_all_reduce.csv"
    records = mf.read_nccl_csv(path)
    import csv

    rows = list(csv.DictReader(line for line in path.read_text().splitlines()
                               if not line.startswith("#")))
    assert len(rows) == len(records) == 20
    for row, record in zip(rows, records):
        assert math.isclose(record.size_bytes / record.time_s / 1e9, float(row["algbw_GBps"]),
                            rel_tol=1e-5)
        # busbw = algbw x 2(n-1)/n, both printed to 0.01 GB/s
        assert math.isclose(float(row["algbw_GBps"]) * 7 / 4, float(row["busbw_GBps"]),
                            rel_tol=2e-3, abs_tol=0.01 * 7 / 4)


@pytest.mark.parametrize("body, where", [
    ("collective,gpus,size_bytes,time_us\nall_reduce,8,2048,20\nallreduce,8,4096,21\n",
     "line 3, column 'collective'"),
    ("collective,gpus,size_bytes,time_us\nall_reduce,1,2048,20\n", "line 2, column 'gpus'"),
    ("collective,gpus,size_bytes,time_us\nall_reduce,8,2048,-2\n", "line 2, column 'time_us'"),
    ("collective,gpus,time_us\nall_reduce,8,20\n", "line 1, column 'size_bytes'"),
])
def test_bad_nccl_csvs_get_one_line_naming_file_line_and_column(tmp_path, body, where):
    path = tmp_path / "nccl.csv"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        mf.read_nccl_csv(path)
    assert str(err.value).startswith(f"{path}:{where}:") and "\n" not in str(err.value)


def test_bad_nccl_tests_output_names_file_and_line(tmp_path):
    text = (DATA / "h100_4gpu_lambda_all_reduce_perf.txt").read_text()
    path = tmp_path / "all_reduce_perf.txt"
    path.write_text(text.replace("   4525.6  ", "   4525,6  ", 1))
    line = 1 + text.splitlines().index(next(l for l in text.splitlines() if "4525.6" in l))
    with pytest.raises(ConfigError, match=rf"all_reduce_perf.txt:line {line}, column 'time'"):
        mf.read_nccl_tests(path)
    unnamed = tmp_path / "results.txt"
    unnamed.write_text(text.replace("# Collective test starting: all_reduce_perf\n", ""))
    with pytest.raises(ConfigError, match="results.txt.*cannot tell which collective"):
        mf.read_nccl_tests(unnamed)


def test_shipped_h100_profile_picks_what_nccl_is_measured_to_pick():
    models = load_profile(ROOT / "profiles" / "h100-sxm5-80gb.yaml").nccl_models
    eight, four = models[8], models[4]
    assert eight.choose("all_reduce", 2**20)[0] == "ring"
    assert all(eight.choose("all_reduce", 2.0**e)[0] == "nvls" for e in range(21, 35))
    assert all(four.choose("all_reduce", 2.0**e)[0] != "nvls" for e in range(11, 35))
    # all-gather runs the ring: its bus bandwidth at 16 GiB within 5 % of the 361.4 GB/s
    # measured on 8x H200 (stas00/ml-engineering network/README.md, "SHARP")
    size = 16 * 2**30
    busbw = size / eight.time_s("all_gather", size) * 7 / 8 / 1e9
    assert abs(busbw / 361.4 - 1) < 0.05


def test_the_xla_h100_table_times_are_its_throughputs_and_groups_fill_one_host():
    """OpenXLA's sm_90 rows: time = 4 bytes x elements / stored throughput, and every replica-group
    layout covers the 8 GPUs of one host (2 x 4, 4 x 2, 1 x 8): no multi-host row slipped in."""
    import csv

    path = DATA / "h100_xla_sm90_all_reduce.csv"
    records = mf.read_nccl_csv(path)
    rows = list(csv.DictReader(line for line in path.read_text().splitlines()
                               if not line.startswith("#")))
    assert len(rows) == len(records) == 66
    assert path.read_text().startswith("# Source:")
    for row, record in zip(rows, records):
        assert record.size_bytes == 4 * int(row["elements"])
        assert math.isclose(record.time_s, record.size_bytes / float(row["throughput_bytes_per_s"]),
                            rel_tol=1e-6)
        assert record.gpus * int(row["replica_groups"]) == 8
    assert sorted({r.gpus for r in records}) == [2, 4, 8]

"""`clustersim calibrate --from FILE`: measurement files read or refused with file, line and
column; a profile fitted on synthetic timings from known parameters recovers them."""

import json
import math

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.hardware.calibration import load_profile
from clustersim.hardware.gemm_tiles import GemmTiles
from clustersim.hardware.presets import load_gpu
from clustersim.ops import OpKind
from clustersim.validate import measurement_files as mf
from clustersim.validate.from_file import calibrate_from

A100 = load_gpu("A100-SXM4-80GB")
TRUTH = GemmTiles(mma_efficiency=0.75, operand_bandwidth_bytes_per_s=4e12, memory_efficiency=0.8,
                  fixed_s=5e-6)
HEADER = "kind,dtype,batch,m,n,k,elements,inputs,outputs,time_us\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, where", [
    ("kind,dtype,m,n,k\nmatmul,bf16,64,64,64\n", "line 1, column 'time_us'"),
    (HEADER + "matmul,bf16,1,64,64,64,,,,0\n", "line 2, column 'time_us'"),
    (HEADER + "matmul,bf16,1,64,64,64,,,,-3\n", "line 2, column 'time_us'"),
    (HEADER + "matmul,bf16,1,64,64,64,,,,5\nconv,bf16,1,64,64,64,,,,5\n", "line 3, column 'kind'"),
    (HEADER + "matmul,int4,1,64,64,64,,,,5\n", "line 2, column 'dtype'"),
    (HEADER + "elementwise,bf16,,,,,,1,1,5\n", "line 2, column 'elements'"),
    ("dtype,time_us\nbf16,3\n", "line 1, column 'kind'"),
])
def test_bad_kernel_tables_get_one_line_naming_file_line_and_column(tmp_path, body, where):
    path = write(tmp_path, "kernels.csv", body)
    with pytest.raises(ConfigError) as err:
        mf.read_kernel_table(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{where}:") and "\n" not in message


def test_the_cli_exits_2_with_that_line(tmp_path):
    path = write(tmp_path, "kernels.csv", HEADER + "matmul,bf16,1,64,64,64,,,,0\n")
    from typer.testing import CliRunner

    from clustersim.cli import app

    done = CliRunner().invoke(app, ["calibrate", "--from", str(path), "--gpu", "A100-SXM4-80GB",
                                    "-o", str(tmp_path / "p.yaml")])
    assert done.exit_code == 2
    assert f"{path}:line 2, column 'time_us'" in done.output


NCCL_TESTS = """# nThread 1 nGpus 1 minBytes 8 maxBytes 128 step: 2(factor) warmup iters: 5 iters: 20
# Collective test starting: all_reduce_perf
#  Rank  0 Group  0 Pid   1 on host device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   2 on host device  1 [0x2a] NVIDIA H100 80GB HBM3
#       size         count      type   redop    root     time   algbw   busbw  #wrong     time   algbw   busbw  #wrong
        2048           512     float     sum      -1    10.50    0.20    0.20       0    10.40    0.20    0.20       0
        4096          1024     float     sum      -1    11.25    0.36    0.36       0    11.00    0.37    0.37       0
"""


def test_nccl_tests_output_is_read_with_its_collective_and_gpu_count(tmp_path):
    records = mf.read_nccl_tests(write(tmp_path, "out.txt", NCCL_TESTS))
    assert [(r.collective, r.gpus, r.size_bytes) for r in records] == [
        ("all_reduce", 2, 2048), ("all_reduce", 2, 4096)]
    assert math.isclose(records[1].time_s, 11.25e-6, rel_tol=1e-12)
    bad = write(tmp_path, "bad.txt", NCCL_TESTS.replace("11.25", "0.00"))
    with pytest.raises(ConfigError, match=r"bad.txt:line 7, column 'time'"):
        mf.read_nccl_tests(bad)


def test_kineto_trace_kernels_become_ops_with_their_shapes(tmp_path):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::addmm", "ts": 0, "dur": 5,
         "args": {"External id": 7, "Input Dims": [[4096], [2048, 1024], [1024, 4096]],
                  "Input type": ["c10::BFloat16"] * 3}},
        {"ph": "X", "cat": "kernel", "name": "sm80_gemm", "ts": 1, "dur": 40.0,
         "args": {"External id": 7}},
        {"ph": "X", "cat": "kernel", "name": "splitK_reduce", "ts": 41, "dur": 2.0,
         "args": {"External id": 7}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::gelu", "ts": 50, "dur": 2,
         "args": {"External id": 8, "Input Dims": [[2048, 4096], []], "Input type": ["c10::Half", ""]}},
        {"ph": "X", "cat": "kernel", "name": "gelu_kernel", "ts": 51, "dur": 9.0,
         "args": {"External id": 8}},
    ]
    path = write(tmp_path, "trace.json", json.dumps({"traceEvents": events}))
    records = {r.op.kind: r for r in mf.read_kineto(path)}
    assert records[OpKind.MATMUL].op.shape == (1, 2048, 4096, 1024)
    assert records[OpKind.MATMUL].op.dtype == "bf16"
    assert math.isclose(records[OpKind.MATMUL].time_s, 42e-6, rel_tol=1e-12)
    assert records[OpKind.ELEMENTWISE].op.shape == (2048 * 4096,)
    assert records[OpKind.ELEMENTWISE].op.dtype == "fp16"


def test_a_profile_fitted_on_synthetic_timings_recovers_the_parameters(tmp_path):
    rng = np.random.default_rng(1)
    rows = [HEADER.strip()]
    for _ in range(60):
        m, n, k = int(2 ** rng.uniform(0, 14)), int(256 * rng.integers(2, 48)), int(256 * rng.integers(2, 48))
        t = TRUTH.time_s(batch=1, m=m, n=n, k=k, elem_bytes=2, num_sms=A100.num_sms,
                         peak_flops_per_s=A100.tensor_rate("bf16"),
                         hbm_bytes_per_s=A100.hbm_bandwidth_bytes_per_s)
        rows.append(f"matmul,bf16,1,{m},{n},{k},,,,{t * 1e6!r}")
    table = write(tmp_path, "kernels.csv", "\n".join(rows) + "\n")
    profile = calibrate_from([table], "A100-SXM4-80GB", tmp_path / "a100.yaml")
    fitted = load_profile(tmp_path / "a100.yaml").gemm
    for name in ("mma_efficiency", "operand_bandwidth_bytes_per_s", "memory_efficiency", "fixed_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUTH, name), rel=1e-3), name
    assert profile.calibration["held_out"]["matmul"]["mape_percent"] < 0.1
    gpu = load_profile(tmp_path / "a100.yaml").build_device()
    assert gpu.gemm_tiles() == fitted


def test_nccl_timings_fit_a_model_that_a_cluster_then_uses(tmp_path):
    from clustersim.hardware.cluster_config import ClusterConfig
    from clustersim.hardware.network.nccl import NcclFit, NcclGraph, NcclModel
    from clustersim.workloads.training_step import idle_collective_time_s

    truth = NcclModel(NcclGraph(arch="hopper", ranks=2, channels=8, bw_intra_gbps=30.0),
                      NcclFit((1.5, 1.0, 1.2), (1.0, 1.0, 0.9)))
    lines = ["collective,gpus,size_bytes,time_us"]
    lines += [f"all_reduce,2,{2 ** e},{truth.time_s('all_reduce', 2 ** e) * 1e6!r}"
              for e in range(11, 29)]
    table = write(tmp_path, "nccl.csv", "\n".join(lines) + "\n")
    profile = calibrate_from([table], "H100-SXM5-80GB", tmp_path / "h100.yaml")
    assert profile.calibration["held_out"]["all_reduce/2gpus"]["mape_percent"] < 0.5
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=2, collectives="nccl",
                            profile=str(tmp_path / "h100.yaml")).build()
    size = 3 * 2**20
    assert math.isclose(idle_collective_time_s(cluster, [("all_reduce", [0, 1], size)]),
                        truth.time_s("all_reduce", size), rel_tol=5e-3)


def _latency_only_sweep(tmp_path, truth, ranks):
    """All-reduce timings of ``truth`` from 2 to 32 KiB: latency-bound, so the sweep cannot tell
    the graph's bandwidth and the fit's tie-break (most bandwidth, as NCCL keeps the fastest
    graph) decides."""
    lines = ["collective,gpus,size_bytes,time_us"]
    lines += [f"all_reduce,{ranks},{2 ** e},{truth.time_s('all_reduce', 2 ** e) * 1e6!r}"
              for e in range(11, 16)]
    return write(tmp_path, "nccl_small.csv", "\n".join(lines) + "\n")


def test_the_node_bounds_the_nccl_topology_search_by_its_nvlink_budget(tmp_path):
    from clustersim.hardware.network.nccl import NcclGraph, NcclModel
    from clustersim.hardware.network.nccl_constants import graph_budget_gbps
    from clustersim.hardware.presets import load_node

    truth = NcclModel(NcclGraph(arch="hopper", ranks=4, channels=16, bw_intra_gbps=20.0))
    table = _latency_only_sweep(tmp_path, truth, 4)
    budget = graph_budget_gbps("hopper", load_node("DGX-H100").link_bandwidth_bytes_per_s)

    def total_gbps(profile):
        graph = profile.measurements["nccl"]["models"][4]["graph"]
        return graph["channels"] * graph["bw_intra_gbps"]

    free = calibrate_from([table], "H100-SXM5-80GB", tmp_path / "free.yaml")
    bounded = calibrate_from([table], None, tmp_path / "bounded.yaml", node="DGX-H100")
    assert total_gbps(free) > budget                       # a graph no H100 node can build
    assert 0.5 * budget <= total_gbps(bounded) <= budget
    assert bounded.measurements["nccl"]["nvlink_budget_gbps"] == pytest.approx(budget, rel=1e-12)
    assert bounded.device_name == "H100-SXM5-80GB"         # the node's GPU
    held = bounded.calibration["held_out"]["all_reduce/4gpus"]
    assert held["mape_percent"] < 1.0 and held["octave_mape_percent"] < 1.0


def test_a_gpu_that_is_not_the_nodes_is_refused_with_one_line(tmp_path):
    table = write(tmp_path, "nccl.csv", "collective,gpus,size_bytes,time_us\n"
                  + "".join(f"all_reduce,2,{2 ** e},{10 + e}\n" for e in range(11, 20)))
    from typer.testing import CliRunner

    from clustersim.cli import app

    result = CliRunner().invoke(app, ["calibrate", "--from", str(table), "--gpu", "A100-SXM4-80GB",
                                      "--node", "DGX-H100", "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2
    assert "not the GPU of node DGX-H100" in result.output
    assert "Traceback" not in result.output

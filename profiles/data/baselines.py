"""Held-out errors of the shipped profiles against the models they replace.

Usage: PYTHONPATH=. python profiles/data/baselines.py   (prints a table; takes ~1 minute)

GEMM rows: the held-out rows (split == held_out) of vidur_<gpu>_kernels.csv, kernel time without
launch overhead: (a) the uncalibrated preset (128x128 tiles, waves, efficiency 0.8),
(b) the shipped profile's tile/wave/split-K model. All-reduce rows: the sizes calibrate holds
out (every 4th from the second, per GPU count): (a) the default flow model (ring on the node
fabric, 1 us per step), (b) NCCL's model with the uncalibrated graph guess, (c) the profile's
fitted NCCL model.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from clustersim.hardware.calibration import load_profile
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.hardware.network.nccl import NcclModel, arch_of, default_graph
from clustersim.hardware.presets import load_gpu
from clustersim.ops import matmul
from clustersim.workloads.training_step import idle_collective_time_s

HERE = Path(__file__).parent
CASES = (("a100", "A100-SXM4-80GB", "DGX-A100", "a100-sxm4-80gb.yaml"),
         ("h100", "H100-SXM5-80GB", "DGX-H100", "h100-sxm5-80gb.yaml"))


def mape(predicted, measured) -> float:
    predicted, measured = np.asarray(predicted), np.asarray(measured)
    return float(100 * np.mean(np.abs(predicted - measured) / measured))


def gemm_rows(tag, gpu_name, profile):
    table = pd.read_csv(HERE / f"vidur_{tag}_kernels.csv", comment="#")
    rows = table[(table.kind == "matmul") & (table.split == "held_out")]
    preset = load_gpu(gpu_name)
    fitted = load_profile(HERE.parent / profile).build_device()
    measured = rows.time_us.values * 1e-6
    ops = [matmul(int(r.m), int(r.n), int(r.k), dtype="fp16") for r in rows.itertuples()]
    base = [preset.op_time(op) - preset.kernel_launch_overhead_s for op in ops]
    ours = [fitted.gemm_kernel_time_s(op, fitted.gemm_tiles()) for op in ops]
    bands = {"1-64 tokens": rows.m.values <= 64, "65-16k tokens": rows.m.values > 64}
    out = {"gemm held-out rows": len(rows), "gemm uncalibrated %": mape(base, measured),
           "gemm fitted %": mape(ours, measured)}
    for band, mask in bands.items():
        out[f"gemm fitted {band} %"] = mape(np.asarray(ours)[mask], measured[mask])
    return out


def all_reduce_rows(tag, gpu_name, node, profile):
    table = pd.read_csv(HERE / f"vidur_{tag}_all_reduce.csv", comment="#")
    fitted = load_profile(HERE.parent / profile).nccl_models
    out = {}
    for gpus, rows in table.groupby("gpus"):
        rows = rows.sort_values("size_bytes").iloc[1::4]
        cluster = ClusterConfig(node=node, nodes=1, gpus_per_node=int(gpus)).build()
        group = list(range(int(gpus)))
        flows = [idle_collective_time_s(cluster, [("all_reduce", group, s)]) for s in rows.size_bytes]
        guess = NcclModel(default_graph(arch_of(gpu_name), int(gpus),
                                        cluster_nvlink(node)))
        measured = rows.time_us.values * 1e-6
        out[f"all-reduce {gpus} GPUs flows %"] = mape(flows, measured)
        out[f"all-reduce {gpus} GPUs NCCL guess %"] = mape(
            [guess.time_s("all_reduce", s) for s in rows.size_bytes], measured)
        out[f"all-reduce {gpus} GPUs NCCL fitted %"] = mape(
            [fitted[int(gpus)].time_s("all_reduce", s) for s in rows.size_bytes], measured)
    return out


def cluster_nvlink(node: str) -> float:
    from clustersim.hardware.presets import load_node

    return load_node(node).nvlink_bandwidth_bytes_per_s


if __name__ == "__main__":
    results = {}
    for tag, gpu, node, profile in CASES:
        results[gpu] = {**gemm_rows(tag, gpu, profile), **all_reduce_rows(tag, gpu, node, profile)}
    print(pd.DataFrame(results).round(1).to_string())

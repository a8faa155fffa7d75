"""Extract kernel and all-reduce timings from Vidur's published profiling tables.

Source: github.com/microsoft/vidur, data/profiling/ (commit 7d47513363ec447a741ac5e47241580b47724fbf,
2024-11-19). Compute tables (fp16, one GPU, timed with the PyTorch profiler's record_function
regions, i.e. GPU kernel time): data/profiling/compute/{a100,h100}/<model>/mlp.csv, columns
time_stats.<op>.median in ms. Collectives: data/profiling/network/{a100,h100}_dgx/all_reduce.csv,
NCCL kernel time (Kineto, median of 11 back-to-back calls, not CUDA-graphed), ``size`` in bytes of
fp16 data. Only rows with devices_per_node == num_workers (one NVSwitch node) are kept; the
*_pairwise_nvlink tables are skipped (GPU pairs bridged by NVLink, others over PCIe: not a DGX).

Kept models: those without projection biases (a bias epilogue or add changes the kernel):
Llama-2-7b/70b, Llama-3-8B/70B, CodeLlama-34b, internlm-20b. Skipped: phi-2 (biases, GeLU),
Qwen-72B (QKV bias).

Usage: python profiles/data/extract_vidur.py /path/to/vidur.git  (writes the CSVs beside this file)
"""

import csv
import io
import subprocess
import sys
from pathlib import Path

COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"
MODELS = ["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-70b-hf", "meta-llama/Meta-Llama-3-8B",
          "meta-llama/Meta-Llama-3-70B", "codellama/CodeLlama-34b-Instruct-hf",
          "internlm/internlm-20b"]
OUT = Path(__file__).parent
# Held out of every fit: the shapes of two whole models (fitted on the other four).
HELD_OUT = ("Meta-Llama-3-8B", "CodeLlama-34b-Instruct-hf")
# Token counts kept (Vidur profiles every multiple of 8): powers of two and 1.5x powers of two,
# so the table stays small while still spanning decode (1 token) to long prefill.
TOKENS = sorted({2**i for i in range(16)} | {3 * 2**i for i in range(15)})


def show(repo: str, path: str) -> list[dict]:
    """The table's rows, or none when Vidur did not profile this (GPU, model) pair."""
    done = subprocess.run(["git", "--git-dir", repo, "show", f"{COMMIT}:{path}"],
                          capture_output=True, text=True)
    return list(csv.DictReader(io.StringIO(done.stdout))) if done.returncode == 0 else []


def gemm_shapes(row: dict) -> dict[str, tuple[int, int]]:
    heads, kv, h = int(row["n_head"]), int(row["n_kv_head"]), int(row["n_embd"])
    f, tp, gated = int(row["n_expanded_embd"]), int(row["num_tensor_parallel_workers"]), row["use_gated_mlp"] == "True"
    d = h // heads
    return {"attn_pre_proj": ((heads + 2 * kv) * d // tp, h), "attn_post_proj": (h, heads * d // tp),
            "mlp_up_proj": ((2 if gated else 1) * f // tp, h), "mlp_down_proj": (h, f // tp)}


def kernels(repo: str, gpu: str) -> list[dict]:
    rows, seen = [], set()
    for model in MODELS:
        for row in show(repo, f"data/profiling/compute/{gpu}/{model}/mlp.csv"):
            m = int(row["num_tokens"])
            if m not in TOKENS:
                continue
            tp = int(row["num_tensor_parallel_workers"])
            for op, (n, k) in gemm_shapes(row).items():
                key = (m, n, k)
                if key in seen:
                    continue
                seen.add(key)
                rows.append({"kind": "matmul", "dtype": "fp16", "batch": 1, "m": m, "n": n, "k": k,
                             "elements": "", "inputs": "", "outputs": "",
                             "time_us": round(1e3 * float(row[f"time_stats.{op}.median"]), 3),
                             "name": f"{model.split('/')[1]}.tp{tp}.{op}",
                             "split": "held_out" if model.split('/')[1] in HELD_OUT else "fit"})
            h, f = int(row["n_embd"]), int(row["n_expanded_embd"]) // tp
            # mlp_act is SiluAndMul as two torch kernels, silu(gate) then * up: 3f read, 2f written
            for op, elements, inputs, outputs in (("add", m * h, 2, 1), ("mlp_act", m * f, 3, 2)):
                key = (op, elements)
                if key in seen:
                    continue
                seen.add(key)
                rows.append({"kind": "elementwise", "dtype": "fp16", "batch": "", "m": "", "n": "",
                             "k": "", "elements": elements, "inputs": inputs, "outputs": outputs,
                             "time_us": round(1e3 * float(row[f"time_stats.{op}.median"]), 3),
                             "name": f"{model.split('/')[1]}.tp{tp}.{op}",
                             "split": "held_out" if model.split('/')[1] in HELD_OUT else "fit"})
    return rows


def all_reduce(repo: str, gpu: str) -> list[dict]:
    rows = []
    for row in show(repo, f"data/profiling/network/{gpu}_dgx/all_reduce.csv"):
        if row["devices_per_node"] != row["num_workers"] or row["rank"] != "0":
            continue
        rows.append({"collective": "all_reduce", "gpus": int(row["num_workers"]),
                     "size_bytes": int(row["size"]), "dtype": "fp16",
                     "time_us": round(1e3 * float(row["time_stats.all_reduce.median"]), 3)})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        fh.write(f"# Source: Vidur per-operator profiling tables, github.com/microsoft/vidur@{COMMIT[:12]} "
                 f"data/profiling ({path.stem.split('_')[1].upper()} SXM, fp16, GPU kernel time); "
                 "extracted by profiles/data/extract_vidur.py\n")
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    repo = sys.argv[1]
    for gpu in ("a100", "h100"):
        write(OUT / f"vidur_{gpu}_kernels.csv", kernels(repo, gpu))
        write(OUT / f"vidur_{gpu}_all_reduce.csv", all_reduce(repo, gpu))

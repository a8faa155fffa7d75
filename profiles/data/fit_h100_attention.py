"""Fit the H100 profile's attention efficiency (bf16, fp16) to measured Hopper SDPA kernel times.

Data: profiles/data/cudnn_h200_sdpa.csv: NVIDIA/cudnn-frontend's SDPA training benchmark with
cuDNN 9.19.1 on an H200 (the H100's die, SMs and clocks with faster HBM; attention at training
lengths is compute-bound, which ``main`` prints per row), bf16, GQA 64/8 heads, head dim 128,
causal and unmasked, 2048-32768 tokens, forward and backward; and FlashAttention-3 on an H100
(tritonbench PR #1267), causal, 1024-8192 tokens, as a cross-kernel check. cuDNN is what
Megatron-Core runs for attention on Hopper through Transformer Engine's fused attention.
Model and fit: profiles/data/attention_fit.py.

Split: the cuDNN rows at 2048, 8192 and 32768 tokens fitted (causal and unmasked, forward and
backward: 12 rows, 6 coefficients, the two ``causal`` terms because a causal kernel loses more at
short lengths); held out: 4096 and 16384 tokens (8 rows), every FA3 H100 row (cross_kernel_h100),
cuDNN 9.27's causal prefill on the H200 (forward; head dim 128 with 64 down to 8 query heads, the
per-GPU heads of tensor parallelism: cross_release_prefill; head dim 256: cross_head_dim_256).
Lengths clamped to the fitted 2048-32768; the 1024-token FA3 rows are reported apart. fp16 gets
the same coefficients (same tensor-core rate and kernels).

Usage (from the repository root):
    PYTHONPATH=. python profiles/data/fit_h100_attention.py           # print the fit and errors
    PYTHONPATH=. python profiles/data/fit_h100_attention.py --write   # update the H100 profile
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention_fit as af  # noqa: E402

HERE = Path(__file__).resolve().parent
TABLE = af.AttentionTable(
    data=HERE / "cudnn_h200_sdpa.csv",
    profile=HERE.parent / "h100-sxm5-80gb.yaml",
    length=af.FeatureScale(center=13.0, scale=2.0, min=11.0, max=15.0),
    short_seq=2048,
    fitted_by="profiles/data/fit_h100_attention.py",
    split_text=("cuDNN 9.19.1 (H200) at 2048/8192/32768 tokens fitted (causal and unmasked, fwd + "
                "bwd), 4096/16384 held out; every FlashAttention-3 H100 row (cross_kernel_h100) a "
                "cross-kernel check; below 2048 tokens reported apart"),
    source_text=("profiles/data/cudnn_h200_sdpa.csv (NVIDIA/cudnn-frontend SDPA training benchmark, "
                 "cuDNN 9.19.1 on H200 @df73764a, bf16, GQA 64/8, head dim 128; FA3 on H100 from "
                 "meta-pytorch/tritonbench#1267)"),
    terms=af.LENGTH_TERMS + af.MASK_TERMS,
    dtypes=("bf16", "fp16"))



def compute_bound_lines() -> list[str]:
    """Memory time over compute time of each row's roofline on the H100 (< 1: compute-bound)."""
    device = af.bare_device(TABLE)
    out = []
    for r in af.rows(TABLE):
        roof = device.roofline(af.op_of(r))
        out.append(f"{r['release']:20s} {int(r['q_len']):6d} {r['direction']} "
                   f"memory/compute {roof.memory_s / roof.compute_s:.3f}")
    return out


def main(write: bool) -> None:
    fitted, result, preset, lines = af.report(TABLE)
    print("\n".join(lines + [""] + compute_bound_lines()))
    if write:
        header = ["# Attention (bf16, fp16): fitted per direction and length on cuDNN 9.19's measured "
                  "SDPA (H200, the H100's SMs and clocks;",
                  f"#   attention: profiles/data/fit_h100_attention.py); held-out MAPE "
                  f"{result['held_out']['mape_percent']} % (cuDNN, other lengths), "
                  f"{result['cross_kernel_h100']['mape_percent']} % (FA3 on H100)."]
        af.write_profile(TABLE, fitted, result, preset, header)
        print(f"wrote {TABLE.profile}")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])

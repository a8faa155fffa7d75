"""Fit the B200 profile's attention efficiency to cuDNN's measured B200 SDPA times.

Data: profiles/data/cudnn_b200_sdpa.csv (NVIDIA/cudnn-frontend's SDPA training benchmark on one
B200: bf16, causal, GQA 128/8 heads, head dim 128, forward and backward, sequence 512-131072; the
header of the CSV cites the commits). cuDNN is the kernel Megatron-Core reaches on Blackwell
through Transformer Engine's fused attention. Model and fit: profiles/data/attention_fit.py.

On B200 the backward is bound by shared-memory traffic, the forward by the exponential units
(FlashAttention-4, arXiv 2603.05451); here the backward reaches ~0.8 of the forward's efficiency
at every length, and efficiency rises from 4096 to 32768 tokens and then flattens.

Split: cuDNN 9.13.1 at 4096, 16384 and 65536 tokens fitted (forward and backward: 6 rows, 4
coefficients); held out: 8192, 32768 and 131072 tokens of the same release, and every row of
cuDNN 9.10.2 (cross-release). Query lengths are clamped to the fitted 4096-65536; below 4096
tokens the measured times are far above any model of the kernel (per-call work the benchmark
pays outside it, too few query tiles to fill 148 SMs): reported apart, not fitted.

Usage (from the repository root):
    PYTHONPATH=. python profiles/data/fit_b200_attention.py           # print the fit and errors
    PYTHONPATH=. python profiles/data/fit_b200_attention.py --write   # update the B200 profile
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention_fit as af  # noqa: E402

HERE = Path(__file__).resolve().parent
TABLE = af.AttentionTable(
    data=HERE / "cudnn_b200_sdpa.csv",
    profile=HERE.parent / "b200-sxm-180gb.yaml",
    length=af.FeatureScale(center=14.0, scale=2.0, min=12.0, max=16.0),
    short_seq=4096,
    fitted_by="profiles/data/fit_b200_attention.py",
    split_text=("cuDNN 9.13.1 at 4096/16384/65536 tokens fitted (fwd + bwd), 8192/32768/131072 held "
                "out; every cuDNN 9.10.2 row a cross-release check; below 4096 tokens reported apart"),
    source_text=("profiles/data/cudnn_b200_sdpa.csv (NVIDIA/cudnn-frontend SDPA training benchmark "
                 "on B200, bf16, causal, GQA 128/8, head dim 128; cuDNN 9.13.1 @bb37575d, 9.10.2 "
                 "@cb560b92)"))
PRESET_EFFICIENCY = af.PRESET_EFFICIENCY



def main(write: bool) -> None:
    fitted, result, preset, lines = af.report(TABLE)
    print("\n".join(lines))
    if write:
        header = ["# Attention (bf16): fitted per direction and length on cuDNN's measured B200 SDPA "
                  "(profiles/data/fit_b200_attention.py);",
                  f"# held-out MAPE {result['held_out']['mape_percent']} % (cuDNN 9.13.1, other "
                  f"lengths), {result['cross_release']['mape_percent']} % (cuDNN 9.10.2). "
                  "Elementwise kernels, NCCL: preset."]
        af.write_profile(TABLE, fitted, result, preset, header)
        print(f"wrote {TABLE.profile}")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])

"""Fit the A100 profile's attention efficiency (bf16, fp16) to FlashAttention-2's measured A100 times.

Data: profiles/data/fa2_a100_sdpa.csv: FlashAttention-2's forward on an A100 (liangan1/GPU_travel,
32 query heads, 32 or 8 KV heads, head dim 128, causal and unmasked, q 1024 or 4096 tokens with
kv 1024 or 4096, at the sustained ~1200 MHz clock the author reports). FlashAttention-2 is the
fused attention of the Ampere era (Megatron-LM's --use-flash-attn, llm-foundry's attn_impl flash).
Model and fit: profiles/data/attention_fit.py.

No measured A100 backward table was found, so the backward term is not fitted: it is the ratio
of FlashAttention-2's best backward to its best forward fraction of the A100's peak, 63 % / 73 %
(Dao 2023, arXiv 2307.08691, section 4.1), log(63/73) = -0.147, applied at every length. With
two lengths only, log efficiency is linear in log length (no square term), and flat beyond them.

Split: rows with q_len == kv_len fitted (1024 and 4096 tokens, both masks, both KV-head counts: 8
rows, 4 coefficients); held out: the q 1024 / kv 4096 rows (another shape: a short query over a
longer key range, bottom-right causal), and cuDNN 9.27's causal prefill on an A100 PCIe at
2048-16384 tokens (cudnn-frontend, another kernel and SKU: checks the length trend past the fitted
range). Lengths clamped to the measured 1024-4096.

Usage (from the repository root):
    PYTHONPATH=. python profiles/data/fit_a100_attention.py           # print the fit and errors
    PYTHONPATH=. python profiles/data/fit_a100_attention.py --write   # update the A100 profile
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention_fit as af  # noqa: E402

HERE = Path(__file__).resolve().parent
# FlashAttention-2 on A100: up to 73 % of peak forward, 63 % backward (Dao 2023, section 4.1).
BACKWARD_TO_FORWARD = 0.63 / 0.73
TABLE = af.AttentionTable(
    data=HERE / "fa2_a100_sdpa.csv",
    profile=HERE.parent / "a100-sxm4-80gb.yaml",
    length=af.FeatureScale(center=11.0, scale=1.0, min=10.0, max=12.0),
    short_seq=1024,
    fitted_by="profiles/data/fit_a100_attention.py",
    split_text=("FlashAttention-2 forward, q_len == kv_len rows (1024 and 4096 tokens, causal and "
                "unmasked, 32 and 8 KV heads) fitted; the q 1024 / kv 4096 rows held out; backward "
                "term fixed to log(63/73) (Dao 2023, section 4.1), not fitted"),
    source_text=("profiles/data/fa2_a100_sdpa.csv (FlashAttention-2 forward on A100, liangan1/"
                 "GPU_travel @07d0469e performance/flash-attn/README.md; backward/forward from "
                 "arXiv 2307.08691 section 4.1)"),
    terms=("1", "log2_prefill_q_len", "causal", "causal*log2_prefill_q_len"),
    fixed={"backward": round(math.log(BACKWARD_TO_FORWARD), 6)},
    dtypes=("bf16", "fp16"))



def main(write: bool) -> None:
    fitted, result, preset, lines = af.report(TABLE)
    print("\n".join(lines))
    if write:
        header = ["# Attention (bf16, fp16): FlashAttention-2's measured A100 forward by length "
                  "and mask, backward at 63/73 of it",
                  f"#   attention: (Dao 2023; profiles/data/fit_a100_attention.py); held-out MAPE "
                  f"{result['held_out']['mape_percent']} % (forward, q 1024 / kv 4096), "
                  f"{result['cross_kernel_a100_pcie']['mape_percent']} % (cuDNN prefill, A100 PCIe)."]
        af.write_profile(TABLE, fitted, result, preset, header)
        print(f"wrote {TABLE.profile}")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])

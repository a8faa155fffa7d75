"""Fit the B200 profile's attention efficiency to cuDNN's measured B200 SDPA times.

Data: profiles/data/cudnn_b200_sdpa.csv (NVIDIA/cudnn-frontend's SDPA training benchmark on one
B200: bf16, causal, GQA 128/8 heads, head dim 128, forward and backward, sequence 512-131072; the
header of the CSV cites the commits). cuDNN is the kernel Megatron-Core reaches on Blackwell
through Transformer Engine's fused attention.

Model (clustersim/hardware/gpu.py): an attention op takes ``launch + ideal_s / efficiency`` where
``ideal_s`` is the causal-masked, wave-quantised tensor-core time of its FLOPs (a backward op's
FLOPs counted 5/4 times for the recomputed ``Q K^T``). The efficiency is an ``EfficiencyFit`` of
the profile (kind attention, dtype bf16), log-linear in its features:

    log eff = c0 + c1 * backward + c2 * z + c3 * z^2,   z = (log2 q_len - 14) / 2

``backward`` because the two directions run different kernels (on B200 the backward is bound by
shared-memory traffic, the forward by the exponential units: FlashAttention-4, arXiv 2603.05451;
here the backward reaches ~0.8 of the forward's efficiency at every length); the quadratic in log length because efficiency rises from 4096
to 32768 tokens and then flattens. ``log2_prefill_q_len`` is None for queries shorter than one
128-row tile, so decode attention keeps the device's own (memory) efficiency.

Split: cuDNN 9.13.1 at 4096, 16384 and 65536 tokens fitted (forward and backward: 6 rows, 4
coefficients, least squares on log efficiency); held out: 8192, 32768 and 131072 tokens of the
same release, and every row of cuDNN 9.10.2 (cross-release). Query lengths are clamped to the
fitted 4096-65536; below 4096 tokens the measured times are far above any model of the kernel
(per-call work the benchmark pays outside it, too few query tiles to fill 148 SMs): reported
apart, not fitted.

Usage (from the repository root):
    PYTHONPATH=. python profiles/data/fit_b200_attention.py           # print the fit and errors
    PYTHONPATH=. python profiles/data/fit_b200_attention.py --write   # update the B200 profile
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from clustersim.hardware.calibration import EfficiencyFit, FeatureScale, load_profile
from clustersim.hardware.gpu import GPU
from clustersim.ops import OpKind, attention

HERE = Path(__file__).resolve().parent
DATA = HERE / "cudnn_b200_sdpa.csv"
PROFILE = HERE.parent / "b200-sxm-180gb.yaml"
SHORT_SEQ = 4096       # below: outside the regime the fit describes (docstring)
PRESET_EFFICIENCY = 0.7
LENGTH = FeatureScale(center=14.0, scale=2.0, min=12.0, max=16.0)   # log2 tokens, fitted range


def rows() -> list[dict]:
    with DATA.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def op_of(row: dict):
    return attention(int(row["batch"]), int(row["q_heads"]), int(row["kv_heads"]),
                     int(row["q_len"]), int(row["kv_len"]), int(row["head_dim"]), dtype="bf16",
                     causal=row["causal"] == "true", backward=row["direction"] == "bwd")


def bare_device() -> GPU:
    """The B200 of the profile's parameters without the profile: the roofline the fit scales."""
    return GPU(**load_profile(PROFILE).parameters)


def fit(device: GPU, data: list[dict]) -> EfficiencyFit:
    chosen = [r for r in data if r["split"] == "fit"]
    design, target = [], []
    for r in chosen:
        op = op_of(r)
        z = (min(max(math.log2(op.shape[3]), LENGTH.min), LENGTH.max) - LENGTH.center) / LENGTH.scale
        design.append([1.0, float(op.backward), z, z * z])
        busy = float(r["time_ms"]) * 1e-3 - device.kernel_launch_overhead_s
        target.append(math.log(device.ideal_time_s(op) / busy))
    coef = np.linalg.lstsq(np.array(design), np.array(target), rcond=None)[0]
    terms = {name: round(float(c), 6) for name, c in zip(
        ("1", "backward", "log2_prefill_q_len", "log2_prefill_q_len*log2_prefill_q_len"), coef)}
    return EfficiencyFit(OpKind.ATTENTION, "bf16",
                         {"backward": FeatureScale(0.0, 1.0, 0.0, 1.0), "log2_prefill_q_len": LENGTH},
                         terms, {"model": "polynomial", "samples": len(chosen),
                                 "fitted_by": "profiles/data/fit_b200_attention.py"})


def errors(device: GPU, efficiency, data: list[dict]) -> list[tuple[dict, float]]:
    """(row, signed error %), + meaning the model is slower than measured; ``efficiency`` is an
    EfficiencyFit or a constant."""
    out = []
    for r in data:
        op = op_of(r)
        eff = efficiency.efficiency(op) if isinstance(efficiency, EfficiencyFit) else efficiency
        predicted = device.kernel_launch_overhead_s + device.ideal_time_s(op) / eff
        out.append((r, 100.0 * (predicted / (float(r["time_ms"]) * 1e-3) - 1.0)))
    return out


def summary(device: GPU, efficiency, data: list[dict]) -> dict:
    errs = errors(device, efficiency, data)

    def stats(pairs) -> dict:
        return {"samples": len(pairs),
                "mape_percent": round(sum(abs(e) for _, e in pairs) / len(pairs), 2),
                "max_ape_percent": round(max(abs(e) for _, e in pairs), 2)}

    long = [(r, e) for r, e in errs if int(r["q_len"]) >= SHORT_SEQ]
    out = {split: stats([(r, e) for r, e in long if r["split"] == split])
           for split in ("fit", "held_out", "cross_release")}
    out["below_4096_tokens"] = stats([(r, e) for r, e in errs if int(r["q_len"]) < SHORT_SEQ])
    return out


def main(write: bool) -> None:
    device, data = bare_device(), rows()
    fitted = fit(device, data)
    print(f"fit terms {dict(fitted.terms)}")
    print(f"{'release':13s} {'seq':>7s} {'dir':3s} {'split':13s} {'measured_ms':>11s} "
          f"{'model_ms':>9s} {'error':>7s} {'eff':>6s} {'preset':>7s}")
    preset_errors = dict((id(r), e) for r, e in errors(device, PRESET_EFFICIENCY, data))
    for r, e in errors(device, fitted, data):
        measured = float(r["time_ms"])
        print(f"{r['release']:13s} {int(r['q_len']):7d} {r['direction']:3s} {r['split']:13s} "
              f"{measured:11.3f} {measured * (1 + e / 100):9.3f} {e:+6.1f}% "
              f"{fitted.efficiency(op_of(r)):6.3f} {preset_errors[id(r)]:+6.1f}%")
    result, preset = summary(device, fitted, data), summary(device, PRESET_EFFICIENCY, data)
    for split in result:
        print(f"{split:18s} fitted {result[split]}   preset {PRESET_EFFICIENCY} {preset[split]}")
    if write:
        _write(fitted, result, preset)


def _write(fitted: EfficiencyFit, result: dict, preset: dict) -> None:
    text = PROFILE.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    raw = yaml.safe_load(text)
    entry = fitted.to_dict()
    entry["training"] = {**entry["training"], "split": (
        "cuDNN 9.13.1 at 4096/16384/65536 tokens fitted (fwd + bwd), 8192/32768/131072 held out; "
        "every cuDNN 9.10.2 row a cross-release check; below 4096 tokens reported apart"),
        "source": "profiles/data/cudnn_b200_sdpa.csv (NVIDIA/cudnn-frontend SDPA training benchmark "
                  "on B200, bf16, causal, GQA 128/8, head dim 128; cuDNN 9.13.1 @bb37575d, 9.10.2 "
                  "@cb560b92)",
        "errors": result, f"errors_with_preset_{PRESET_EFFICIENCY}": preset}
    raw["fits"] = [f for f in raw.get("fits") or [] if f.get("kind") != "attention"] + [entry]
    raw["calibration"].setdefault("held_out", {})["attention"] = {
        "samples": result["held_out"]["samples"] + result["cross_release"]["samples"],
        "mape_percent": round((result["held_out"]["mape_percent"] * result["held_out"]["samples"]
                               + result["cross_release"]["mape_percent"]
                               * result["cross_release"]["samples"])
                              / (result["held_out"]["samples"] + result["cross_release"]["samples"]), 2),
        "max_ape_percent": max(result["held_out"]["max_ape_percent"],
                               result["cross_release"]["max_ape_percent"])}
    kept = [line.replace(" No kernel other than GEMM is calibrated (attention, elementwise: preset).", "")
            for line in header if not line.startswith(("# Attention", "# held-out MAPE"))]
    kept += ["# Attention (bf16): fitted per direction and length on cuDNN's measured B200 SDPA "
             "(profiles/data/fit_b200_attention.py);",
             f"# held-out MAPE {result['held_out']['mape_percent']} % (cuDNN 9.13.1, other lengths), "
             f"{result['cross_release']['mape_percent']} % (cuDNN 9.10.2). Elementwise kernels, "
             "NCCL: preset."]
    PROFILE.write_text("\n".join(kept) + "\n" + yaml.safe_dump(raw, sort_keys=False, width=100))
    print(f"wrote {PROFILE}")


if __name__ == "__main__":
    main("--write" in sys.argv[1:])

"""Shared by the per-GPU attention fits (fit_b200_attention.py, fit_h100_attention.py,
fit_a100_attention.py): fit a profile's attention efficiency to measured SDPA kernel times.

Data: a CSV per GPU (``#`` comment lines cite the source, then columns release, batch, q_len,
kv_len, q_heads, kv_heads, head_dim, causal, direction, time_ms, split). ``split`` is ``fit`` for
the rows fitted; any other value names a held-out set reported on its own (other lengths of the
same run, another mask, another kernel or GPU...).

Model (clustersim/hardware/gpu.py): an attention op takes ``launch + ideal_s / efficiency`` where
``ideal_s`` is the causal-masked, wave-quantised tensor-core time of its FLOPs (a backward op's
FLOPs counted 5/4 times for the recomputed ``Q K^T``). The efficiency is an ``EfficiencyFit`` of
the profile (kind attention), log-polynomial in its features:

    log eff = c0 + c1 * backward + c2 * z + c3 * z^2 [+ c4 * causal + c5 * causal * z],
    z = (clamp(log2 q_len) - center) / scale

``backward`` because the two directions run different kernels, the polynomial in log length
because efficiency rises with length and then flattens; the optional ``causal`` terms where a
table has masked and unmasked rows (a causal kernel loses more at short lengths).
``log2_prefill_q_len`` is None for queries shorter than one 128-row tile, so decode attention
keeps the device's own (memory) efficiency. A term may be fixed from a source instead of fitted
(``AttentionTable.fixed``), when the data do not cover it. Coefficients: least squares on log
efficiency over the ``fit`` rows.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from clustersim.hardware.calibration import EfficiencyFit, FeatureScale, load_profile
from clustersim.hardware.gpu import GPU
from clustersim.ops import OpKind, attention

LENGTH_TERMS = ("1", "backward", "log2_prefill_q_len", "log2_prefill_q_len*log2_prefill_q_len")
# With masked and unmasked rows: causal kernels are slower at short lengths, not at long ones.
MASK_TERMS = ("causal", "causal*log2_prefill_q_len")
PRESET_EFFICIENCY = 0.7
FLAG = FeatureScale(0.0, 1.0, 0.0, 1.0)


@dataclass(frozen=True)
class AttentionTable:
    """One GPU's measured attention table and how it is fitted."""

    data: Path
    profile: Path
    length: FeatureScale                  # log2 tokens: center, scale, clamp range (fitted range)
    short_seq: int                        # below: reported apart, outside what the fit describes
    fitted_by: str
    split_text: str
    source_text: str
    terms: tuple[str, ...] = LENGTH_TERMS  # fitted terms
    fixed: dict = field(default_factory=dict)   # term -> coefficient taken from a source
    dtypes: tuple[str, ...] = ("bf16",)   # profile fits written (same coefficients)


def rows(table: AttentionTable) -> list[dict]:
    with table.data.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def op_of(row: dict):
    return attention(int(row["batch"]), int(row["q_heads"]), int(row["kv_heads"]),
                     int(row["q_len"]), int(row["kv_len"]), int(row["head_dim"]), dtype="bf16",
                     causal=row["causal"] == "true", backward=row["direction"] == "bwd")


def bare_device(table: AttentionTable) -> GPU:
    """The GPU of the profile's parameters without the profile: the roofline the fit scales."""
    return GPU(**load_profile(table.profile).parameters)


def _term_value(term: str, op, z: float) -> float:
    values = {"1": 1.0, "backward": float(op.backward), "causal": float(op.causal),
              "log2_prefill_q_len": z}
    out = 1.0
    for factor in term.split("*"):
        out *= values[factor]
    return out


def fit(table: AttentionTable, device: GPU, data: list[dict]) -> EfficiencyFit:
    chosen = [r for r in data if r["split"] == "fit"]
    length = table.length
    design, target = [], []
    for r in chosen:
        op = op_of(r)
        z = (min(max(math.log2(op.shape[3]), length.min), length.max) - length.center) / length.scale
        design.append([_term_value(t, op, z) for t in table.terms])
        busy = float(r["time_ms"]) * 1e-3 - device.kernel_launch_overhead_s
        fixed = sum(c * _term_value(t, op, z) for t, c in table.fixed.items())
        target.append(math.log(device.ideal_time_s(op) / busy) - fixed)
    coef = np.linalg.lstsq(np.array(design), np.array(target), rcond=None)[0]
    fitted = {t: round(float(c), 6) for t, c in zip(table.terms, coef)}
    terms = {t: fitted.get(t, table.fixed.get(t)) for t in LENGTH_TERMS + MASK_TERMS
             if t in fitted or t in table.fixed}
    features = {"backward": FLAG, "log2_prefill_q_len": length}
    if any("causal" in t for t in terms):
        features["causal"] = FLAG
    return EfficiencyFit(OpKind.ATTENTION, "bf16", features, terms,
                         {"model": "polynomial", "samples": len(chosen),
                          "fitted_by": table.fitted_by})


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


def _stats(pairs) -> dict:
    return {"samples": len(pairs),
            "mape_percent": round(sum(abs(e) for _, e in pairs) / len(pairs), 2),
            "max_ape_percent": round(max(abs(e) for _, e in pairs), 2)}


def summary(table: AttentionTable, device: GPU, efficiency, data: list[dict]) -> dict:
    """Error statistics per split (rows of at least ``short_seq`` tokens), and the short rows."""
    errs = errors(device, efficiency, data)
    long = [(r, e) for r, e in errs if int(r["q_len"]) >= table.short_seq]
    splits = list(dict.fromkeys(r["split"] for r, _ in long))
    out = {split: _stats([(r, e) for r, e in long if r["split"] == split]) for split in splits}
    short = [(r, e) for r, e in errs if int(r["q_len"]) < table.short_seq]
    if short:
        out[f"below_{table.short_seq}_tokens"] = _stats(short)
    return out


def held_out(table: AttentionTable, device: GPU, efficiency, data: list[dict]) -> dict:
    """One figure for every row not fitted (of at least ``short_seq`` tokens)."""
    return _stats([(r, e) for r, e in errors(device, efficiency, data)
                   if r["split"] != "fit" and int(r["q_len"]) >= table.short_seq])


def report(table: AttentionTable) -> tuple[EfficiencyFit, dict, dict, list[str]]:
    """The fit, its error summary, the preset's, and one printable line per row."""
    device, data = bare_device(table), rows(table)
    fitted = fit(table, device, data)
    lines = [f"fit terms {dict(fitted.terms)}",
             f"{'release':20s} {'seq':>7s} {'mask':6s} {'dir':3s} {'split':13s} {'measured_ms':>11s} "
             f"{'model_ms':>9s} {'error':>7s} {'eff':>6s} {'preset':>7s}"]
    preset_errors = dict((id(r), e) for r, e in errors(device, PRESET_EFFICIENCY, data))
    for r, e in errors(device, fitted, data):
        measured = float(r["time_ms"])
        mask = "causal" if r["causal"] == "true" else "full"
        lines.append(f"{r['release']:20s} {int(r['q_len']):7d} {mask:6s} {r['direction']:3s} "
                     f"{r['split']:13s} {measured:11.3f} {measured * (1 + e / 100):9.3f} "
                     f"{e:+6.1f}% {fitted.efficiency(op_of(r)):6.3f} {preset_errors[id(r)]:+6.1f}%")
    result = summary(table, device, fitted, data)
    preset = summary(table, device, PRESET_EFFICIENCY, data)
    for split in result:
        lines.append(f"{split:18s} fitted {result[split]}   preset {PRESET_EFFICIENCY} {preset[split]}")
    lines.append(f"{'all held out':18s} fitted {held_out(table, device, fitted, data)}   preset "
                 f"{held_out(table, device, PRESET_EFFICIENCY, data)}")
    return fitted, result, preset, lines


def fit_entries(table: AttentionTable, fitted: EfficiencyFit, result: dict, preset: dict) -> list:
    """The profile's ``fits`` entries for attention: one per dtype, the same coefficients."""
    entry = fitted.to_dict()
    entry["training"] = {**entry["training"], "split": table.split_text,
                         "source": table.source_text, "errors": result,
                         f"errors_with_preset_{PRESET_EFFICIENCY}": preset}
    return [copy.deepcopy({**entry, "dtype": dtype}) for dtype in table.dtypes]   # no YAML anchors


def write_profile(table: AttentionTable, fitted: EfficiencyFit, result: dict, preset: dict,
                  header: list[str]) -> None:
    """Put the attention fit into the profile by editing its text, so that every other part of
    the file (GEMM tile model, NCCL models, other fits) stays byte-identical: the ``# Attention``
    header lines, ``calibration.held_out.attention`` (inserted last in ``held_out``) and the
    attention entries at the end of ``fits`` are replaced."""
    device, data = bare_device(table), rows(table)
    lines = table.profile.read_text().splitlines()
    lines = _drop_attention(lines)
    head_end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines = lines[:head_end] + header + lines[head_end:]
    overall = held_out(table, device, fitted, data)
    block = ["    attention:"] + [f"      {k}: {v}" for k, v in overall.items()]
    held = lines.index("  held_out:")
    end = next(i for i in range(held + 1, len(lines)) if not lines[i].startswith("    "))
    lines = lines[:end] + block + lines[end:]
    if "fits:" not in lines:
        lines.append("fits:")
    dumped = yaml.safe_dump(fit_entries(table, fitted, result, preset), sort_keys=False, width=100)
    table.profile.write_text("\n".join(lines) + "\n" + dumped)


def _drop_attention(lines: list[str]) -> list[str]:
    """The profile's lines without what write_profile adds (so that rewriting is idempotent)."""
    lines = [line for line in lines
             if not line.startswith(("# Attention", "#   attention:", "# held-out MAPE"))]
    if "  held_out:" in lines:
        held = lines.index("  held_out:")
        for i in range(held + 1, len(lines)):
            if not lines[i].startswith("    "):
                break
            if lines[i] == "    attention:":
                j = i + 1
                while j < len(lines) and lines[j].startswith("      "):
                    j += 1
                lines = lines[:i] + lines[j:]
                break
    if "- kind: attention" in lines:    # written last in ``fits`` by write_profile
        first = lines.index("- kind: attention")
        lines = lines[:first]
    return lines

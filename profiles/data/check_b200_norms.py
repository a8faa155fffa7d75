"""Held-out check (no fit) of the B200 profile's memory-bound kernel model on measured RMSNorm times.

Data: profiles/data/gb200_cudnn_rmsnorm.csv (cuDNN's RMSNorm on a GB200 GPU, the same Blackwell
die as B200; see its header for why this is a proxy). The simulator times a norm as an HBM-bound
elementwise op (clustersim/workloads/transformer.py: forward reads x and writes y, backward reads
x and dy and writes dx, bf16) at the preset ``memory_efficiency`` of the B200 profile's device,
plus the launch overhead. Only tensors of at least 32 MiB are scored (smaller ones take a few
microseconds, where launch and tail effects the roofline does not model dominate); the rest are
printed.

Usage: PYTHONPATH=. python profiles/data/check_b200_norms.py [--write]   (--write records the
result under measurements.checks of profiles/b200-sxm-180gb.yaml)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import yaml

from clustersim.hardware.calibration import load_profile
from clustersim.ops import OpKind, elementwise

HERE = Path(__file__).resolve().parent
SCORED_BYTES = 32 * 2**20


def check() -> dict:
    gpu = load_profile(HERE.parent / "b200-sxm-180gb.yaml").build_device()
    with (HERE / "gb200_cudnn_rmsnorm.csv").open() as f:
        data = list(csv.DictReader(line for line in f if not line.startswith("#")))
    scored, lines = [], []
    for row in data:
        elements = int(row["rows"]) * int(row["hidden"])
        for direction, inputs, flops in (("fwd", 1, 5.0), ("bwd", 2, 10.0)):
            op = elementwise(elements, inputs=inputs, flops_per_element=flops, kind=OpKind.NORM)
            measured = float(row[f"{direction}_ms"]) * 1e-3
            error = 100.0 * (gpu.op_time(op) / measured - 1.0)
            big = 2 * elements >= SCORED_BYTES
            lines.append(f"{row['model']:24s} {direction} {elements:>10d} {measured * 1e6:7.1f} us "
                         f"{gpu.op_time(op) * 1e6:7.1f} us {error:+6.1f}%{'' if big else '  (small)'}")
            if big:
                scored.append(error)
    return {"lines": lines, "samples": len(scored),
            "mape_percent": round(sum(abs(e) for e in scored) / len(scored), 2),
            "max_ape_percent": round(max(abs(e) for e in scored), 2),
            "mean_signed_percent": round(sum(scored) / len(scored), 2)}


def write(result: dict) -> None:
    path = HERE.parent / "b200-sxm-180gb.yaml"
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    raw = yaml.safe_load(text)
    raw["measurements"].setdefault("checks", {})["rmsnorm_gb200_proxy"] = {
        "what": "preset memory_efficiency (not fitted) against cuDNN RMSNorm fwd/bwd on GB200, "
                "tensors >= 32 MiB",
        "data": "profiles/data/gb200_cudnn_rmsnorm.csv", "checked_by": "profiles/data/check_b200_norms.py",
        **{k: v for k, v in result.items() if k != "lines"}}
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False, width=100))


if __name__ == "__main__":
    result = check()
    print("\n".join(result["lines"]))
    print({k: v for k, v in result.items() if k != "lines"})
    if "--write" in sys.argv[1:]:
        write(result)

"""Fit the NCCL all-reduce models of the shipped A100/H100 profiles; score them on held-out sizes.

    PYTHONPATH=. python profiles/data/fit_nccl.py            # print the table
    PYTHONPATH=. python profiles/data/fit_nccl.py --write    # and rewrite the profiles' nccl parts

Sources per (GPU, group size), first = the reference the model is fitted to (see
profiles/README.md for why nccl-tests sweeps are preferred where one exists):

* nccl-tests sweeps (``nccl_tests/*.txt``, out-of-place time) where a public one was found:
  A100 8 GPUs (to 4 GiB, one process per GPU), A100 4 GPUs (8 B-128 MiB, ``-g 4``), H100 4 GPUs
  (to 1 GiB, ``-g 4``);
* otherwise Vidur's all-reduce tables (``vidur_*_all_reduce.csv``, 2 KiB-64 MiB).

OpenXLA's measured H100 collective table (``nccl_tests/h100_xla_sm90_all_reduce.csv``) is scored
on every H100 group as a cross-source, never fitted.

Split: by size octave, alternately: a row of ``size`` bytes is held out when
``floor(log2(size))`` is odd (2-4 KiB, 8-16 KiB, ..., 512 MiB-1 GiB), fitted when it is even. So
every part of the range has held-out rows, and no held-out size lies in a fitted octave.
Every other source of the same (GPU, group size) is scored whole, never fitted ("cross-source").
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from clustersim.hardware.network.nccl import NcclModel, default_graph, graph_budget_gbps
from clustersim.validate import measurement_files as mf
from clustersim.validate.nccl_fit import CollectiveSample, fit_nccl, octave_weights, predict_s

HERE = Path(__file__).resolve().parent
PROFILES = {"a100": HERE.parent / "a100-sxm4-80gb.yaml",
            "h100": HERE.parent / "h100-sxm5-80gb.yaml"}
ARCH = {"a100": "ampere", "h100": "hopper"}
# per-GPU NVLink rate per direction (clustersim/hardware/presets/nodes.yaml, DGX-A100 / DGX-H100)
NVLINK_BYTES_PER_S = {"a100": 300e9, "h100": 450e9}
VIDUR_MAX = 2**26                              # Vidur's tables stop at 64 MiB
# OpenXLA's measured sm_90 collective table (one XLA executable per call, concurrent replica
# groups): an independent H100 source for 2, 4 and 8 GPUs, scored only (see the file's header).
XLA_H100 = "nccl_tests/h100_xla_sm90_all_reduce.csv"
# (file, first byte size used, last byte size used, role) per (GPU, group size). "fit" rows are
# split by octave (fitted / held out); "cross" sources are only scored, never fitted.
SOURCES = {
    ("a100", 2): [("vidur_a100_all_reduce.csv", 0, VIDUR_MAX, "fit")],
    # nccl-tests on a 4x A100 HGX board (NVLink mesh, no NVSwitch: the file says why it stands in)
    ("a100", 4): [("nccl_tests/a100_4gpu_stanage_all_reduce_perf.txt", 0, 2**27, "fit"),
                  ("vidur_a100_all_reduce.csv", 0, VIDUR_MAX, "cross")],
    ("a100", 8): [("nccl_tests/a100_8gpu_thanos_mpi_all_reduce_perf.txt", 0, 2**30, "fit"),
                  ("nccl_tests/a100_8gpu_thanos_1proc_all_reduce_perf.txt", 0, 2**30, "cross"),
                  ("vidur_a100_all_reduce.csv", 0, VIDUR_MAX, "cross")],
    ("h100", 2): [("vidur_h100_all_reduce.csv", 0, VIDUR_MAX, "fit"),
                  (XLA_H100, 0, 2**30, "cross")],
    ("h100", 4): [("nccl_tests/h100_4gpu_lambda_all_reduce_perf.txt", 0, 2**30, "fit"),
                  ("vidur_h100_all_reduce.csv", 0, VIDUR_MAX, "cross"),
                  (XLA_H100, 0, 2**30, "cross")],
    # above Vidur's 64 MiB, the 8x H200 sweep (same NVLink 4 / NVSwitch / NVLS path as H100 SXM)
    ("h100", 8): [("vidur_h100_all_reduce.csv", 0, VIDUR_MAX, "fit"),
                  ("nccl_tests/h200_8gpu_mlengineering_all_reduce.csv", VIDUR_MAX + 1, 2**30,
                   "fit"),
                  ("nccl_tests/h200_8gpu_mlengineering_all_reduce.csv", 0, VIDUR_MAX, "cross"),
                  (XLA_H100, 0, 2**30, "cross")],
}
# What NCCL is known to pick (its NCCL_DEBUG_SUBSYS=TUNING log), enforced on the fitted graph: on
# 8x H200 (NVLink 4 + NVSwitch, as H100 SXM) all-reduce runs Ring/LL up to 1 MiB and NVLS/Simple
# from 2 MiB up (stas00/ml-engineering network/README.md "SHARP", NCCL 2.27.7).
PICKS = {("h100", 8): [("all_reduce", 2**20, "ring"), ("all_reduce", 2**21, "nvls"),
                       ("all_reduce", 2**34, "nvls")]}
# Published single figures beyond 1 GiB (not fitted): (collective, GPUs, bytes, busbw GB/s, source).
# stas00/ml-engineering network/README.md "SHARP" @744d01e: 8x H200, nccl-tests, NCCL 2.27.7.
ML_ENG = "stas00/ml-engineering network/README.md (8x H200, nccl-tests, NCCL 2.27.7)"
SPOT_CHECKS = {
    "h100": [("all_reduce", 4, 8 * 2**30, 363.3, ML_ENG + ", Ring"),
             ("all_reduce", 8, 8 * 2**30, 473.1, ML_ENG + ", NVLS"),
             ("all_reduce", 8, 16 * 2**30, 480.0, ML_ENG + ", NVLS"),
             ("all_gather", 8, 16 * 2**30, 361.4, ML_ENG + ", Ring"),
             ("reduce_scatter", 8, 16 * 2**30, 362.9, ML_ENG + ", Ring")],
    "a100": [("all_reduce", 8, 2 * 2**30, 230.72, "a100_8gpu_thanos_mpi_all_reduce_perf.txt"),
             ("all_reduce", 8, 4 * 2**30, 232.81, "a100_8gpu_thanos_mpi_all_reduce_perf.txt")],
}
BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n}      # nccl-tests doc/PERFORMANCE.md


def spot_checks(gpu: str, models: dict) -> list[dict]:
    """Model bus bandwidth against each published figure (time error = busbw ratio - 1)."""
    out = []
    for coll, ranks, size, busbw, source in SPOT_CHECKS.get(gpu, []):
        model = models[ranks]
        predicted = size / model.time_s(coll, size) * BUS_FACTOR[coll](ranks) / 1e9
        algo, proto, _ = model.choose(coll, size)
        out.append({"collective": coll, "gpus": ranks, "bytes": size, "published_busbw_gbps": busbw,
                    "model_busbw_gbps": round(predicted, 1), "model_algorithm": f"{algo}/{proto}",
                    "time_error_percent": round(100 * (busbw / predicted - 1), 1),
                    "source": source})
    return out


MIN_BYTES, MAX_BYTES = 2048, 2**30          # the goal's range, 2 KiB-1 GiB
RANGES = ((2**11, 2**16, "2K-64K"), (2**16, 2**21, "64K-2M"), (2**21, 2**26, "2M-64M"),
          (2**26, 2**30 + 1, "64M-1G"))


def held_out(size_bytes: float) -> bool:
    return int(math.floor(math.log2(size_bytes))) % 2 == 1


def read_source(name: str, ranks: int, lo: float, hi: float) -> list[CollectiveSample]:
    path = HERE / name
    records = mf.read_nccl_csv(path) if path.suffix == ".csv" else mf.read_nccl_tests(path)
    return [CollectiveSample(r.collective, r.gpus, r.size_bytes, r.time_s) for r in records
            if r.gpus == ranks and r.collective == "all_reduce"
            and max(lo, MIN_BYTES) <= r.size_bytes <= hi]


def score(model, samples: list[CollectiveSample]) -> dict:
    """MAPE (%) over 2 KiB-1 GiB and per size range."""
    rows = [s for s in samples if s.size_bytes <= MAX_BYTES]
    if not rows:
        return {}
    ape = 100 * np.abs(predict_s(model, rows) / np.array([s.time_s for s in rows]) - 1)
    size = np.array([s.size_bytes for s in rows])
    out = {"samples": len(rows), "mape_percent": round(float(ape.mean()), 2),
           "octave_mape_percent": round(float(ape @ octave_weights(rows)), 2),
           "max_ape_percent": round(float(ape.max()), 2)}
    # the data's own scatter: each row against the median of the rows within +-25 % of its size
    # (at least 3 of them; dense sources only). A model smooth in size cannot beat it much.
    measured = np.array([s.time_s for s in rows])
    scatter = np.full(len(rows), np.nan)
    for i, x in enumerate(size):
        near = (size >= x / 1.25) & (size <= x * 1.25)
        if near.sum() >= 3:
            scatter[i] = 100 * abs(measured[i] / np.median(measured[near]) - 1)
    for lo, hi, name in RANGES:
        sel = (size >= lo) & (size < hi)
        if sel.any():
            out[f"mape_percent_{name}"] = round(float(ape[sel].mean()), 2)
            if np.isfinite(scatter[sel]).any():
                out[f"data_scatter_percent_{name}"] = round(float(np.nanmean(scatter[sel])), 2)
    return out


def fit_group(gpu: str, ranks: int) -> tuple[object, dict]:
    fitted, cross = [], []
    for name, lo, hi, role in SOURCES[(gpu, ranks)]:
        rows = read_source(name, ranks, lo, hi)
        (fitted if role == "fit" else cross).append((name, lo, hi, rows))
    samples = [s for *_, rows in fitted for s in rows]
    fit_rows = [s for s in samples if not held_out(s.size_bytes)]
    test_rows = [s for s in samples if held_out(s.size_bytes)]
    model = fit_nccl(ARCH[gpu], ranks, fit_rows, picks=PICKS.get((gpu, ranks), ()),
                     budget_gbps=graph_budget_gbps(ARCH[gpu], NVLINK_BYTES_PER_S[gpu]))
    report = {"fitted_on": {name: f"{max(lo, MIN_BYTES):.0f}-{hi:.0f} B"
                            for name, lo, hi, _ in fitted},
              "fitted_rows": len(fit_rows), "held_out": score(model, test_rows),
              "held_out_uncalibrated": score(NcclModel(default_graph(
                  ARCH[gpu], ranks, NVLINK_BYTES_PER_S[gpu])), test_rows),
              "held_out_by_source": {name: score(model, [s for s in rows if held_out(s.size_bytes)])
                                     for name, _, _, rows in fitted},
              "cross_source": {name: score(model, rows) for name, _, _, rows in cross}}
    return model, report


def nccl_section(models: dict, reports: dict, spots: list[dict]) -> dict:
    return {"models": {str(n): {"graph": asdict(m.graph), "fit": m.fit.to_dict()}
                       for n, m in sorted(models.items())},
            "spot_checks_beyond_1gib": spots,
            "fitted_by": "profiles/data/fit_nccl.py",
            "split": "by size octave: floor(log2(bytes)) odd -> held out, even -> fitted; "
                     "reference source only; other sources scored whole (cross_source)",
            "validation": {f"{n}gpus": reports[n] for n in sorted(reports)}}


def _yaml_block(data: dict, indent: int) -> str:
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
    return "".join(" " * indent + line + "\n" for line in text.splitlines())


def write_profile(path: Path, section: dict, reports: dict) -> None:
    """Replace only the profile's ``measurements.nccl`` block and its ``all_reduce/*`` held-out
    entries (the rest of the file, GEMM and kernel fits, is left byte for byte)."""
    text = path.read_text(encoding="utf-8")
    start = text.index("\n  nccl:\n") + 1
    end = text.index("\nfits:\n", start) + 1
    text = text[:start] + _yaml_block({"nccl": section}, 2) + text[end:]
    for n, report in reports.items():
        held = report["held_out"]
        entry = (f"    all_reduce/{n}gpus:\n      samples: {held['samples']}\n"
                 f"      mape_percent: {held['mape_percent']}\n"
                 f"      max_ape_percent: {held['max_ape_percent']}\n"
                 f"      octave_mape_percent: {held['octave_mape_percent']}\n")
        pattern = re.compile(rf"    all_reduce/{n}gpus:\n(      .*\n)+")
        text, count = pattern.subn(entry, text, count=1)
        if not count:
            raise SystemExit(f"{path}: no calibration.held_out.all_reduce/{n}gpus entry to replace")
    path.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the profiles' nccl parts")
    args = parser.parse_args(argv)
    for gpu in ("a100", "h100"):
        models, reports = {}, {}
        for ranks in (2, 4, 8):
            models[ranks], reports[ranks] = fit_group(gpu, ranks)
            r = reports[ranks]
            held = r["held_out"]
            ranges = " ".join(f"{k[13:]}={v}"
                              f"(scatter {held.get('data_scatter_percent_' + k[13:], '-')})"
                              for k, v in held.items() if k.startswith("mape_percent_"))
            print(f"{gpu} {ranks} GPUs: held-out MAPE {held['mape_percent']} % "
                  f"(octave-weighted {held['octave_mape_percent']} %) "
                  f"({held['samples']} rows; {ranges})  graph ch={models[ranks].graph.channels} "
                  f"bw={models[ranks].graph.bw_intra_gbps} "
                  f"nvls={models[ranks].graph.nvls_channels}")
            base = r["held_out_uncalibrated"]
            print(f"      uncalibrated NCCL model (nccl.default_graph): {base['mape_percent']} % "
                  f"(octave-weighted {base['octave_mape_percent']} %)")
            for name, cross in r["cross_source"].items():
                ranges = " ".join(f"{k[13:]}={v}" for k, v in cross.items()
                                  if k.startswith("mape_percent_"))
                print(f"      cross-source {name}: {cross['mape_percent']} % (octave-weighted "
                      f"{cross['octave_mape_percent']} %, {cross['samples']} rows; {ranges})")
        spots = spot_checks(gpu, models)
        for spot in spots:
            print(f"      spot {spot['collective']} {spot['gpus']} GPUs "
                  f"{spot['bytes'] / 2**30:.0f} GiB: busbw model {spot['model_busbw_gbps']} "
                  f"({spot['model_algorithm']}) vs published "
                  f"{spot['published_busbw_gbps']}: time error {spot['time_error_percent']:+} %")
        if args.write:
            write_profile(PROFILES[gpu], nccl_section(models, reports, spots), reports)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

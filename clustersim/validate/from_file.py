"""``clustersim calibrate --from FILE``: a profile fitted to measurements made elsewhere.

Kernel timings (a table or a Kineto trace) and NCCL timings (nccl-tests output or a CSV) are
split into a fitting set and a held-out set, fitted, and scored on the held-out rows; the
profile has the same format as an on-device calibration, relative to a GPU preset:

* matmul: the tile/wave/split-K GEMM model (``measurements.gemm_tiles``);
* other kernel kinds: efficiency fits per (kind, dtype) over the preset's roofline (``fits``),
  with no fixed time (kernel durations exclude the launch, which the device adds);
* collectives: an NCCL model per collective and group size (``measurements.nccl``). Given the
  node the timings were taken on (``node``), the topology search is bounded by that node's NVLink
  budget, as NCCL's own search is (``nccl_fit.graph_options``); without it every graph of NCCL's
  speed arrays is a candidate, which can fit a small sweep with a graph NCCL would never build.

The split: a ``split`` column (``fit`` / ``held_out``) when the file has one, else every
``HOLD_OUT_EVERY``-th row of a seeded permutation (kernels) or of the sizes of each group size
(collectives). Held-out errors per kind land in ``calibration.held_out``; collectives also get
the octave-weighted MAPE (every octave of size counts alike, whatever the sweep's density).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clustersim.errors import ConfigError
from clustersim.hardware.calibration import Profile
from clustersim.ops import OpKind
from clustersim.validate import measurement_files as mf
from clustersim.validate.fitting import Sample, fit_group
from clustersim.validate.gemm_fit import GemmSample, fit_gemm_tiles, predict_s, summary
from clustersim.validate.memory_fit import STREAMING_KINDS, fit_streaming

HOLD_OUT_EVERY = 4


def read_measurements(paths: Sequence[str | Path]) -> tuple[list, list]:
    """(kernel records, collective records) of every file, each read by its format."""
    kernels, collectives = [], []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError("file not found", file=str(path))
        if mf.is_kineto(path):
            kernels += mf.read_kineto(path)
        elif path.suffix == ".csv" and mf.is_nccl_csv(path):
            collectives += mf.read_nccl_csv(path)
        elif path.suffix == ".csv":
            kernels += mf.read_kernel_table(path)
        else:
            collectives += mf.read_nccl_tests(path)
    return kernels, collectives


def source_notes(paths: Sequence[str | Path]) -> dict[str, str]:
    """Each file's leading ``#`` comment lines (where the measurements come from)."""
    notes = {}
    for raw in paths:
        lines = []
        try:
            for line in Path(raw).read_text(encoding="utf-8").splitlines()[:20]:
                if not line.startswith("#"):
                    break
                lines.append(line.lstrip("# ").strip())
        except (OSError, UnicodeDecodeError):
            pass
        notes[str(raw)] = " ".join(lines)
    return notes


def _split_kernels(records: list, seed: int) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(records))
    held = {int(i) for i in order[::HOLD_OUT_EVERY]}
    fit = [r for i, r in enumerate(records) if (r.split == "fit" if r.split else i not in held)]
    test = [r for i, r in enumerate(records) if (r.split == "held_out" if r.split else i in held)]
    return fit, test


def _split_collectives(records: list) -> tuple[list, list]:
    fit, test = [], []
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        groups[(r.collective, r.gpus)].append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: r.size_bytes)
        for i, r in enumerate(rows):
            held = r.split == "held_out" if r.split else i % HOLD_OUT_EVERY == 1
            (test if held else fit).append(r)
    return fit, test


def _gemm_samples(records: list) -> list[GemmSample]:
    return [GemmSample(*r.op.shape, r.op.dtype, r.time_s) for r in records]


def _fit_kernels(gpu, fit: list, test: list, seed: int) -> tuple[Any, list, dict]:
    """(GEMM model or None, efficiency fits, held-out errors per kind)."""
    held: dict[str, dict] = {}
    matmuls = [r for r in fit if r.op.kind is OpKind.MATMUL]
    tiles = None
    if len(matmuls) >= 4:
        tiles = fit_gemm_tiles(gpu, _gemm_samples(matmuls))
        rows = [r for r in test if r.op.kind is OpKind.MATMUL]
        if rows:
            held["matmul"] = summary(predict_s(tiles, gpu, _gemm_samples(rows)),
                                     np.array([r.time_s for r in rows]))
    fits = []
    groups: dict[tuple, list] = defaultdict(list)
    for r in fit:
        if r.op.kind is not OpKind.MATMUL:
            groups[(r.op.kind, r.op.dtype)].append(r)
    for (kind, dtype), rows in sorted(groups.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
        samples = [Sample(r.op, gpu.ideal_time_s(r.op), 0.0, r.time_s) for r in rows]
        if kind in STREAMING_KINDS and len(samples) >= 2:
            efficiency = fit_streaming(kind, dtype, samples)   # memory_fit.py: why not a cubic
        else:
            efficiency = fit_group(kind, dtype, samples, seed=seed)
        fits.append(efficiency)
        tested = [r for r in test if (r.op.kind, r.op.dtype) == (kind, dtype)]
        if tested:
            predicted = np.array([gpu.ideal_time_s(r.op) / efficiency.efficiency(r.op)
                                  for r in tested])
            held[kind.value] = summary(predicted, np.array([r.time_s for r in tested]))
    return tiles, fits, held


def _fit_collectives(arch: str, fit: list, test: list, *,
                      budget_gbps: float | None = None) -> tuple[dict, dict]:
    from clustersim.validate.nccl_fit import CollectiveSample, fit_nccl, octave_weights
    from clustersim.validate.nccl_fit import predict_s as nccl_predict

    models, held = {}, {}
    for gpus in sorted({r.gpus for r in fit if r.collective == "all_reduce"}):
        rows = [CollectiveSample(r.collective, r.gpus, r.size_bytes, r.time_s)
                for r in fit if r.gpus == gpus and r.collective == "all_reduce"]
        model = fit_nccl(arch, gpus, rows, budget_gbps=budget_gbps)
        models[gpus] = {"graph": dataclasses.asdict(model.graph), "fit": model.fit.to_dict()}
        tested = [CollectiveSample(r.collective, r.gpus, r.size_bytes, r.time_s)
                  for r in test if r.gpus == gpus and r.collective == "all_reduce"]
        if tested:
            predicted = nccl_predict(model, tested)
            measured = np.array([s.time_s for s in tested])
            score = summary(predicted, measured)
            ape = 100 * np.abs(predicted / measured - 1)
            score["octave_mape_percent"] = round(float(ape @ octave_weights(tested)), 2)
            held[f"all_reduce/{gpus}gpus"] = score
    return models, held


def _gpu_and_budget(gpu_name: str | None, node_name: str | None) -> tuple[Any, float | None]:
    """The GPU preset the timings were taken on and, given their node, NCCL's NVLink budget of
    one of its GPUs (GB/s) for the topology search."""
    from clustersim.hardware.network.nccl import arch_of
    from clustersim.hardware.network.nccl_constants import ARCHS, graph_budget_gbps
    from clustersim.hardware.presets import load_gpu, load_node

    if node_name is None:
        if gpu_name is None:
            raise ConfigError("calibrating from files needs the GPU preset the measurements were "
                              "taken on: pass --gpu (e.g. A100-SXM4-80GB) or --node (e.g. DGX-A100)")
        return load_gpu(gpu_name), None
    node = load_node(node_name)
    gpu = load_gpu(gpu_name or node.device)
    if gpu.name != load_gpu(node.device).name:
        raise ConfigError(f"--gpu {gpu_name} is not the GPU of node {node.name} ({node.device}); "
                          f"drop --gpu or pass the node the measurements were taken on")
    arch = arch_of(gpu.name)
    return gpu, (graph_budget_gbps(arch, node.link_bandwidth_bytes_per_s) if arch in ARCHS else None)


def calibrate_from(paths: Sequence[str | Path], gpu_name: str | None, out: str | Path, *,
                   seed: int = 0, node: str | None = None) -> Profile:
    """Fit a profile of preset ``gpu_name`` (or of ``node``'s GPU) to the measurements in
    ``paths`` and save it; ``node`` also bounds the NCCL topology search by its NVLink budget."""
    from clustersim.hardware.network.nccl import arch_of

    gpu, budget_gbps = _gpu_and_budget(gpu_name, node)
    kernels, collectives = read_measurements(paths)
    if not kernels and not collectives:
        raise ConfigError("no usable measurements in " + ", ".join(map(str, paths)))
    k_fit, k_test = _split_kernels(kernels, seed)
    tiles, fits, held = _fit_kernels(gpu, k_fit, k_test, seed)
    c_fit, c_test = _split_collectives(collectives)
    models, c_held = _fit_collectives(arch_of(gpu.name), c_fit, c_test, budget_gbps=budget_gbps)
    held.update(c_held)
    measurements: dict[str, Any] = {}
    if tiles is not None:
        measurements["gemm_tiles"] = {"parameters": tiles.to_dict(),
                                      "fitted_on": len([r for r in k_fit if r.op.kind is OpKind.MATMUL])}
    if models:
        measurements["nccl"] = {"models": models}
        if node is not None:
            measurements["nccl"]["node"] = node
            measurements["nccl"]["nvlink_budget_gbps"] = budget_gbps
    params = {f.name: getattr(gpu, f.name) for f in dataclasses.fields(gpu)
              if f.name not in ("profile", "gemm")}
    for key in ("tensor_flops_per_s", "vector_flops_per_s"):
        params[key] = dict(params[key])
    profile = Profile(
        device_name=gpu.name, device_kind="cuda", model=gpu.name, parameters=params,
        fits=tuple(fits),
        environment={"measured_elsewhere": True, "date": _dt.date.today().isoformat()},
        calibration={"mode": "from-file", "sources": source_notes(paths), "seed": seed,
                     "split": f"'split' column, else every {HOLD_OUT_EVERY}th row held out",
                     "records": {"kernels": len(kernels), "collectives": len(collectives)},
                     "held_out": held},
        measurements=measurements)
    profile.save(out)
    return profile

"""``calibrate`` and ``validate``: the two things a user does with real kernels (the CLI wraps them).

``calibrate(out, quick, device)`` times the suite's fitting shapes on the local device, fits the
efficiency of its clustersim model per (op kind, dtype), and writes a profile (YAML) to ``out``.
``validate(profile, quick, out_dir, force)`` times fresh held-out shapes (never used to fit) and
returns a :class:`~clustersim.validate.report.ValidationReport`: MAPE and worst case per op kind
before calibration (the model's own parameters) and after (the profile), a parity plot and a CSV
in ``out_dir``. Neither prints; ``progress(stage, done, total)`` reports progress to a caller that
draws a bar. torch is imported when they run, not when this module is imported.

On a CPU the timing runs on ``threads`` torch threads (default: every available core but one, at
least one, so that other processes on the machine do not preempt a member of the thread team
mid-kernel; the profile records the number and ``validate`` uses it again).
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from clustersim.errors import ConfigError
from clustersim.hardware.calibration import (Profile, ProfileDeviceMismatch, check_profile_device,
                                             load_profile)
from clustersim.validate.report import ValidationReport, parity_plot, training_table

Progress = Callable[[str, int, int], None]
# What a case's samples are summarised by. GPU: the median (CUDA events time the kernel alone).
# CPU: the 10th percentile of the samples that no other process interrupted. On a CPU shared
# with other processes (and, on a VM, other guests of the host), interference with the caches
# and memory bandwidth lasts longer than a case's samples and slows the median too: on this
# project's 2-vCPU VMs, the medians of the same GEMMs differed by 5% on average between two runs
# of the suite, their p10s by 1.4% (median over shapes); a full calibration on a busy machine
# (load 2-3 on 2 cores) reached 5.6% / 5.8% held-out MAPE for GEMM / attention with the median
# and 3.8% / 3.8% with p10. The device model predicts an op on the device alone, which the p10
# estimates better. Pass statistic="median" to calibrate on the median anyway.
DEFAULT_STATISTIC = {"cuda": "median", "cpu": "p10"}


def default_cpu_threads() -> int:
    from clustersim.validate.local_device import default_threads

    return max(1, default_threads() - 1)


def _families(local: Any, quick: bool) -> list:
    from clustersim.validate.cases import cpu_families, cuda_families

    if local.kind == "cpu":
        return cpu_families(quick)
    return cuda_families(quick, local.dtypes)


def _plan(quick: bool):
    from clustersim.validate.timing import FULL_PLAN, QUICK_PLAN

    return QUICK_PLAN if quick else FULL_PLAN


class _TorchThreads:
    """Sets torch's intra-op thread count for a block and restores it after."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self) -> "_TorchThreads":
        import torch

        self.saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.saved)


def _gpu_parameters(model: Any) -> dict[str, Any]:
    import dataclasses

    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name != "profile"}
    for key in ("tensor_flops_per_s", "vector_flops_per_s"):
        values[key] = dict(values[key])
    return values


def _calibrated_model(local: Any, launch_s: float, bandwidth: dict[str, float],
                      fresh_pages: dict[str, float] | None):
    """The model the fits are relative to. CPU: this machine's figures with the measured memory
    bandwidth, dispatch overhead and fresh-page rate. GPU: the preset as it is (a profile attached
    to the preset in an experiment must mean the same), or the generic GPU with the measured
    bandwidth."""
    from dataclasses import replace

    from clustersim.hardware.cpu import CPU

    model = local.model
    if isinstance(model, CPU):
        changes: dict[str, float] = {
            "memory_bandwidth_bytes_per_s": bandwidth["model_bytes_per_s"],
            "dispatch_overhead_s": launch_s}
        rate = (fresh_pages or {}).get("fresh_page_bandwidth_bytes_per_s", math.inf)
        if math.isfinite(rate):
            changes["fresh_page_bandwidth_bytes_per_s"] = rate
        return replace(model, **changes)
    if local.model_name == "generic-gpu":
        return replace(model, hbm_bandwidth_bytes_per_s=bandwidth["model_bytes_per_s"],
                       kernel_launch_overhead_s=launch_s)
    return model


def _significant(value: Any, digits: int = 6) -> Any:
    """Floats (also inside dicts and lists) to ``digits`` significant digits, for a readable
    profile; applied before the model is built, so the file holds exactly what was used."""
    if isinstance(value, dict):
        return {k: _significant(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_significant(v, digits) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{digits}g}")
    return value


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _load_note(start: float | None, end: float | None, threads: int) -> list[str]:
    """A note when other processes kept the machine busy while kernels were timed."""
    from clustersim.validate.local_device import default_threads

    if start is None or end is None:
        return []
    others = max(start, end) - threads
    spare = default_threads() - threads
    if others <= max(spare, 0) + 0.25:
        return []
    return [f"the machine was busy while timing (1-minute load average {start} -> {end} on "
            f"{default_threads()} cores, {threads} of them timing): other processes share the "
            "caches and memory bandwidth, so expect larger errors than on a quiet machine"]


def fixed_time_s(model: Any, op: Any) -> float:
    """The part of the model's time for ``op`` that no efficiency scales (launch overhead)."""
    fixed = getattr(model, "fixed_time_s", None)
    return fixed(op) if fixed is not None else model.kernel_launch_overhead_s


def calibrate(out: Path, quick: bool = False, device: str | None = None, *,
              threads: int | None = None, seed: int = 0, statistic: str | None = None,
              records_csv: Path | None = None, progress: Progress | None = None) -> Path:
    """Time the fitting shapes on the local device, fit, write the profile to ``out``; return it.

    Every timed shape (median, p10, p90, min, repeats, share of interrupted samples, ideal and
    fixed time, efficiency, fitted prediction) goes to ``records_csv`` (default: beside the
    profile, ``<stem>.records.csv``).

    ``device``: None (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N". ``threads``: torch
    threads on a CPU (default ``default_cpu_threads()``). ``statistic``: what a case's samples
    are summarised by: "median", "p10" or "min" (default ``DEFAULT_STATISTIC``: median on a GPU,
    p10 on a CPU); ``validate`` uses the profile's. On a CPU the samples are those not
    interrupted by other processes (``timing.CPUClock``).
    """
    import torch

    from clustersim.validate.cases import suite
    from clustersim.validate.fitting import Sample, fit_group
    from clustersim.validate.local_device import local_device, pick_device_kind
    from clustersim.validate.runner import (measure_cases, measure_fresh_pages,
                                            measure_launch_overhead, measure_memory_bandwidth)

    started = time.perf_counter()
    kind = pick_device_kind(device)
    statistic = statistic or DEFAULT_STATISTIC[kind]
    threads = threads or (default_cpu_threads() if kind == "cpu" else None)
    with _TorchThreads(threads):
        torch.manual_seed(seed)
        local = local_device(device, threads or torch.get_num_threads())
        plan = replace(_plan(quick), statistic=statistic)
        launch = measure_launch_overhead(local, plan)
        launch_s = _significant(launch.median_s)
        bandwidth = _significant(measure_memory_bandwidth(local, quick))
        fresh = (_significant(measure_fresh_pages(local, local.model.mmap_threshold_bytes))
                 if local.kind == "cpu" else None)
        model = _calibrated_model(local, launch_s, bandwidth, fresh)
        cases = [case for case in suite(_families(local, quick), seed) if not case.held_out]
        load_start = _load_average()
        measured = measure_cases(local, cases, plan, seed=seed, progress=progress,
                                 stage="calibrate: timing kernels")
        load_end = _load_average()
        extra, notes = _extra_measurements(local, quick)
    best_copy = _best_large_copy_rate(measured, local.cache_bytes)
    if best_copy > 1.1 * bandwidth["model_bytes_per_s"]:
        notes.append(f"the STREAM-like measurement ({bandwidth['model_bytes_per_s']:.4g} B/s) was "
                     f"slower than the suite's own large copies ({best_copy:.4g} B/s), which the "
                     "model uses instead: other processes' memory traffic slowed the first")
        bandwidth = {**bandwidth, "model_bytes_per_s": _significant(best_copy)}
        model = _calibrated_model(local, launch_s, bandwidth, fresh)
    notes += _load_note(load_start, load_end, local.threads if local.kind == "cpu" else 1)
    groups: dict[tuple, list[Sample]] = defaultdict(list)
    for m in measured:
        op = m.case.op
        groups[(op.kind, op.dtype)].append(Sample(op, model.ideal_time_s(op),
                                                  fixed_time_s(model, op),
                                                  m.stats.value(statistic)))
    fits = tuple(fit_group(k, dtype, samples, seed=seed)
                 for (k, dtype), samples in sorted(groups.items(), key=lambda kv: (kv[0][0].value,
                                                                                   kv[0][1])))
    spreads = sorted(m.stats.spread for m in measured)
    parameters = (model.parameters() if local.kind == "cpu" else _gpu_parameters(model))
    profile = Profile(
        device_name=local.name, device_kind=local.kind, model=local.model_name,
        parameters=parameters, fits=fits, environment=local.environment,
        calibration={"mode": "quick" if quick else "full", "seed": seed, "statistic": statistic,
                     "records": len(measured), "seconds": round(time.perf_counter() - started, 1),
                     "timing": plan.as_dict(),
                     "median_relative_spread_p10_p90": round(spreads[len(spreads) // 2], 4),
                     "load_average": [load_start, load_end],
                     "held_out_rule": "crc32(case key) % 4 == 0 (see clustersim/validate/cases.py)",
                     "notes": notes},
        measurements={"launch_overhead_s": launch_s,
                      "launch_overhead_p10_p90_s": _significant([launch.p10_s, launch.p90_s]),
                      "memory_bandwidth_bytes_per_s": bandwidth["model_bytes_per_s"],
                      "stream": bandwidth, **({"fresh_pages": fresh} if fresh else {}),
                      **extra})
    path = profile.save(out)
    _write_records(measured, model, profile, statistic,
                   Path(records_csv) if records_csv else path.with_name(f"{path.stem}.records.csv"))
    return path


def _write_records(measured: list, model: Any, profile: Profile, statistic: str,
                   path: Path) -> Path:
    import pandas as pd

    rows = []
    for m in measured:
        op, stats = m.case.op, m.stats
        ideal, fixed, t = model.ideal_time_s(op), fixed_time_s(model, op), stats.value(statistic)
        efficiency = profile.efficiency(op)
        predicted = fixed + ideal / efficiency if efficiency else math.nan
        rows.append({"case": m.case.key, "family": m.case.family, "kind": op.kind.value,
                     "dtype": op.dtype, "flops": op.flops, "bytes": op.bytes_total,
                     "median_s": stats.median_s, "p10_s": stats.p10_s, "p90_s": stats.p90_s,
                     "min_s": stats.min_s, "repeats": stats.repeats, "preempted": stats.preempted,
                     "ideal_s": ideal, "fixed_s": fixed, "measured_s": t,
                     "efficiency_measured": ideal / (t - fixed) if t > fixed else math.inf,
                     "efficiency_fitted": efficiency, "predicted_s": predicted,
                     "ape": 100 * abs(predicted / t - 1)})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _best_large_copy_rate(measured: list, cache_bytes: float) -> float:
    """The best rate (bytes read + written per second) of the suite's copies of >= 2x the cache,
    each shape at its fastest trial; 0 when there are none."""
    rates = [m.case.op.bytes_total / m.stats.min_s for m in measured
             if m.case.family == "memcpy" and m.case.op.bytes_read >= 2 * cache_bytes]
    return max(rates, default=0.0)


def _extra_measurements(local: Any, quick: bool) -> tuple[dict[str, Any], list[str]]:
    """Host-device copies and all-reduce on GPUs; notes on what was skipped."""
    if local.kind != "cuda":
        return {}, ["host-device copies and all-reduce skipped: no GPU (CPU calibration)"]
    from clustersim.validate.collectives import measure_all_reduce
    from clustersim.validate.runner import measure_host_copies

    extra: dict[str, Any] = {"host_copies": measure_host_copies(local, quick)}
    all_reduce = measure_all_reduce(quick)
    notes = [all_reduce["skipped"]] if "skipped" in all_reduce else []
    extra["all_reduce"] = all_reduce
    # The measured all-reduce feeds NCCL's collective model (clusters with collectives: nccl).
    from clustersim.hardware.network.nccl import arch_of
    from clustersim.validate.nccl_fit import fit_on_device_all_reduce

    nccl = fit_on_device_all_reduce(all_reduce, arch_of(getattr(local.model, "name", "")))
    if nccl is not None:
        extra["nccl"] = nccl
    return extra, notes


def validate(profile: Path, quick: bool = False, out_dir: Path | None = None,
             force: bool = False, *, seed: int | None = None,
             progress: Progress | None = None) -> ValidationReport:
    """Time held-out shapes on the local device and compare with the predictions of the model
    before calibration and with ``profile``. Refuses a profile made on another device
    (``ProfileDeviceMismatch``) unless ``force``. Writes ``parity.png`` and ``validation.csv``
    to ``out_dir`` (default: ``<profile stem>.validation/`` beside the profile)."""
    import pandas as pd

    from clustersim.validate.cases import suite
    from clustersim.validate.local_device import local_device
    from clustersim.validate.runner import measure_cases

    profile = Path(profile)
    loaded = load_profile(profile, force=force)
    out_dir = Path(out_dir) if out_dir is not None else profile.with_suffix(".validation")
    notes: list[str] = []
    if loaded.device_kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"the profile is of a CUDA device ({loaded.device_name!r}) but torch "
                              "sees no GPU here; validate it on the machine it was made on",
                              file=str(profile))
    threads = int(loaded.environment.get("threads") or default_cpu_threads())
    statistic = str(loaded.calibration.get("statistic", "median"))
    seed = int(loaded.calibration.get("seed", 0)) if seed is None else seed
    with _TorchThreads(threads if loaded.device_kind == "cpu" else None):
        local = local_device(loaded.device_kind, threads)
        before = local.model
        same = _same_device(loaded, before.name)
        if same:
            after = loaded.build_device()
        else:
            check_profile_device(loaded, before.name, force=force)   # raises unless forced
            after = _attach(before, loaded.forced())
            notes.append(f"profile of {loaded.device_name!r} forced onto {local.name!r}: its "
                         "efficiencies with this device's own parameters")
        cases = [case for case in suite(_families(local, quick), seed) if case.held_out]
        load_start = _load_average()
        measured = measure_cases(local, cases, replace(_plan(quick), statistic=statistic),
                                 seed=seed + 1, progress=progress,
                                 stage="validate: timing held-out kernels")
        load_end = _load_average()
    notes += _load_note(load_start, load_end, threads if local.kind == "cpu" else 1)
    rows = []
    missing = set()
    for m in measured:
        op = m.case.op
        if loaded.fit_for(op.kind, op.dtype) is None:
            missing.add(f"{op.kind.value}/{op.dtype}")
        b, a, t = before.op_time(op), after.op_time(op), m.stats.value(statistic)
        rows.append({"case": m.case.key, "family": m.case.family, "kind": op.kind.value,
                     "dtype": op.dtype, "flops": op.flops, "bytes": op.bytes_total,
                     "measured_s": t, "median_s": m.stats.median_s, "p10_s": m.stats.p10_s,
                     "p90_s": m.stats.p90_s, "repeats": m.stats.repeats,
                     "preempted": m.stats.preempted,
                     "predicted_before_s": b, "predicted_after_s": a,
                     "ape_before": 100 * abs(b / t - 1), "ape_after": 100 * abs(a / t - 1)})
    if missing:
        notes.append(f"the profile has no fit for {sorted(missing)}: those shapes are predicted "
                     "from the device's parameters after calibration too")
    mode = "quick" if quick else "full"
    if loaded.calibration.get("mode") == "quick" and not quick:
        notes.append("the profile was fitted in quick mode; full-mode shapes reach beyond its "
                     "fitted range, where efficiencies are held at the range's edge")
    notes += [f"calibration: {note}" for note in loaded.calibration.get("notes", [])]
    records = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "validation.csv"
    records.to_csv(csv_path, index=False)
    plot = parity_plot(records, out_dir / "parity.png",
                       f"{local.name} ({local.kind}"
                       f"{f', {threads} torch threads' if local.kind == 'cpu' else ''}): "
                       f"held-out shapes, {mode} mode, {statistic} of repeats")
    return ValidationReport(device_name=local.name, device_kind=local.kind,
                            profile_path=str(profile), mode=mode, threads=threads,
                            statistic=statistic,
                            records=records, notes=notes, plot_path=plot, csv_path=csv_path,
                            training=training_table(loaded))


def _same_device(profile: Profile, name: str) -> bool:
    """Whether ``profile`` was made on the device called ``name`` (ignoring any force)."""
    from dataclasses import replace

    try:
        check_profile_device(replace(profile, allow_other_device=False), name)
    except ProfileDeviceMismatch:
        return False
    return True


def _attach(device: Any, profile: Profile) -> Any:
    from dataclasses import replace

    return replace(device, profile=profile)

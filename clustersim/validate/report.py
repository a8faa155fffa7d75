"""What a validation found: per-kind errors before and after calibration, a parity plot, a table.

The report is data (pandas tables) with a ``to_text()`` for the terminal; the library never
prints. Errors are absolute percentage errors of the predicted time against the measured median,
on held-out shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from clustersim.hardware.calibration import Profile


@dataclass
class ValidationReport:
    """Held-out errors of one profile on this device. ``records``: one row per measured case."""

    device_name: str
    device_kind: str
    profile_path: str
    mode: str
    threads: int
    records: pd.DataFrame
    statistic: str = "median"
    notes: list[str] = field(default_factory=list)
    plot_path: Path | None = None
    csv_path: Path | None = None
    training: pd.DataFrame | None = None

    def summary(self, by: Sequence[str] = ("kind",)) -> pd.DataFrame:
        """Per group: n, MAPE and worst absolute percentage error, before and after."""
        grouped = self.records.groupby(list(by), sort=True)
        table = grouped.agg(n=("case", "size"),
                            before_mape=("ape_before", "mean"), before_worst=("ape_before", "max"),
                            after_mape=("ape_after", "mean"), after_worst=("ape_after", "max"))
        return (table * 1.0).assign(n=table["n"].astype(int))

    def after_mape(self, kind: str) -> float:
        rows = self.records[self.records["kind"] == kind]
        return float(rows["ape_after"].mean())

    def overall(self) -> dict[str, float]:
        return {"before_mape": float(self.records["ape_before"].mean()),
                "after_mape": float(self.records["ape_after"].mean())}

    def to_text(self) -> str:
        lines = [f"Validation of {self.profile_path} on {self.device_name} ({self.device_kind}, "
                 f"{_threads(self.threads)}), {self.mode} mode: {len(self.records)} held-out shapes "
                 f"(never used to fit), error of predicted time vs measured {self.statistic}"]
        lines.append("")
        lines += _table(self.summary(("kind",)), "kind")
        lines.append("")
        lines += _table(self.summary(("kind", "dtype")), "kind / dtype")
        overall = self.overall()
        lines.append("")
        lines.append(f"all kinds: MAPE {overall['before_mape']:.1f}% before, "
                     f"{overall['after_mape']:.1f}% after calibration")
        if self.plot_path:
            lines.append(f"parity plot: {self.plot_path}")
        if self.csv_path:
            lines.append(f"records: {self.csv_path}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _threads(count: int) -> str:
    return f"{count} thread{'' if count == 1 else 's'}"


def _table(summary: pd.DataFrame, label: str) -> list[str]:
    header = (f"{label:<20} {'n':>4} {'MAPE before':>12} {'worst before':>13} "
              f"{'MAPE after':>11} {'worst after':>12}")
    lines = [header, "-" * len(header)]
    for key, row in summary.iterrows():
        name = "/".join(key) if isinstance(key, tuple) else str(key)
        lines.append(f"{name:<20} {int(row['n']):>4} {row['before_mape']:>11.1f}% "
                     f"{row['before_worst']:>12.1f}% {row['after_mape']:>10.1f}% "
                     f"{row['after_worst']:>11.1f}%")
    return lines


def parity_plot(records: pd.DataFrame, path: Path, title: str) -> Path:
    """Predicted against measured time, log-log, before and after calibration, by op kind."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 5), dpi=110)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    measured = records["measured_s"].to_numpy()
    low = float(min(measured.min(), records[["predicted_before_s", "predicted_after_s"]].min().min()))
    high = float(max(measured.max(), records[["predicted_before_s", "predicted_after_s"]].max().max()))
    line = np.array([low / 1.5, high * 1.5])
    for ax, column, error, label in (
            (axes[0], "predicted_before_s", "ape_before", "before calibration"),
            (axes[1], "predicted_after_s", "ape_after", "after calibration")):
        for kind, rows in records.groupby("kind", sort=True):
            mape = rows[error].mean()
            ax.scatter(rows["measured_s"], rows[column], s=18, alpha=0.8,
                       label=f"{kind} ({mape:.1f}%)")
        ax.plot(line, line, color="black", linewidth=0.8)
        ax.fill_between(line, line / 1.05, line * 1.05, color="grey", alpha=0.2, label="±5%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured time (s)")
        ax.set_title(f"{label}: MAPE {records[error].mean():.1f}%")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("predicted time (s)")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def training_table(profile: Profile) -> pd.DataFrame:
    """The profile's fits: kind, dtype, features, degree, training and cross-validated error."""
    rows = []
    for fit in profile.fits:
        rows.append({"kind": fit.kind.value, "dtype": fit.dtype, "features": ",".join(fit.features),
                     **{k: v for k, v in fit.training.items()}})
    return pd.DataFrame(rows)


def describe_profile(profile: Profile) -> str:
    """A few lines about a profile, for the CLI to print after ``calibrate``."""
    env, cal = profile.environment, profile.calibration
    if cal.get("mode") == "from-file":
        records = cal.get("records", {})
        lines = [f"profile of {profile.device_name} ({profile.device_kind}), fitted to "
                 f"measurements made elsewhere: {records.get('kernels', 0)} kernel and "
                 f"{records.get('collectives', 0)} collective timings"]
    else:
        lines = [f"profile of {profile.device_name} ({profile.device_kind}, model {profile.model}), "
                 f"torch {env.get('torch')}, {_threads(int(env.get('threads') or 0))}, "
                 f"{cal.get('mode')} mode, {cal.get('records')} shapes timed in "
                 f"{cal.get('seconds', float('nan')):.0f} s"]
    gemm = profile.measurements.get("gemm_tiles")
    if gemm:
        params = gemm.get("parameters", gemm)
        lines.append("  matmul: GEMM tile model, " + ", ".join(
            f"{k} {v:.4g}" for k, v in params.items()))
    for ranks, entry in sorted((profile.measurements.get("nccl") or {}).get("models", {}).items(),
                               key=lambda kv: int(kv[0])):
        graph = entry["graph"]
        lines.append(f"  NCCL model, {ranks} GPUs: {graph['channels']} channels x "
                     f"{graph['bw_intra_gbps']:.4g} GB/s" + (
                         f", NVLS {graph['nvls_channels']} x {graph['nvls_bw_intra_gbps']:.4g} GB/s"
                         if graph.get("nvls_channels") else ""))
    for key in ("launch_overhead_s", "memory_bandwidth_bytes_per_s"):
        if key in profile.measurements:
            lines.append(f"  {key}: {profile.measurements[key]:.4g}")
    for fit in profile.fits:
        t = fit.training
        cv = t.get("cv_mape_percent")
        form = "knots" if fit.knots else f"degree {t.get('degree')}"
        lines.append(f"  {fit.kind.value}/{fit.dtype}: {t.get('samples')} shapes, features "
                     f"{','.join(fit.features) or '-'} {form}: training MAPE "
                     f"{t.get('mape_percent')}%" + (f", cross-validated {cv}%" if cv is not None
                                                    else ""))
    for note in profile.calibration.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)

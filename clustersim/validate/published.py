"""``clustersim validate --published FILE``: simulate published end-to-end training results.

Each row of the file is a published measurement (a source, the metric and its value) and the
experiment that reproduces its configuration (cluster and workload, as in ``clustersim run``).
The rows are a test, never training data: nothing is fitted to them. Every row is simulated
and reported with its error and the components of the simulated step (compute, exposed
communication, pipeline bubble), so that a reader can see which part carries the error::

    rows:
    - name: megatron2021-table2-ptdp-175b
      source: {title: ..., url: ..., where: Table 2}
      published: {metric: hardware_tflops_per_gpu, value: 153}
      experiment: {name: ..., cluster: {...}, workload: {...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clustersim.errors import ConfigError

COMPONENTS = ("step_time_s", "compute_time_s", "exposed_communication_s", "bubble_fraction")


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(description="the paper, repository or report")
    url: str = Field(description="where to read it")
    where: str = Field("", description="table, figure or section of the figure")


class Published(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="a metric of the simulated run, e.g. hardware_tflops_per_gpu")
    value: float = Field(gt=0, description="the published value, in the metric's unit")


class PublishedRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="a short unique name of the row")
    source: Source = Field(description="where the figure is published")
    published: Published = Field(description="the published figure")
    notes: str = Field("", description="configuration details and how they were mapped")
    series: str = Field("", description="rows of one study in increasing size (e.g. a weak-scaling "
                                        "table); the report prints each series' trend")
    experiment: dict[str, Any] = Field(description="the experiment reproducing the configuration")


class PublishedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field("", description="free text")
    rows: list[PublishedRow] = Field(description="published results with their configurations")


@dataclass(frozen=True)
class RowResult:
    name: str
    metric: str
    published: float
    predicted: float
    components: dict[str, float]
    source: str
    series: str = ""

    @property
    def error_percent(self) -> float:
        return 100.0 * (self.predicted - self.published) / self.published


def load_published(path: str | Path) -> PublishedFile:
    from clustersim.config_errors import load_yaml, validate

    raw = load_yaml(path)
    return validate(PublishedFile, raw, file=str(path))


def simulate_row(row: PublishedRow, *, file: str, base_dir: str) -> RowResult:
    from clustersim.experiment import expand, run_one

    runs = expand({"name": row.name, **row.experiment}, file=file)
    if len(runs) != 1:
        raise ConfigError("a published row is one configuration; remove its sweep",
                          file=file, key=f"rows.{row.name}.experiment")
    run = runs[0]
    result = run_one(run, record_trace=False, base_dir=base_dir)
    metrics = result.metrics
    if row.published.metric not in metrics:
        raise ConfigError(f"the run has no metric {row.published.metric!r}; it has "
                          f"{sorted(metrics)}", file=file, key=f"rows.{row.name}.published.metric")
    components = {k: float(metrics[k]) for k in COMPONENTS if k in metrics}
    return RowResult(row.name, row.published.metric, row.published.value,
                     float(metrics[row.published.metric]), components,
                     f"{row.source.title}, {row.source.where}".strip(", "), row.series)


def validate_published(path: str | Path, progress=None) -> list[RowResult]:
    spec = load_published(path)
    base_dir = str(Path(path).parent)
    results = []
    for i, row in enumerate(spec.rows):
        if progress is not None:
            progress(row.name, i, len(spec.rows))
        results.append(simulate_row(row, file=str(path), base_dir=base_dir))
    return results


def report_text(results: list[RowResult]) -> str:
    lines = [f"{'row':40s} {'metric':26s} {'published':>10s} {'simulated':>10s} {'error':>8s}  "
             "compute_s exposed_comm_s bubble"]
    for r in results:
        c = r.components
        lines.append(f"{r.name:40s} {r.metric:26s} {r.published:10.4g} {r.predicted:10.4g} "
                     f"{r.error_percent:+7.1f}%  {c.get('compute_time_s', float('nan')):9.4g} "
                     f"{c.get('exposed_communication_s', float('nan')):14.4g} "
                     f"{c.get('bubble_fraction', float('nan')):6.3f}")
    if results:
        errors = [abs(r.error_percent) for r in results]
        lines.append(f"mean |error| {sum(errors) / len(errors):.1f} %, max {max(errors):.1f} % "
                     f"over {len(results)} rows")
    lines += [trend_text(name, rows) for name, rows in series_of(results).items()]
    return "\n".join(lines)


def series_of(results: list[RowResult]) -> dict[str, list[RowResult]]:
    """Rows of each named series with at least two rows, in file order."""
    groups: dict[str, list[RowResult]] = {}
    for r in results:
        if r.series:
            groups.setdefault(r.series, []).append(r)
    return {name: rows for name, rows in groups.items() if len(rows) >= 2}


def trend_text(name: str, rows: list[RowResult]) -> str:
    """First-to-last change of the published and simulated figures of one series: whether the
    simulator follows a published trend (e.g. TFLOP/s rising with model size)."""
    first, last = rows[0], rows[-1]
    pub = 100.0 * (last.published / first.published - 1)
    sim = 100.0 * (last.predicted / first.predicted - 1)
    return (f"trend {name} ({len(rows)} rows, {rows[0].metric}): published {first.published:.4g} -> "
            f"{last.published:.4g} ({pub:+.1f} %), simulated {first.predicted:.4g} -> "
            f"{last.predicted:.4g} ({sim:+.1f} %)")


def plot_published(results: list[RowResult], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Rows publish different metrics (TFLOP/s, tokens/s), so plot simulated / published.
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.4 * len(results)))
    names = [r.name for r in results]
    ratios = [r.predicted / r.published for r in results]
    colors = ["tab:green" if abs(r.error_percent) <= 10 else "tab:red" for r in results]
    ax.barh(names, [x - 1 for x in ratios], left=1, color=colors)
    ax.axvline(1.0, color="k", linewidth=1)
    for edge in (0.9, 1.1):
        ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
    for y, r in enumerate(results):
        ax.annotate(f" {r.error_percent:+.1f}%", (max(r.predicted / r.published, 1.0), y),
                    fontsize=7, va="center")
    ax.set_xlim(0.6, 1.4)
    ax.set_xlabel("simulated / published (dotted: +-10 %; each row in its own metric)")
    ax.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

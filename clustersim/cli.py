"""The ``clustersim`` command: run experiments, list presets, calibrate and validate, plot.

Exit status: 0 on success, 2 for a usage or configuration error (one line naming the file and
key; a traceback only with ``--debug``), 1 for a failure during a run.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from clustersim.errors import ClusterSimError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="clustersim: a discrete-event simulator of ML clusters, accelerators and "
                       "parallel schedules. Run `clustersim run` for the built-in quickstart.")
console = Console()
errors = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors")) -> None:
    _state["debug"] = debug


def _fail(exc: BaseException, code: int) -> None:
    if _state["debug"]:
        traceback.print_exception(exc)
    errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class _progress_bar:
    """A rich progress bar fed by the validate package's (label, done, total) callback."""

    def __init__(self, description: str):
        from rich.progress import Progress

        self.description = description
        self.bar = Progress(console=errors, transient=True)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=None)

        def update(label: str, done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total,
                            description=f"{self.description}: {label}")

        return update

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    return str(value)


def _print_results(table, params: list[str], title: str) -> None:
    """A single run's metrics, or a sweep's compact table (one row per run) at 80 columns."""
    from clustersim.results_table import single_run_table, sweep_table

    rows = table.to_dict("records")
    if not rows:
        return
    if len(rows) == 1:
        console.print(single_run_table(rows[0], title))
        return
    rendered, notes = sweep_table(rows, params, title, width=min(console.width, 100))
    console.print(rendered)
    for note in notes:
        console.print(note, highlight=False, markup=False)


class _sweep_progress:
    """The progress bar of a sweep: done/total, failed, running, ETA (rich, on stderr)."""

    def __init__(self, executor: str):
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} done, {task.fields[failed]} "
                                       "failed, {task.fields[running]} running, ETA "
                                       "{task.fields[eta]}"),
                            console=errors, transient=True)
        self.executor = executor
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def validating(self, done: int, total: int) -> None:
        import time

        if self.task is None:
            self.started = time.monotonic()
            self.task = self.bar.add_task("validating", total=total, failed=0, running=0, eta="-")
        eta = (time.monotonic() - self.started) / done * (total - done)
        self.bar.update(self.task, completed=done, total=total,
                        eta=f"{int(eta // 60)}:{int(eta % 60):02d}")

    def __call__(self, progress) -> None:
        eta = progress.eta_s
        text = "-" if eta is None else f"{int(eta // 60)}:{int(eta % 60):02d}"
        description = f"simulating ({self.executor})"
        if self.task is None:
            self.task = self.bar.add_task(description, total=progress.total, failed=0,
                                          running=0, eta="-")
        self.bar.update(self.task, description=description, completed=progress.done,
                        total=progress.total, failed=progress.failed,
                        running=progress.running, eta=text)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


@app.command()
def run(experiment: Optional[Path] = typer.Argument(
            None, help="experiment YAML; omitted: the built-in quickstart"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="output folder (default runs/<experiment name>)"),
        workers: Optional[int] = typer.Option(None, "--workers", "-w",
                                              help="local worker processes for a sweep "
                                                   "(default: one per core; 1: in this process)"),
        scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                help="run points on a dask.distributed scheduler, "
                                                     "e.g. tcp://10.0.0.1:8786"),
        dask_local: Optional[int] = typer.Option(None, "--dask-local",
                                                 help="start a dask LocalCluster of N workers"),
        resume: bool = typer.Option(False, "--resume",
                                    help="run only the points that have no row in --out yet"),
        replace: bool = typer.Option(False, "--replace",
                                     help="delete earlier results in --out, then run"),
        smoke: bool = typer.Option(False, "--smoke", help="apply the file's smoke: overrides and "
                                                          "run at most 2 points of the sweep"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, only the output path")
        ) -> None:
    """Run an experiment (every point of its sweep) and write results, traces and plots."""
    from clustersim.executors import ExecutorChoice
    from clustersim.experiment import EXAMPLES_DIR, load_plan, run_experiment

    if resume and replace:
        _fail(ConfigError("give --resume or --replace, not both", key="--resume"), 2)
    path = experiment or EXAMPLES_DIR / "quickstart.yaml"
    try:
        plan = load_plan(path, smoke=smoke)
        choice = ExecutorChoice(workers=1 if len(plan) == 1 else workers, scheduler=scheduler,
                                dask_local=dask_local)
        with _sweep_progress(choice.describe()) as bar:
            if len(plan) > 1:
                plan.validate_all(progress=bar.validating)
                bar.task = None if bar.task is None else bar.bar.remove_task(bar.task)
            table = run_experiment(path, out=out, plan=plan, executor=choice, smoke=smoke,
                                   mode="resume" if resume else "replace" if replace else "new",
                                   on_progress=bar if len(plan) > 1 else None,
                                   debug=_state["debug"])
    except ClusterSimError as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)
    except Exception as exc:  # noqa: BLE001 — reported as a run failure
        _fail(exc, 1)
    name = plan.config.name
    folder = out or Path("runs") / name
    if not quiet:
        _print_results(table, plan.sweep.keys, title=f"clustersim: {name}")
    console.print(f"results: {folder / 'results.csv'}", highlight=False)
    other = json.loads((folder / "summary.json").read_text()).get("other_rows", 0) \
        if (folder / "summary.json").exists() else 0
    if other:
        errors.print(f"note: {folder / 'rows'} also holds {other} row(s) of points that are not in "
                     "this experiment any more (edited sweep or another clustersim version); they "
                     "are kept there and left out of results.csv", highlight=False, markup=False)
    failed = table[table["status"] != "ok"] if "status" in table else table.iloc[:0]
    for row in failed.to_dict("records"):
        errors.print(f"run {row['run']} failed: {row.get('error')}", highlight=False, markup=False)
    if len(failed):
        raise typer.Exit(1)


@app.command()
def presets(kind: Optional[str] = typer.Option(None, help="gpu, node or accelerator: list only that kind"),
            urls: bool = typer.Option(False, "--urls", help="show each source's URL")) -> None:
    """List hardware presets with their key figures and sources."""
    from clustersim.hardware.presets import preset_table

    table = preset_table()
    kinds = [kind] if kind in ("gpu", "node") else [] if kind else list(dict.fromkeys(table["kind"]))
    for which in kinds:
        rows = table[table["kind"] == which].dropna(axis=1, how="all")
        rows = rows.loc[:, (rows.astype(str) != "").any()]
        hidden = {"kind", "aliases"} | (set() if urls else {"url", "source_url"})
        columns = [c for c in rows.columns if c not in hidden]
        out = Table(title=f"{which} presets")
        for column in columns:
            out.add_column(column, overflow="fold")
        for row in rows.itertuples(index=False):
            out.add_row(*(_format(getattr(row, c)) for c in columns))
        console.print(out)
    if kind in (None, "accelerator"):
        _print_accelerators()


def _print_accelerators() -> None:
    """Systolic arrays, PIM and RDUs: one row per preset with its memory tiers and source."""
    from clustersim.hardware.accelerator_presets import accelerator_presets

    out = Table(title="accelerator presets")
    for column in ("name", "kind", "peak TFLOPS", "memory tiers", "source"):
        out.add_column(column, overflow="fold")
    for name, preset in accelerator_presets().items():
        device = preset.spec
        peak = getattr(device, "peak_flops_per_s", None)
        rates = {}
        for dtype in ("bf16", "fp16", "int8"):
            try:
                rates[dtype] = peak(dtype)
            except (ValueError, KeyError):  # a dtype this device does not compute in
                continue
        peak_text = ", ".join(f"{d} {r / 1e12:.4g}" for d, r in rates.items()) if rates else "-"
        tiers = ", ".join(f"{t.name} {t.capacity_bytes / 2**30:.4g} GiB @ "
                          f"{t.bandwidth_bytes_per_s / 1e9:.4g} GB/s" for t in device.memory_tiers)
        out.add_row(name, preset.kind, peak_text, tiers,
                    preset.source.title if preset.source else preset.description)
    console.print(out)


def _run_torch_command(what: str, bar: str, name: str, **kwargs):
    """Run ``clustersim.validate.commands.<name>`` with a progress bar; exit 2 on bad input or
    a missing torch, 1 on a failure while timing."""
    missing = f"{what} needs torch: pip install 'clustersim[validate]'"
    try:
        from clustersim.validate import commands

        with _progress_bar(bar) as progress:
            return getattr(commands, name)(progress=progress, **kwargs)
    except ConfigError as exc:
        _fail(exc, 2)
    except ImportError as exc:
        _fail(ConfigError(f"{missing} ({exc})"), 2)
    except Exception as exc:  # noqa: BLE001 — reported as a run failure
        _fail(exc, 1)


@app.command()
def calibrate(out: Path = typer.Option(..., "--out", "-o", help="profile YAML to write"),
              quick: bool = typer.Option(False, "--quick", help="a small grid (under a minute)"),
              device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda if present)"),
              threads: Optional[int] = typer.Option(None, help="torch threads on the CPU "
                                                    "(default: all cores but one)"),
              statistic: Optional[str] = typer.Option(None, help="median or p10 of the repeats "
                                                      "(default: p10 on the CPU, median on a GPU)"),
              seed: int = typer.Option(0, help="seed of the random inputs")) -> None:
    """Time real torch kernels on this machine and fit the device model's efficiency."""
    result = _run_torch_command("calibration", "timing kernels", "calibrate", out=out, quick=quick,
                                device=device, threads=threads, statistic=statistic, seed=seed)
    from clustersim.hardware.calibration import load_profile
    from clustersim.validate.report import describe_profile

    console.print(describe_profile(load_profile(result)))
    console.print(f"profile: {result}")


@app.command()
def validate(profile: Path = typer.Option(..., "--profile", "-p", help="profile from `calibrate`"),
             quick: bool = typer.Option(False, "--quick", help="a small set of held-out shapes"),
             out: Path = typer.Option(Path("runs/validate"), "--out", "-o",
                                      help="folder for the report and parity plot"),
             force: bool = typer.Option(False, "--force",
                                        help="use a profile made on another device")) -> None:
    """Compare predictions with fresh measurements on held-out shapes (before/after calibration)."""
    report = _run_torch_command("validation", "timing held-out shapes", "validate",
                                profile=profile, quick=quick, out_dir=out, force=force)
    console.print(report.to_text() if hasattr(report, "to_text") else str(report))


@app.command()
def plot(results: Path = typer.Argument(..., help="a results.csv or a trace.json"),
         x: Optional[str] = typer.Option(None, help="column for the x axis (results.csv)"),
         y: str = typer.Option("step_time_s", help="column for the y axis (results.csv)"),
         hue: Optional[str] = typer.Option(None, help="one line per value of this column"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write")) -> None:
    """Plot a results table column against another (one line per --hue value)."""
    import pandas as pd

    from clustersim.plots import plot_results

    if not results.exists():
        _fail(ConfigError("file not found", file=str(results)), 2)
    table = pd.read_csv(results)
    for column in [c for c in (x, y, hue) if c]:
        if column not in table.columns:
            _fail(ConfigError(f"no column {column!r}; columns are {list(table.columns)}",
                              file=str(results)), 2)
    target = out or results.with_name(f"{y}.png")
    plot_results(table, x=x, y=y, hue=hue, path=str(target))
    console.print(f"plot: {target}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

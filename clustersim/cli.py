"""The ``clustersim`` command: run experiments, list presets, calibrate and validate, plot.

Exit status: 0 on success, 2 for a usage or configuration error (one line naming the file and
key; a traceback only with ``--debug``), 1 for a failure during a run. ``--debug`` may come
before or after the subcommand. User text (file names, keys, values) is printed escaped: rich
would read ``[bold]`` in a model name as markup and ``:id:`` in a key as an emoji.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clustersim.errors import ClusterSimError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="clustersim: a discrete-event simulator of ML clusters, accelerators and "
                       "parallel schedules. Run `clustersim run` for the built-in quickstart.")
console = Console(emoji=False)
errors = Console(stderr=True, emoji=False)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors")) -> None:
    _state["debug"] = debug


def _one_line(text: str, limit: int = 2000) -> str:
    """User-facing text on one line, escaped for rich, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return escape(text)


def _fail(exc: BaseException, code: int) -> None:
    if _state["debug"]:
        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, ClusterSimError) else f"{type(exc).__name__}: {exc}"
    errors.print(f"[bold red]error:[/] {_one_line(message)}", highlight=False, soft_wrap=True)
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
    return escape(str(value))


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


# Training tasks simulated per second with trace and plots, measured on LLaMA-2-7B TP=8 (249,864
# tasks in 42 s of CPU on a shared 2-core machine): a status line appears above 10 s.
_TASKS_PER_S = 6_000
_SHOW_STATUS_ABOVE_S = 10.0


def _long_run_status(runs):
    """A spinner with elapsed time and the estimated duration, for a long single run."""
    import contextlib

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from clustersim.resource_guard import estimate

    if not runs:
        return contextlib.nullcontext()
    tasks = sum(e.count for e in estimate(runs[0].config.cluster, runs[0].workload)
                if e.what == "tasks")
    seconds = tasks / _TASKS_PER_S
    if seconds < _SHOW_STATUS_ABOVE_S:
        return contextlib.nullcontext()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=errors, transient=True)
    bar.add_task(f"simulating about {tasks:,.0f} tasks (estimated {seconds:,.0f} s); elapsed",
                 total=None)
    return bar


def _check_out_folder(folder: Path) -> None:
    """The output folder is a folder (or can be made in a writable one): exit 2 before any run.
    Nothing is created here: a run refused later (a bad scheduler address) leaves no folder."""
    if folder.exists() and not folder.is_dir():
        _fail(ConfigError("--out names a file; give a folder for the results", file=str(folder)), 2)
    parent = folder.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        _fail(ConfigError(f"cannot write the results: {parent} is not a writable folder",
                          file=str(folder)), 2)


def _warn_about_empty_results(rows: list[dict]) -> None:
    """A run that finished but served nothing is almost always a mistake in the file."""
    for row in rows:
        total, rejected = row.get("requests"), row.get("rejected")
        if isinstance(total, (int, float)) and total > 0 and rejected == total:
            errors.print(f"warning: run {row.get('run')}: all {int(total)} requests were rejected "
                         "(is every prompt + output longer than the context window, "
                         "workload.max_model_len?)", markup=False, highlight=False, soft_wrap=True)


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
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no table, only the output path"),
        allow_large: bool = typer.Option(False, "--allow-large",
                                         help="run even above the resource guard's limits "
                                              "(devices, tasks, flows, requests; see README)")
        ) -> None:
    """Run an experiment (every point of its sweep) and write results, traces and plots."""
    from clustersim.executors import ExecutorChoice
    from clustersim.experiment import EXAMPLES_DIR, load_plan, run_experiment

    if resume and replace:
        _fail(ConfigError("give --resume or --replace, not both", key="--resume"), 2)
    path = experiment or EXAMPLES_DIR / "quickstart.yaml"
    from clustersim.resource_guard import ALLOW_ENV

    if allow_large:  # read by the guard in this process and in sweep worker processes
        os.environ[ALLOW_ENV] = "1"
    try:
        plan = load_plan(path, smoke=smoke)
    except ClusterSimError as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)
    name = plan.config.name
    folder = out or Path("runs") / name
    _check_out_folder(folder)
    try:
        choice = ExecutorChoice(workers=1 if len(plan) == 1 else workers, scheduler=scheduler,
                                dask_local=dask_local)
        single = [plan.run(0)] if len(plan) == 1 else None
        with _sweep_progress(choice.describe()) as bar, _long_run_status(single):
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
    if not quiet:
        _print_results(table, plan.sweep.keys, title=escape(f"clustersim: {name}"))
    console.print(f"results: {folder / 'results.csv'}", markup=False, highlight=False,
                  soft_wrap=True)
    other = json.loads((folder / "summary.json").read_text()).get("other_rows", 0) \
        if (folder / "summary.json").exists() else 0
    if other:
        errors.print(f"note: {folder / 'rows'} also holds {other} row(s) of points that are not in "
                     "this experiment any more (edited sweep or another clustersim version); they "
                     "are kept there and left out of results.csv", highlight=False, markup=False)
    rows = table.to_dict("records")
    _warn_about_empty_results(rows)
    failed = [row for row in rows if row.get("status") != "ok"]
    for row in failed:
        errors.print(f"run {row['run']} failed: {_one_line(row.get('error'))}", highlight=False,
                     markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


PRESET_KINDS = ("gpu", "node", "accelerator", "systolic", "pim", "rdu", "npu_pim")


@app.command()
def presets(kind: Optional[str] = typer.Option(
                None, help="list only one kind: gpu, node, accelerator (all of systolic, pim, rdu, "
                           "npu_pim) or one of those"),
            urls: bool = typer.Option(False, "--urls", help="show each source's URL")) -> None:
    """List hardware presets with their key figures and sources."""
    from clustersim.hardware.presets import preset_table

    if kind is not None and kind not in PRESET_KINDS:
        _fail(ConfigError(f"--kind {kind!r} matches no presets; valid kinds: "
                          f"{', '.join(PRESET_KINDS)}"), 2)
    table = preset_table()
    kinds = [kind] if kind in ("gpu", "node") else [] if kind else ["gpu", "node"]
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
    if kind is None or kind not in ("gpu", "node"):
        _print_accelerators(None if kind in (None, "accelerator") else kind, urls)


def _print_accelerators(kind: str | None, urls: bool) -> None:
    """Systolic arrays, PIM, RDUs and NPU+PIM devices: one row per preset with its peaks,
    memory tiers and source."""
    from clustersim.hardware.accelerator_presets import accelerator_presets

    title = "accelerator presets" if kind is None else f"{kind} presets"
    out = Table(title=title)
    for column in ("name", "kind", "peak TFLOPS", "memory tiers", "source"):
        out.add_column(column, overflow="fold")
    for name, preset in accelerator_presets(kind).items():
        device = preset.spec
        rates = {}
        for dtype in ("bf16", "fp16", "int8", "fp32"):
            try:
                rates[dtype] = device.peak_flops(dtype)
            except (ValueError, KeyError):  # a dtype this device does not compute in
                continue
        peak_text = ", ".join(f"{d} {r / 1e12:.4g}" for d, r in rates.items()) if rates else "-"
        tiers = ", ".join(f"{t.name} {t.capacity_bytes / 2**30:.4g} GiB @ "
                          f"{t.bandwidth_bytes_per_s / 1e9:.4g} GB/s" for t in device.memory_tiers)
        source = preset.source.title if preset.source else preset.description
        if urls and preset.source:
            source += f" <{preset.source.url}>"
        out.add_row(escape(name), preset.kind, peak_text, escape(tiers), escape(source))
    console.print(out)


def _run_torch_command(what: str, bar: str, name: str, **kwargs):
    """Run ``clustersim.validate.commands.<name>`` with a progress bar; exit 2 on bad input or
    a missing torch, 1 on a failure while timing."""
    missing = f"{what} needs torch: pip install 'clustersim[validate]'"  # escaped by _fail
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


def _check_calibrate_options(out: Path, threads: Optional[int], statistic: Optional[str],
                             device: Optional[str]) -> None:
    """Refuse bad options before minutes of timing, each with one line."""
    import os
    import re

    from clustersim.validate.timing import STATISTICS

    if threads is not None and threads < 1:
        _fail(ConfigError(f"--threads must be >= 1, got {threads}"), 2)
    if statistic is not None and statistic not in STATISTICS:
        _fail(ConfigError(f"--statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}"), 2)
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        _fail(ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}"), 2)
    if out.is_dir():
        _fail(ConfigError("--out is a folder; give the profile file to write, e.g. "
                          f"{out / 'mydevice.yaml'}", file=str(out)), 2)
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(ConfigError(f"cannot make the profile's folder: {exc.strerror or exc}",
                          file=str(out)), 2)
    if not os.access(out.absolute().parent, os.W_OK):
        _fail(ConfigError(f"cannot write the profile: {out.absolute().parent} is not writable",
                          file=str(out)), 2)


@app.command()
def calibrate(out: Path = typer.Option(..., "--out", "-o", help="profile YAML to write"),
              quick: bool = typer.Option(False, "--quick", help="a small grid (under a minute)"),
              device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda if present)"),
              threads: Optional[int] = typer.Option(None, help="torch threads on the CPU "
                                                    "(default: all cores but one)"),
              statistic: Optional[str] = typer.Option(None, help="median or p10 of the repeats "
                                                      "(default: p10 on the CPU, median on a GPU)"),
              seed: int = typer.Option(0, help="seed of the random inputs (and of the split)"),
              from_files: Optional[list[Path]] = typer.Option(
                  None, "--from", help="fit to measurements made elsewhere instead of timing "
                  "here: a kernel table (CSV), a Kineto JSON trace, nccl-tests output or an NCCL "
                  "CSV (repeat --from for several files)"),
              gpu: Optional[str] = typer.Option(None, help="with --from: the GPU preset the "
                                                "measurements were taken on, e.g. A100-SXM4-80GB"),
              node: Optional[str] = typer.Option(None, help="with --from: the node preset the "
                                                 "measurements were taken on, e.g. DGX-H100 (its "
                                                 "GPU, and its NVLink rate bounds the NCCL fit's "
                                                 "topology search as NCCL's own search is bounded)")) -> None:
    """Time real torch kernels on this machine (or read --from files) and fit the device model."""
    from clustersim.hardware.calibration import load_profile
    from clustersim.validate.report import describe_profile

    _check_calibrate_options(out, threads, statistic, device)
    if from_files:
        if not gpu and not node:
            _fail(ConfigError("--from needs --gpu or --node: the preset the measurements were "
                              "taken on"), 2)
        try:
            from clustersim.validate.from_file import calibrate_from

            profile = calibrate_from(from_files, gpu, out, seed=seed, node=node)
        except ConfigError as exc:
            _fail(exc, 2)
        except (KeyError, ValueError) as exc:
            _fail(ConfigError(str(exc.args[0] if exc.args else exc)), 2)
        console.print(describe_profile(load_profile(out)), markup=False)
        for kind, held_out in profile.calibration.get("held_out", {}).items():
            console.print(f"held-out {kind}: MAPE {held_out['mape_percent']} % over "
                          f"{held_out['samples']} rows (max {held_out['max_ape_percent']} %)",
                          markup=False)
        console.print(f"profile: {out}", markup=False, highlight=False, soft_wrap=True)
        return
    result = _run_torch_command("calibration", "timing kernels", "calibrate", out=out, quick=quick,
                                device=device, threads=threads, statistic=statistic, seed=seed)
    console.print(describe_profile(load_profile(result)), markup=False)
    console.print(f"profile: {result}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def validate(profile: Optional[Path] = typer.Option(None, "--profile", "-p",
                                                    help="profile from `calibrate`"),
             quick: bool = typer.Option(False, "--quick", help="a small set of held-out shapes"),
             out: Path = typer.Option(Path("runs/validate"), "--out", "-o",
                                      help="folder for the report and parity plot"),
             force: bool = typer.Option(False, "--force",
                                        help="use a profile made on another device"),
             published: Optional[Path] = typer.Option(
                 None, "--published", help="a YAML of published end-to-end results with their "
                 "configurations (experiments/published_results.yaml): simulate each row")) -> None:
    """Compare predictions with fresh measurements on held-out shapes (--profile), or with
    published end-to-end results (--published)."""
    if published is not None:
        from clustersim.validate.published import plot_published, report_text, validate_published

        try:
            with _progress_bar("simulating published rows") as progress:
                results = validate_published(published, progress=progress)
        except ConfigError as exc:
            _fail(exc, 2)
        except Exception as exc:  # noqa: BLE001 — reported as a run failure
            _fail(exc, 1)
        typer.echo(report_text(results))
        console.print(f"plot: {plot_published(results, out / 'published.png')}", markup=False)
        return
    if profile is None:
        _fail(ConfigError("give --profile (a calibration profile) or --published (a table of "
                          "published results)"), 2)
    report = _run_torch_command("validation", "timing held-out shapes", "validate",
                                profile=profile, quick=quick, out_dir=out, force=force)
    console.print(report.to_text() if hasattr(report, "to_text") else str(report), markup=False)


@app.command()
def plot(results: Path = typer.Argument(..., help="a results.csv, or a trace.json for a quick "
                                                  "timeline of its busiest tracks"),
         x: Optional[str] = typer.Option(None, help="column for the x axis (results.csv; "
                                                    "default: the run index)"),
         y: str = typer.Option("step_time_s", help="numeric column for the y axis (results.csv)"),
         hue: Optional[str] = typer.Option(None, help="one line per value of this column"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write")) -> None:
    """Plot a results table column against another (one line per --hue value), or a trace."""
    if results.suffix.lower() == ".json":
        from clustersim.trace_plot import plot_trace

        target = out or results.with_suffix(".png")
        try:
            plot_trace(results, target)
        except ConfigError as exc:
            _fail(exc, 2)
        console.print(f"plot: {target}", markup=False, highlight=False, soft_wrap=True)
        return
    from clustersim.results_file import is_numeric, read_results

    try:
        table = read_results(results)
    except ConfigError as exc:
        _fail(exc, 2)
    for column in [c for c in (x, y, hue) if c]:
        if column not in table.columns:
            _fail(ConfigError(f"no column {column!r}; columns are {list(table.columns)}",
                              file=str(results)), 2)
    if not is_numeric(table[y]):  # x may be text (schedule or policy names): categories
        numeric = [c for c in table.columns if is_numeric(table[c])]
        _fail(ConfigError(f"column {y!r} holds text, not numbers; numeric columns are {numeric}",
                          file=str(results), key=y), 2)
    from clustersim.plots import plot_results

    target = out or results.with_name(f"{y}.png")
    plot_results(table, x=x, y=y, hue=hue, path=str(target))
    console.print(f"plot: {target}", markup=False, highlight=False, soft_wrap=True)


def debug_first(argv: list[str]) -> list[str]:
    """``argv`` with a ``--debug`` given after the subcommand moved before it, where click
    expects the options of the group (``clustersim run x.yaml --debug`` works as users type it)."""
    if "--debug" not in argv[1:] or "--" in argv:
        return argv
    return [argv[0], "--debug", *(a for a in argv[1:] if a != "--debug")]


def main() -> None:
    sys.argv = debug_first(sys.argv)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

"""A sweep's folder survives kill -9: rows written then renamed, the row before the trace,
partial files never read and cleaned, --resume runs exactly the missing points, and a re-run
into a used folder refuses, resumes or replaces, never silently drops rows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.experiment import run_experiment
from clustersim.results_store import read_rows

DATA = Path(__file__).parent / "data"


def sweep_file(tmp_path, values=(1, 2), trace=False, name="sweep.yaml"):
    raw = yaml.safe_load((DATA / "small_training.yaml").read_text())
    raw["sweep"] = {"workload.seq_len": list(values)}
    raw["output"] = {"trace": trace, "plots": False, "parquet": False}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_rerun_into_a_used_folder_refuses_resumes_or_replaces(tmp_path):
    path, out = sweep_file(tmp_path, values=(64, 96)), tmp_path / "out"
    first = run_experiment(path, out=out)
    with pytest.raises(ConfigError, match="already holds 2 result rows; pass --resume"):
        run_experiment(path, out=out)
    # Growing the sweep and resuming runs only the new point; the old rows are kept as they are.
    before = {p.name: p.read_bytes() for p in (out / "rows").iterdir()}
    grown = sweep_file(tmp_path, values=(64, 96, 128), name="grown.yaml")
    seen = []
    table = run_experiment(grown, out=out, mode="resume", on_run=lambda run, row: seen.append(run.index))
    assert seen == [2] and len(table) == 3
    assert all((out / "rows" / name).read_bytes() == data for name, data in before.items())
    assert table.iloc[:2].drop(columns="config").equals(first.drop(columns="config"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == 2 and summary["done"] == 1 and summary["finished"]
    replaced = run_experiment(path, out=out, mode="replace")
    assert len(replaced) == 2 and len(list((out / "rows").glob("*.json"))) == 2


def test_partial_files_are_never_read_and_are_cleaned(tmp_path):
    path, out = sweep_file(tmp_path, values=(64,)), tmp_path / "out"
    run_experiment(path, out=out)
    (out / "rows" / "deadbeef.json.123.tmp").write_text('{"id": "deadbeef", "run": 9')
    (out / "trace-0.json.tmp").write_text("x" * 1000)
    (out / "pipeline-0.partial.77.png").write_bytes(b"")
    assert [r["run"] for r in read_rows(out)] == [0]
    run_experiment(path, out=out, mode="resume")
    assert sorted(p.name for p in out.rglob("*") if "tmp" in p.name or "partial" in p.name) == []


def test_kill_9_mid_sweep_then_resume_loses_nothing_and_reruns_nothing(tmp_path):
    path, out = sweep_file(tmp_path, values=[16, 32, 48, 64, 96, 128], trace=True), tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-m", "clustersim.cli", "run", str(path), "--out", str(out),
               "--workers", "1", "--quiet"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "rows").glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["id"]: r for r in read_rows(out)}
    assert 2 <= len(before) < 6
    for row in before.values():  # every row kept is whole, and the table on disk parses
        assert row["status"] == "ok" and row["step_time_s"] > 0
    if (out / "results.csv").exists():  # rebuilt from rows/ now and then: never ahead of them
        assert len(pd.read_csv(out / "results.csv")) <= len(before)
    result = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    after = {r["id"]: r for r in read_rows(out)}
    summary = json.loads((out / "summary.json").read_text())
    assert len(after) == 6 and summary["done"] == 6 - len(before)
    assert all(after[i] == row for i, row in before.items())
    assert len(pd.read_csv(out / "results.csv")) == 6
    # A point killed between its row and its trace gets its trace back, not a second row.
    assert all((out / f"trace-{i}.json").exists() for i in range(6))
    assert summary["files_rewritten"] <= 1
    assert not list(out.rglob("*.tmp"))


def test_two_runs_never_write_one_folder_at_once(tmp_path):
    from clustersim.results_store import ResultsStore

    first = ResultsStore(tmp_path)
    first.open()
    with pytest.raises(ConfigError, match=f"being written by another clustersim run \\(pid {os.getpid()}"):
        ResultsStore(tmp_path, mode="resume").open()
    first.close()
    ResultsStore(tmp_path, mode="resume").open()  # free again once the first is done


def test_sweep_table_fits_the_width_and_judges_variation_on_finished_runs():
    from rich.console import Console

    from clustersim.results_table import sweep_table

    rows = [{"run": i, "workload.seq_len": 64 * (i + 1), "model": "tiny", "step_time_s": 0.1 * (i + 1),
             "tokens_per_s": 1000.0 / (i + 1), "long_metric_name_in_bytes": float(i), "status": "ok"}
            for i in range(40)]
    rows.append({"run": 40, "workload.seq_len": 9999, "status": "failed", "error": "OutOfMemory"})
    table, notes = sweep_table(rows, ["workload.seq_len"], "t", width=60)
    console = Console(width=60, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 60
    assert "status" in lines[2] and "model" not in lines[2]  # constant among the finished runs
    assert any("41 runs, 11 not shown" in n for n in notes)
    assert any("model=tiny" in n for n in notes)

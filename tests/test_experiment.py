"""YAML experiments end to end: validation errors, sweeps, outputs, determinism, the CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.experiment import load_experiment, run_experiment
from cli_contract import invoke

DATA = Path(__file__).parent / "data"
BASE = yaml.safe_load((DATA / "small_training.yaml").read_text())


def write(tmp_path, data=None, text=None, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


def edited(**changes):
    data = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return data


def config_error(tmp_path, data=None, text=None) -> ConfigError:
    path = write(tmp_path, data, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(path) in str(info.value)
    return info.value


def test_unknown_key_names_the_key_path_and_the_nearest_valid_key(tmp_path):
    data = edited()
    data["workload"]["micro_batch_sise"] = 2
    error = config_error(tmp_path, data)
    assert error.key == "workload.micro_batch_sise"
    assert "did you mean 'micro_batch_size'" in str(error)


def test_unknown_nested_key(tmp_path):
    data = edited()
    data["workload"]["parallel"]["tensor_parallel"] = 2
    error = config_error(tmp_path, data)
    assert error.key == "workload.parallel.tensor_parallel"
    assert "tp" in str(error)


def test_negative_size_is_refused_with_what_was_given(tmp_path):
    error = config_error(tmp_path, edited(workload__seq_len=-128))
    assert error.key == "workload.seq_len" and "-128" in str(error)


def test_negative_quantity_with_units_is_refused(tmp_path):
    error = config_error(tmp_path, edited(cluster__nic_bandwidth="-400 Gb/s"))
    assert error.key == "cluster.nic_bandwidth" and "must be > 0" in str(error)


def test_tp_not_dividing_heads_names_the_model_figure(tmp_path):
    data = edited(workload__parallel={"tp": 3, "pp": 1, "dp": 1}, cluster__gpus_per_node=3)
    error = config_error(tmp_path, data)
    assert error.key == "workload.parallel.tp" and "num_heads" in str(error)


def test_device_count_mismatch_is_refused_before_the_run(tmp_path):
    error = config_error(tmp_path, edited(cluster__gpus_per_node=8))
    assert error.key == "workload.parallel"
    assert "2 GPUs, but the cluster has 8" in str(error)


def test_duplicated_yaml_key_is_an_error_with_its_line(tmp_path):
    text = (DATA / "small_training.yaml").read_text().replace("  seq_len: 128\n",
                                                             "  seq_len: 128\n  seq_len: 64\n")
    error = config_error(tmp_path, text=text)
    assert "duplicate key 'seq_len'" in str(error) and "line" in str(error)


def test_unknown_workload_kind_lists_the_valid_kinds(tmp_path):
    error = config_error(tmp_path, edited(workload__kind="trainng"))
    assert error.key == "workload.kind" and "training" in str(error)


def test_sweep_expands_to_a_grid_and_validates_every_point(tmp_path):
    data = edited()
    data["sweep"] = {"workload.micro_batch_size": [1, 2], "workload.seq_len": [64, 128]}
    runs = load_experiment(write(tmp_path, data))
    assert [(r.workload.micro_batch_size, r.workload.seq_len) for r in runs] == \
        [(1, 64), (1, 128), (2, 64), (2, 128)]
    data["sweep"] = {"workload.seq_len": [64, -1]}
    error = config_error(tmp_path, data)
    assert error.key == "workload.seq_len"


def test_run_writes_results_trace_and_resolved_config(tmp_path):
    table = run_experiment(DATA / "small_training.yaml", out=tmp_path / "out")
    assert table["status"].tolist() == ["ok"]
    out = tmp_path / "out"
    assert pd.read_csv(out / "results.csv")["step_time_s"].iloc[0] > 0
    assert pd.read_parquet(out / "results.parquet")["tokens_per_s"].iloc[0] > 0
    assert "runs" in yaml.safe_load((out / "config.resolved.yaml").read_text())
    trace = json.loads((out / "trace.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"gpu0", "gpu1"} <= names
    assert any(e["ph"] == "C" and e["name"].startswith("memory") for e in trace)
    # Spans on one track never partly overlap (Perfetto needs strict nesting).
    by_track = {}
    for e in trace:
        if e["ph"] == "X":
            by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(spans, spans[1:]))


def test_a_failing_run_keeps_the_others(tmp_path):
    data = edited()
    # A tiny HBM makes the larger micro-batch run out of memory during the run.
    data["cluster"]["gpu_overrides"] = {"hbm_capacity_bytes": "1.5 MiB"}
    data["sweep"] = {"workload.micro_batch_size": [1, 4]}
    data["workload"]["global_batch_size"] = 4
    table = run_experiment(write(tmp_path, data), out=tmp_path / "out")
    assert table["status"].tolist() == ["ok", "failed"]
    assert "OutOfMemory" in table["error"].iloc[1] and "gpu0 hbm" in table["error"].iloc[1]
    on_disk = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(on_disk) == 2 and on_disk["step_time_s"].iloc[0] > 0


SCRIPT = """
import hashlib, sys
from clustersim.experiment import run_experiment
run_experiment(sys.argv[1], out=sys.argv[2])
print(hashlib.sha256(open(sys.argv[2] + '/trace.json', 'rb').read()).hexdigest())
print(open(sys.argv[2] + '/results.csv').read())
"""


def test_same_seed_same_trace_across_processes_and_hash_seeds(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(DATA / "small_training.yaml"),
                               str(tmp_path / hash_seed)],
                              env={**os.environ, "PYTHONHASHSEED": hash_seed},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for hash_seed in ("1", "12345")]  # side by side: two interpreter start-ups at once
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        outputs.append(stdout)
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) >= 3


# In-process (typer's CliRunner, as the bad-input tests do): no interpreter start-up per case.
def test_cli_config_error_exits_2_with_one_line(tmp_path):
    data = edited(workload__seq_len=-1)
    result = invoke("run", str(write(tmp_path, data)), "--out", str(tmp_path / "o"))
    assert result.code == 2 and result.exception is None
    lines = result.error_lines
    assert len(lines) == 1 and "workload.seq_len" in lines[0] and "Traceback" not in result.stderr


def test_cli_run_failure_exits_1(tmp_path):
    data = edited()
    data["cluster"]["gpu_overrides"] = {"hbm_capacity_bytes": "1 MiB"}
    result = invoke("run", str(write(tmp_path, data)), "--out", str(tmp_path / "o"))
    assert result.code == 1 and "OutOfMemory" in result.stderr


def test_cli_run_succeeds_and_prints_metrics(tmp_path):
    result = invoke("run", str(DATA / "small_training.yaml"), "--out", str(tmp_path / "o"))
    assert result.code == 0, result.stderr
    assert "step_time_s" in result.stdout and (tmp_path / "o" / "results.csv").exists()


def test_cli_sweep_prints_one_row_per_run_within_80_columns_and_refuses_a_used_folder(tmp_path):
    data = edited()
    data["sweep"] = {"workload.micro_batch_size": [1, 2], "workload.seq_len": [64, 96, 128]}
    data["output"] = {"trace": False, "plots": False, "parquet": False}
    path, out = write(tmp_path, data), str(tmp_path / "o")
    env = {**os.environ, "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-m", "clustersim.cli", "run", str(path), "--out", out,
                             "--workers", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The table fits 80 columns; the results path is printed whole so that it can be copied.
    assert max(len(line) for line in lines if not line.startswith("results: ")) <= 80
    rows = [line.split() for line in lines if line.strip()[:1].isdigit() and "metric" not in line]
    assert [(r[0], r[1], r[2]) for r in rows] == [(str(i), str(m), str(s)) for i, (m, s) in
                                                  enumerate((m, s) for m in (1, 2)
                                                            for s in (64, 96, 128))]
    again = invoke("run", str(path), "--out", out)
    assert again.code == 2 and "--resume" in again.stderr and "6 result rows" in again.stderr
    resumed = invoke("run", str(path), "--out", out, "--resume", "-q", "--workers", "1")
    assert resumed.code == 0, resumed.stderr


def test_cli_unreachable_scheduler_exits_2_naming_the_address(tmp_path):
    data = edited()
    data["sweep"] = {"workload.seq_len": [64, 128]}
    result = invoke("run", str(write(tmp_path, data)), "--out", str(tmp_path / "o"),
                    "--scheduler", "tcp://127.0.0.1:9")
    lines = result.error_lines
    assert result.code == 2 and len(lines) == 1 and "tcp://127.0.0.1:9" in lines[0]
    assert not (tmp_path / "o").exists()

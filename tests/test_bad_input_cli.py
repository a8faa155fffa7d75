"""Bad files and options around `clustersim run`: folders, binary and non-UTF-8 request traces,
paths relative to the experiment's folder, `plot`, `calibrate`, `presets`, `--debug` placement,
and a calibration profile from another CPU."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from cli_contract import check_contract, invoke
from clustersim import cli
from clustersim.hardware.calibration import ProfileDeviceMismatch, load_profile

PROFILE = pathlib.Path(__file__).parent.parent / "profiles" / "amd-epyc-cpu.yaml"


def serving(trace: str) -> dict:
    return {"name": "trace-run", "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 1},
            "workload": {"kind": "serving", "model": "tiny", "parallel": {"tp": 1},
                         "requests": {"trace": trace}},
            "output": {"trace": False, "plots": False, "parquet": False}}


def write(folder: pathlib.Path, data: dict, name="exp.yaml") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def refused(outcome, *texts):
    check_contract(outcome, "case")
    assert outcome.code == 2, outcome.stdout + outcome.stderr
    for text in texts:
        assert text in outcome.error_lines[0], outcome.error_lines


def test_an_experiment_path_that_is_a_folder(tmp_path):
    refused(invoke("run", str(tmp_path)), str(tmp_path), "is a folder")


@pytest.mark.parametrize("content, text", [
    (None, "is a folder"),
    (b"arrival_time,prompt_tokens,output_tokens\n0,4,\x00\x01\n", "binary"),
    ("arrival_time,prompt_tokens,output_tokens\n0,4,2 # caf\u00e9\n".encode("latin-1"), "UTF-8")])
def test_a_bad_request_trace_is_one_line_naming_the_trace(tmp_path, content, text):
    trace = tmp_path / "trace.csv"
    trace.mkdir() if content is None else trace.write_bytes(content)
    experiment = write(tmp_path, serving("trace.csv"))
    refused(invoke("run", str(experiment), "--out", str(tmp_path / "out")), str(trace), text)


def test_a_request_trace_is_read_relative_to_the_experiment_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    write(folder, serving("traces/chat.csv"))
    (folder / "traces").mkdir()
    (folder / "traces" / "chat.csv").write_text(
        "arrival_time,prompt_tokens,output_tokens\n0,8,2\n0.01,8,3\n0.02,16,2\n")
    monkeypatch.chdir(tmp_path)  # not the experiment's folder
    outcome = invoke("run", "exp/exp.yaml", "--out", str(tmp_path / "out"))
    check_contract(outcome, "relative trace")
    assert outcome.code == 0, outcome.stdout + outcome.stderr
    import pandas as pd

    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert row["requests"] == 3 and row["finished"] == 3


def test_debug_is_accepted_after_the_subcommand():
    assert cli.debug_first(["clustersim", "run", "x.yaml", "--debug"]) == \
        ["clustersim", "--debug", "run", "x.yaml"]
    assert cli.debug_first(["clustersim", "--debug", "run"]) == ["clustersim", "--debug", "run"]


def test_presets_with_an_unknown_kind():
    refused(invoke("presets", "--kind", "bogus"), "bogus", "gpu, node, accelerator")


@pytest.fixture
def results_csv(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("run,model,step_time_s\n0,llama,1.5\n1,llama,2.5\n")
    return path


def test_plot_refuses_a_text_column_empty_and_folder_inputs(results_csv, tmp_path):
    refused(invoke("plot", str(results_csv), "--y", "model"), "'model' holds text",
            "step_time_s")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    refused(invoke("plot", str(empty)), "empty")
    refused(invoke("plot", str(tmp_path)), "is a folder")
    outcome = invoke("plot", str(results_csv), "--out", str(tmp_path / "p.png"))
    assert outcome.code == 0 and (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_plot_draws_a_chrome_trace_and_refuses_other_json(tmp_path):
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "gpu0"}},
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "compute"}}]
    events += [{"ph": "X", "pid": 1, "tid": 1, "name": f"op{i}", "ts": 10 * i, "dur": 5}
               for i in range(100)]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    outcome = invoke("plot", str(trace))
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "trace.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "bad.json").write_text("{not json")
    refused(invoke("plot", str(tmp_path / "bad.json")), "not JSON")


@pytest.mark.parametrize("args, text", [
    (["--threads", "0"], "--threads must be >= 1"),
    (["--statistic", "mean"], "--statistic must be one of median, p10, min"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N")])
def test_calibrate_refuses_bad_options_before_timing(tmp_path, args, text):
    refused(invoke("calibrate", "--out", str(tmp_path / "p.yaml"), *args), text)


def test_calibrate_refuses_a_folder_as_out_before_timing(tmp_path):
    refused(invoke("calibrate", "--out", str(tmp_path)), "--out is a folder")


def test_a_cpu_profile_from_another_machine_with_the_same_name_is_refused(tmp_path):
    here = load_profile(PROFILE)
    from clustersim.hardware.cpu_identity import _local_cpu_identity

    identity = _local_cpu_identity()
    text = PROFILE.read_text()
    text = text.replace(f"model_name: {here.environment['cpu']['model_name']}",
                        f"model_name: {identity['model_name']}")
    text = text.replace(f"available_cores: {here.environment['cpu']['available_cores']}",
                        f"available_cores: {identity['available_cores'] + 14}")
    other = tmp_path / "other.yaml"
    other.write_text(text)
    with pytest.raises(ProfileDeviceMismatch, match="logical cores"):
        load_profile(other, device_name=here.device_name)
    assert load_profile(other, device_name=here.device_name, force=True).device_name == \
        here.device_name


def test_markup_in_a_file_name_is_printed_as_is(tmp_path):
    path = tmp_path / "err[red]name.yaml"
    path.write_text("name: x\nbogus_key: 1\nworkload: {kind: training}\n")
    refused(invoke("run", str(path)), "err[red]name.yaml", "bogus_key")


def test_the_missing_torch_hint_keeps_its_brackets(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "clustersim.validate", None)  # as if torch were missing
    outcome = invoke("validate", "--profile", str(PROFILE), "--out", str(tmp_path))
    refused(outcome, "pip install 'clustersim[validate]'")


def test_an_out_folder_that_is_a_file_is_refused_before_the_run(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    experiment = pathlib.Path(__file__).parent / "data" / "small_training.yaml"
    refused(invoke("run", str(experiment), "--out", str(taken)), "names a file")


def test_a_device_as_a_file_is_refused_instead_of_read_for_ever(tmp_path):
    refused(invoke("run", "/dev/zero"), "/dev/zero", "is a device")
    experiment = write(tmp_path, serving("/dev/zero"))
    refused(invoke("run", str(experiment), "--out", str(tmp_path / "out")), "is a device")

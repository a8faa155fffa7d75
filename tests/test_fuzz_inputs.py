"""Property-based fuzzing of the file readers: any bytes given as an experiment, a request trace
or a calibration profile give either a result or a ConfigError (one line), never another
exception. Mutated profiles start from the committed one."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustersim.config_errors import load_yaml
from clustersim.errors import ConfigError
from clustersim.hardware.calibration import load_profile
from clustersim.units import parse_quantity
from clustersim.workloads.serving.requests import read_trace

PROFILE = Path(__file__).parent.parent / "profiles" / "amd-epyc-cpu.yaml"
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

CSV_CELLS = st.sampled_from(["0", "0.5", "1", "-1", "nan", "inf", "1e400", "", " ", "x", "10",
                             "99999999999999999999", "1.5", "\x00", "é", '"', "a,b"])
CSV_ROWS = st.lists(st.lists(CSV_CELLS, min_size=0, max_size=6), max_size=6)
HEADERS = st.sampled_from(["arrival_time,prompt_tokens,output_tokens",
                           "arrival_time,prompt_tokens,output_tokens,prefix_id,prefix_tokens",
                           "prompt_tokens,arrival_time", ""])


def _one_line(error: ConfigError) -> None:
    assert "\n" not in str(error), str(error)


@FAST
@given(data=st.binary(max_size=300))
def test_any_bytes_as_an_experiment_load_or_refuse(tmp_path, data):
    path = tmp_path / "exp.yaml"
    path.write_bytes(data)
    try:
        load_yaml(path)
    except ConfigError as error:
        _one_line(error)


@FAST
@given(header=HEADERS, rows=CSV_ROWS, raw=st.binary(max_size=40))
def test_any_request_trace_reads_or_is_refused(tmp_path, header, rows, raw):
    path = tmp_path / "trace.csv"
    text = "\n".join([header] + [",".join(row) for row in rows]).encode("utf-8", "replace")
    path.write_bytes(text + raw)
    try:
        requests = read_trace(path)
    except ConfigError as error:
        _one_line(error)
        return
    assert all(math.isfinite(t) and t >= 0 for t in requests.arrival_s) if hasattr(
        requests, "arrival_s") else True


def _leaves(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, prefix + (index,))
    else:
        yield prefix


BASE_PROFILE = yaml.safe_load(PROFILE.read_text())
PROFILE_LEAVES = list(_leaves(BASE_PROFILE))


@settings(max_examples=12, deadline=None, derandomize=True,  # a profile takes ~0.4 s to read
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PROFILE_LEAVES),
       value=st.sampled_from([math.nan, math.inf, -1.0, 0, "", None, [], {}, "x", 1e308, True]))
def test_a_mutated_profile_loads_or_is_refused(tmp_path, path, value):
    import copy

    data = copy.deepcopy(BASE_PROFILE)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    file = tmp_path / "profile.yaml"
    file.write_text(yaml.safe_dump(data))
    try:
        profile = load_profile(file)
        profile.build_device()
    except ConfigError as error:
        _one_line(error)
    except ValueError as error:  # a device model refusing a parameter: one line too
        assert "\n" not in str(error)


@FAST
@given(text=st.text(max_size=30))
def test_parse_quantity_returns_a_finite_non_negative_number_or_refuses(text):
    try:
        value = parse_quantity(text, "bytes")
    except ValueError:
        return
    assert math.isfinite(value) and value >= 0


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["run,step_time_s", "run,model,step_time_s", "step_time_s", "",
                               "run,run,step_time_s"]),
       rows=CSV_ROWS, suffix=st.sampled_from([".csv", ".json"]))
def test_plot_of_any_table_exits_0_or_2_without_a_traceback(tmp_path, header, rows, suffix):
    from cli_contract import check_contract, invoke

    path = tmp_path / f"results{suffix}"
    path.write_text("\n".join([header] + [",".join(row) for row in rows]), encoding="utf-8")
    outcome = invoke("plot", str(path), "--out", str(tmp_path / "p.png"))
    check_contract(outcome, f"{header!r} {rows!r}")

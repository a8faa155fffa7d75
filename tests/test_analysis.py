"""clustersim.analysis reads a saved run folder back (no re-simulation) and its measures obey
conservation laws: the trace read from JSON equals the simulated one, compute plus exposed
communication is the busy time, the critical path spans the makespan without gaps it cannot
explain, link utilisation integrates to the logged rates, a run compared with itself is zero."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clustersim.analysis import (busy_time_s, compare_spans, compare_totals, critical_path,
                                 link_utilisation_over_time, load_run, overlap, pareto_front,
                                 utilisation)
from clustersim.experiment import load_experiment, run_experiment, run_one

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    raw = yaml.safe_load((DATA / "small_training.yaml").read_text())
    raw["sweep"] = {"workload.seq_len": [64, 128]}
    folder = tmp_path_factory.mktemp("run")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_experiment(path, out=folder / "out")
    simulated = run_one(load_experiment(path)[1], record_trace=True).trace
    return load_run(folder / "out"), simulated


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def test_the_saved_trace_reads_back_as_the_simulated_spans_and_memory(saved):
    run, simulated = saved
    trace = run.trace(1)
    assert len(trace.spans) == len(simulated.spans)
    assert close(trace.makespan_s, simulated.makespan_s)
    mine = trace.spans.sort_values("task_id")
    theirs = simulated.spans.sort_values("task_id")
    assert all(close(a, b) for a, b in zip(mine["end_s"], theirs["end_s"]))
    assert list(mine["name"]) == list(theirs["name"])
    peaks = trace.memory.groupby(["device", "tier"])["used_bytes"].max()
    for key, peak in simulated.peak_memory_bytes().items():
        assert close(peaks.get(key, 0.0), peak)
    assert peaks.max() > 0
    assert run.config(1)["workload"]["seq_len"] == 128 and run.params == ["workload.seq_len"]
    assert list(run.results["workload.seq_len"]) == [64, 128]


def test_busy_time_matches_the_engine_and_overlap_conserves_it(saved):
    run, simulated = saved
    spans = run.trace(1).spans
    for device, busy in simulated.busy_time_s().items():
        assert close(busy_time_s(spans)[device], busy)
    table = overlap(spans)
    for device, row in table.iterrows():
        assert close(row.compute_s + row.exposed_comm_s, busy_time_s(spans)[device])
        assert row.overlapped_s <= row.comm_s + 1e-15
    per_stream = utilisation(spans, by=("device", "stream"))
    assert (per_stream["utilisation"] <= 1 + 1e-9).all()


def test_the_critical_path_ends_at_the_makespan_and_accounts_for_all_of_it(saved):
    run, _ = saved
    trace = run.trace(1)
    path = critical_path(trace.spans)
    assert close(path["end_s"].iloc[-1], trace.makespan_s)
    assert close(path["duration_s"].sum() + path["wait_s"].sum(), trace.makespan_s)
    assert (path["start_s"].to_numpy()[1:] >= path["end_s"].to_numpy()[:-1] - 1e-12).all()
    # TP=2 with blocking all-reduces and no overlap: every TP collective sits on the path.
    assert set(path["category"]) >= {"compute", "comm"}
    # Without dependencies the path follows tracks only and still ends at the makespan.
    bare = critical_path(trace.spans.drop(columns=["deps", "task_id"]))
    assert close(bare["end_s"].iloc[-1], trace.makespan_s)


def test_link_utilisation_bins_integrate_to_the_logged_step_function(saved):
    run, _ = saved
    links = run.trace(1).links
    end = float(links["time_s"].max())
    binned = link_utilisation_over_time(links, bins=7, end_s=end)
    width = end / 7
    for link, group in links.groupby("link"):
        group = group.sort_values("time_s")
        exact = float(np.sum(group["utilisation"].to_numpy()[:-1] * np.diff(group["time_s"])))
        assert close(binned[link].sum() * width, exact)


def test_comparing_runs_span_by_span(saved):
    run, _ = saved
    a, b = run.trace(0), run.trace(1)
    same = compare_spans(a, a)
    assert (same["delta_s"] == 0).all() and len(same) == len(a.spans)
    diff = compare_totals(a, b)
    total = (b.spans["end_s"] - b.spans["start_s"]).sum() - (a.spans["end_s"] - a.spans["start_s"]).sum()
    assert close(diff["delta_s"].sum(), total)
    assert diff.loc[("attn_core", "compute"), "delta_s"] > 0  # longer sequences, longer attention


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    table = pd.DataFrame({"latency": [1, 2, 3, 2, 4], "throughput": [1, 3, 4, 2, 4]})
    front = pareto_front(table, minimize=["latency"], maximize=["throughput"])
    assert list(front.index) == [0, 1, 2]

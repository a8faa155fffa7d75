"""The resource guard: its task estimate matches what the engine builds, and runs above the
documented limits are refused with the estimate and the key, unless --allow-large."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_contract import check_contract, invoke
from clustersim.errors import ConfigError
from clustersim.experiment import load_experiment, run_one
from clustersim.resource_guard import LIMITS, check_resources, estimate

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("granularity", ["op", "layer"])
def test_training_task_estimate_is_within_5_percent_of_the_engine(tmp_path, granularity):
    text = (DATA / "small_training.yaml").read_text().replace(
        "global_batch_size: 4", f"global_batch_size: 8\n  granularity: {granularity}")
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    run = load_experiment(path)[0]
    tasks = next(e.count for e in estimate(run.config.cluster, run.workload) if e.what == "tasks")
    measured = run_one(run, record_trace=False).metrics["tasks"]
    assert abs(tasks - measured) / measured < 0.05, (tasks, measured)


def test_estimate_grows_linearly_with_micro_batches():
    run = load_experiment(DATA / "small_training.yaml")[0]
    bigger = run.workload.model_copy(update={"global_batch_size": 40})
    small = next(e.count for e in estimate(run.config.cluster, run.workload) if e.what == "tasks")
    large = next(e.count for e in estimate(run.config.cluster, bigger) if e.what == "tasks")
    # tasks = ranks x (micro-batches x per-micro-batch + 1): affine in the micro-batch count
    m_small, m_large = run.workload.num_microbatches, bigger.num_microbatches
    ranks = run.workload.parallel.tp
    assert (large - ranks) / (small - ranks) == pytest.approx(m_large / m_small, rel=1e-9)


def test_a_run_over_the_limit_names_the_estimate_key_and_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("CLUSTERSIM_ALLOW_LARGE", raising=False)
    run = load_experiment(DATA / "small_training.yaml")[0]
    huge = run.workload.model_copy(update={"global_batch_size": 20_000_000})
    with pytest.raises(ConfigError) as error:
        check_resources(run.config.cluster, huge, file="x.yaml")
    message = str(error.value)
    assert error.value.key == "workload.global_batch_size"
    assert f"{LIMITS['tasks']:,}" in message and "--allow-large" in message and "GiB" in message


def test_allow_large_lifts_the_count_limit_but_not_physical_memory(monkeypatch):
    run = load_experiment(DATA / "small_training.yaml")[0]
    over = run.workload.model_copy(update={"global_batch_size": 1_000_000})  # ~8M tasks, ~24 GB
    monkeypatch.setattr("clustersim.resource_guard.physical_memory_bytes", lambda: 1e12)
    with pytest.raises(ConfigError):
        check_resources(run.config.cluster, over, file=None, allow_large=False)
    check_resources(run.config.cluster, over, file=None, allow_large=True)
    monkeypatch.setattr("clustersim.resource_guard.physical_memory_bytes", lambda: 2**30)
    with pytest.raises(ConfigError, match="this machine has"):
        check_resources(run.config.cluster, over, file=None, allow_large=True)


def test_cli_refuses_a_billion_nodes_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CLUSTERSIM_ALLOW_LARGE", raising=False)
    outcome = invoke("run", str(DATA / "bad_inputs" / "huge_nodes_collective.yaml"),
                     "--out", str(tmp_path))
    check_contract(outcome, "huge")
    assert outcome.code == 2 and "cluster.nodes" in outcome.error_lines[0]
    assert "8,000,000 devices" in outcome.error_lines[0]

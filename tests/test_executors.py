"""The same sweep gives the same rows and traces whichever executor runs it (a real Dask
LocalCluster and a real process pool, not mocks), and a bad scheduler address is refused
before any point runs."""

import hashlib
import json
import socket
from pathlib import Path

import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.executors import ExecutorChoice
from clustersim.experiment import run_experiment

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    raw = yaml.safe_load((DATA / "small_training.yaml").read_text())
    raw["sweep"] = {"workload.micro_batch_size": [1, 2], "zip": {"workload.seq_len": [64, 128]}}
    path = tmp_path_factory.mktemp("exp") / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def serial(sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return run_experiment(sweep_file, out=out, mode="replace"), out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("choice", [ExecutorChoice(dask_local=2, dask_processes=False),
                                    ExecutorChoice(workers=2)],
                         ids=["dask-local-cluster", "process-pool"])
def test_every_executor_gives_the_serial_rows_bit_for_bit(sweep_file, serial, tmp_path, choice):
    table, serial_out = serial
    other = run_experiment(sweep_file, out=tmp_path, executor=choice)
    assert other.equals(table) and (table["status"] == "ok").all() and len(table) == 4
    for run in range(4):
        assert digest(tmp_path / f"trace-{run}.json") == digest(serial_out / f"trace-{run}.json")


def test_each_row_carries_its_resolved_config_and_the_version(serial):
    table, _ = serial
    config = json.loads(table["config"].iloc[3])
    assert config["workload"]["micro_batch_size"] == 2 and config["workload"]["seq_len"] == 128
    assert (table["version"] == "0.1.0").all() and table["id"].is_unique


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", [f"tcp://127.0.0.1:{free_port()}", "tcp://127.0.0.1",
                                     "http://host:8786"])
def test_an_unreachable_or_malformed_scheduler_is_refused_before_any_point(sweep_file, tmp_path,
                                                                           address):
    with pytest.raises(ConfigError) as info:
        run_experiment(sweep_file, out=tmp_path, executor=ExecutorChoice(scheduler=address))
    assert address in str(info.value) and info.value.key == "--scheduler"
    assert not list((tmp_path / "rows").glob("*.json"))

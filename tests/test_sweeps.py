"""Sweep forms (grid, zip, random, Latin hypercube), their errors, and fast point validation."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.experiment_config import Plan, load_plan
from clustersim.sweeps import expand_sweep

DATA = Path(__file__).parent / "data"
BASE = yaml.safe_load((DATA / "small_training.yaml").read_text())


def with_sweep(sweep, **top):
    return {**json.loads(json.dumps(BASE)), "sweep": sweep, **top}


def test_grid_and_zip_combine_as_a_product():
    sweep = expand_sweep({"a.x": [1, 2], "zip": {"a.y": [10, 20, 30], "a.z": ["p", "q", "r"]}})
    assert len(sweep.points) == 6
    assert sweep.points[:3] == [{"a.x": 1, "a.y": 10, "a.z": "p"}, {"a.x": 1, "a.y": 20, "a.z": "q"},
                                {"a.x": 1, "a.y": 30, "a.z": "r"}]
    assert sweep.forms == ["grid", "zip"]


def test_latin_hypercube_puts_one_sample_in_each_stratum():
    spec = {"samples": 16, "seed": 7, "params": {"a.x": {"low": 0, "high": 1},
                                                 "a.y": {"low": 1, "high": 1000, "log": True}}}
    sweep = expand_sweep({"latin_hypercube": spec})
    xs = np.array([p["a.x"] for p in sweep.points])
    ys = np.log10([p["a.y"] for p in sweep.points]) / 3
    for values in (xs, ys):
        assert sorted(np.floor(values * 16).astype(int)) == list(range(16))
    assert sweep.sample_seed == 7
    assert expand_sweep({"latin_hypercube": spec}).points == sweep.points  # seeded
    other = expand_sweep({"latin_hypercube": {**spec, "seed": 8}}).points
    assert other != sweep.points


def test_random_sampling_of_integers_and_choices_stays_in_range():
    spec = {"samples": 200, "params": {"a.n": {"low": 2, "high": 5, "integer": True},
                                       "a.c": {"values": ["x", "y"]}}}
    sweep = expand_sweep({"random": spec}, seed=3)
    assert {p["a.n"] for p in sweep.points} == {2, 3, 4, 5}
    assert {p["a.c"] for p in sweep.points} == {"x", "y"}
    assert sweep.sample_seed == 3  # the experiment's seed when none is given


@pytest.mark.parametrize("sweep, key, words", [
    ({"workload.seq_len": []}, "sweep.workload.seq_len", "empty list"),
    ({"workload.seq_len": 64}, "sweep.workload.seq_len", "expected a list"),
    ({"zip": {"workload.seq_len": [64, 128], "workload.micro_batch_size": [1]}}, "sweep.zip",
     "equal lengths, got workload.seq_len: 2, workload.micro_batch_size: 1"),
    ({"random": {"samples": 4, "params": {"workload.seq_len": {"low": 9, "high": 1}}}},
     "sweep.random.params.workload.seq_len", "low must be <= high"),
    ({"random": {"samples": 0, "params": {"workload.seq_len": {"low": 1, "high": 9}}}},
     "sweep.random.samples", "positive integer"),
])
def test_bad_sweeps_are_refused_naming_the_key(sweep, key, words):
    with pytest.raises(ConfigError) as info:
        Plan(with_sweep(sweep), file="exp.yaml")
    assert info.value.key == key and words in str(info.value)


def test_unknown_swept_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError) as info:
        Plan(with_sweep({"workload.micro_batch_sise": [1, 2]}), file="exp.yaml")
    assert info.value.key == "workload.micro_batch_sise"
    assert "did you mean 'micro_batch_size'" in str(info.value)


def test_a_value_of_the_wrong_type_is_refused_before_any_point_runs():
    with pytest.raises(ConfigError) as info:
        Plan(with_sweep({"cluster.nic_bandwidth": ["400 Gb/s", "fast"]}), file="exp.yaml")
    assert info.value.key == "cluster.nic_bandwidth" and "'fast'" in str(info.value)


def test_a_combination_that_breaks_a_cross_field_rule_names_the_point():
    # Each value is valid alone; micro-batch 4 with global batch 6 is not (6 % 4 != 0).
    raw = with_sweep({"workload.micro_batch_size": [1, 4], "workload.global_batch_size": [4, 6]})
    with pytest.raises(ConfigError) as info:
        Plan(raw, file="exp.yaml").validate_all()
    assert "global_batch_size (6) must be a multiple" in str(info.value)
    assert "sweep point 3: {'workload.micro_batch_size': 4, 'workload.global_batch_size': 6}" \
        in str(info.value)


def test_fast_validation_gives_the_same_points_and_ids_as_validating_each_point_in_full():
    raw = with_sweep({"workload.micro_batch_size": [1, 2], "cluster.nvlink_bandwidth":
                      ["100 GB/s", "450 GB/s"], "zip": {"seed": [1, 2], "workload.seq_len": [64, 128]}})
    plan = Plan(raw, file="exp.yaml")
    assert plan._converted is not None  # the shortcut was taken
    fast = [plan.run(i) for i in range(len(plan))]
    slow = [plan._slow_run(i) for i in range(len(plan))]
    assert [r.resolved_json for r in fast] == [r.resolved_json for r in slow]
    assert len({r.run_id for r in fast}) == len(fast) == 8
    assert fast[3].config.cluster.nvlink_bandwidth == pytest.approx(450e9, rel=1e-9)
    assert plan.validate_all() == [r.run_id for r in slow]


def test_run_ids_are_stable_and_depend_on_the_resolved_config_not_its_spelling(tmp_path):
    a = Plan(with_sweep({"cluster.nvlink_bandwidth": ["450 GB/s"]}), file="a.yaml")
    b = Plan(with_sweep({"cluster.nvlink_bandwidth": [450e9]}), file="b.yaml")
    c = Plan(with_sweep({"cluster.nvlink_bandwidth": ["400 GB/s"]}), file="c.yaml")
    assert a.validate_all() == b.validate_all() != c.validate_all()


def test_smoke_mode_applies_overrides_and_keeps_two_points(tmp_path):
    raw = with_sweep({"workload.micro_batch_size": [1, 2, 4]},
                     smoke={"workload.seq_len": 64, "cluster.nvlink_bandwidth": "100 GB/s"})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert len(load_plan(path)) == 3 and load_plan(path).workload.seq_len == 128
    plan = load_plan(path, smoke=True)
    assert len(plan) == 2 and plan.run(1).workload.seq_len == 64
    assert plan.run(1).config.cluster.nvlink_bandwidth == pytest.approx(100e9, rel=1e-9)


def test_points_keep_which_fields_the_user_left_unset():
    # Interleaved 1F1B picks its own chunks per stage only when virtual_stages is left unset;
    # neither the fast validation nor the task sent to a worker may set it.
    from clustersim.experiment import task_for

    raw = with_sweep({"workload.schedule": ["1f1b", "interleaved"]})
    raw["cluster"]["gpus_per_node"] = 4
    raw["workload"]["parallel"] = {"tp": 2, "pp": 2}
    plan = Plan(raw, file="exp.yaml")
    run = plan.run(1)
    assert "virtual_stages" not in run.workload.parallel.model_fields_set
    task = task_for(plan, run, None)
    assert "virtual_stages" not in task.config["workload"]["parallel"]
    assert run.workload.make_schedule().num_chunks == 2

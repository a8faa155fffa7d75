"""The check memo: a point is re-checked unless one agreeing on every field read passed."""

import pytest
from pydantic import BaseModel, ConfigDict

from clustersim.errors import ConfigError
from clustersim.point_checks import CheckMemo


class Inner(BaseModel):
    model_config = ConfigDict(frozen=True)
    a: int = 1
    b: int = 2


class Toy(BaseModel):
    model_config = ConfigDict(frozen=True)
    x: int = 0
    y: int = 0
    seed: int = 0
    inner: Inner = Inner()

    @property
    def derived(self) -> int:  # a property reads its fields through the instance too
        return self.x * 10


def make_check(calls):
    def check(w):
        calls.append(1)
        if w.derived > 50 and w.y < 0:  # reads y only on this branch
            raise ConfigError("x too large for negative y", key="workload.y")
        if "b" in w.inner.model_fields_set and w.inner.b == 9:
            raise ConfigError("b=9 given", key="workload.inner.b")
    return check


def test_fields_not_read_do_not_rerun_the_check():
    memo, calls = CheckMemo(), []
    for seed in range(100):
        memo.run(Toy(x=1, seed=seed), "c", make_check(calls))
    assert len(calls) == 1  # seed is never read
    memo.run(Toy(x=1), "other cluster", make_check(calls))
    assert len(calls) == 2


def test_a_field_read_on_one_branch_only_is_still_a_dependency():
    memo, calls = CheckMemo(), []
    memo.run(Toy(x=1, y=-1), "c", make_check(calls))   # x=1: y not read
    memo.run(Toy(x=1, y=-5), "c", make_check(calls))   # same x, y unread: reused
    assert len(calls) == 1
    memo.run(Toy(x=9, y=1), "c", make_check(calls))    # reads y
    with pytest.raises(ConfigError, match="negative y"):
        memo.run(Toy(x=9, y=-1), "c", make_check(calls))
    with pytest.raises(ConfigError):  # failures are never remembered as passes
        memo.run(Toy(x=9, y=-1), "c", make_check(calls))


def test_which_fields_were_given_is_part_of_the_key():
    memo, calls = CheckMemo(), []
    memo.run(Toy(inner=Inner()), "c", make_check(calls))
    memo.run(Toy(inner=Inner(a=1)), "c", make_check(calls))
    with pytest.raises(ConfigError, match="b=9"):
        memo.run(Toy(inner=Inner(b=9)), "c", make_check(calls))


def test_reading_the_whole_model_keys_on_every_field():
    memo, calls = CheckMemo(), []

    def check(w):
        calls.append(1)
        if w.model_dump()["seed"] == 3:
            raise ConfigError("seed 3", key="seed")
    memo.run(Toy(seed=1), "c", check)
    memo.run(Toy(seed=2), "c", check)
    with pytest.raises(ConfigError, match="seed 3"):
        memo.run(Toy(seed=3), "c", check)
    assert len(calls) == 3


def test_a_sweep_point_failing_its_check_is_found_among_shared_checks():
    from clustersim.experiment_config import Plan

    raw = {"name": "memo", "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 2},
           "workload": {"kind": "training", "model": "tiny", "seq_len": 64, "micro_batch_size": 1,
                        "global_batch_size": 4, "parallel": {"tp": 2, "pp": 1, "dp": 1}},
           "sweep": {"workload.seq_len": [64, 128, 256],  # tiny's max_seq_len is 128
                     "workload.grad_bucket_params": [1e6 * (i + 1) for i in range(20)]}}
    plan = Plan(raw)
    for index in range(40):  # the passing points: checked once per seq_len
        plan.check(plan.run(index))
    with pytest.raises(ConfigError, match=r"seq_len 256 exceeds .*sweep point 40"):
        plan.check(plan.run(40))
    assert len({plan.run(i).run_id for i in range(60)}) == 60

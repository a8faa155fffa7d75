"""Requests: synthetic arrivals and lengths from the run's generator; CSV traces refused with the
line that is wrong."""

import numpy as np
import pytest

from clustersim.errors import ConfigError
from clustersim.experiment import expand, load_experiment
from clustersim.workloads.serving.requests import RequestsConfig, read_trace

HEADER = "arrival_time,prompt_tokens,output_tokens\n"


def requests(**spec):
    return RequestsConfig.model_validate(spec)


def test_poisson_and_gamma_arrivals_have_the_asked_rate_and_burstiness():
    rng = np.random.default_rng(0)
    poisson = requests(count=20000, arrival={"kind": "poisson", "rate": 50}).load(rng)
    gaps = np.diff(poisson.arrival_s)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    bursty = requests(count=20000, arrival={"kind": "gamma", "rate": 50, "cv": 3}).load(rng)
    gaps = np.diff(bursty.arrival_s)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_lengths_follow_their_distributions_and_a_bare_number_is_fixed():
    rng = np.random.default_rng(1)
    reqs = requests(count=5000, prompt_tokens={"kind": "lognormal", "mean": 800, "sigma": 0.5,
                                               "max": 2000},
                    output_tokens=64).load(rng)
    assert reqs.prompt_tokens.max() <= 2000 and reqs.prompt_tokens.min() >= 1
    assert np.median(reqs.prompt_tokens) == pytest.approx(800 * np.exp(-0.125), rel=0.05)
    assert (reqs.output_tokens == 64).all()


def test_shared_prefixes_prepend_their_tokens_to_the_prompt():
    reqs = requests(count=1000, prompt_tokens=100,
                    prefix={"groups": 4, "tokens": 500, "fraction": 0.5}).load(
        np.random.default_rng(2))
    shared = reqs.prefix_id >= 0
    assert 0.4 < shared.mean() < 0.6 and set(reqs.prefix_id[shared]) == {0, 1, 2, 3}
    assert (reqs.prompt_tokens[shared] == 600).all() and (reqs.prompt_tokens[~shared] == 100).all()


def test_the_same_generator_seed_gives_the_same_requests():
    spec = dict(count=100, arrival={"kind": "gamma", "rate": 5, "cv": 2},
                prompt_tokens={"kind": "uniform", "min": 1, "max": 999})
    a = requests(**spec).load(np.random.default_rng(7))
    b = requests(**spec).load(np.random.default_rng(7))
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)


def test_a_trace_is_read_with_optional_prefix_columns(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("arrival_time,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n"
                    "0.0,1000,10,system-a,800\n0.5,300,20,,\n0.5,900,5,system-a,800\n")
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 0.5, 0.5]
    assert trace.prefix_id.tolist() == [0, -1, 0]
    assert trace.prefix_tokens.tolist() == [800, 0, 800]


@pytest.mark.parametrize("text, message", [
    ("arrival_time,prompt_tokens\n0,10\n", "line 1: missing column(s) output_tokens"),
    (HEADER + "0.0,10,5\n0.1,-3,5\n", "line 3: prompt_tokens must be >= 1, got -3"),
    (HEADER + "0.0,10,5\n0.2,10,5\n0.1,10,5\n", "line 4: arrival_time 0.1 is earlier than the "
                                                 "previous line's 0.2"),
    (HEADER + "0.0,10,five\n", "line 2: output_tokens 'five' is not an integer"),
    (HEADER + "0.0,10\n", "line 2: 2 fields, expected 3"),
    (HEADER + "-1,10,5\n", "line 2: arrival_time must be a finite number >= 0"),
    ("arrival_time,prompt_tokens,output_tokens,prefix_id\n0,10,5,a\n",
     "line 2: prefix_id is set but prefix_tokens is not"),
    ("arrival_time,prompt_tokens,output_tokens,prompt\n0,10,5,x\n", "line 1: unknown column"),
    (HEADER, "no requests"),
])
def test_a_bad_trace_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_trace(path)
    assert error.value.file == str(path)


def test_a_bad_trace_fails_the_experiment_before_any_run(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0.0,10,5\n0.1,0,5\n")
    spec = tmp_path / "exp.yaml"
    spec.write_text(f"name: t\nworkload:\n  kind: serving\n  model: llama2-7b\n"
                    f"  requests: {{trace: {trace}}}\n")
    with pytest.raises(ConfigError, match="line 3: prompt_tokens must be >= 1"):
        load_experiment(spec)


def test_unknown_and_missing_keys_are_config_errors():
    base = {"name": "x", "workload": {"kind": "serving", "model": "llama2-7b",
                                      "requests": {"count": 3}}}
    expand(base)
    with pytest.raises(ConfigError, match="workload.kv_cache.blocksize: unknown key; did you mean "
                                          "'block_size'"):
        expand({**base, "workload": {**base["workload"], "kv_cache": {"blocksize": 8}}})
    with pytest.raises(ConfigError, match="give either `count`"):
        expand({**base, "workload": {**base["workload"], "requests": {}}})


@pytest.mark.parametrize("name", ["serving_chunked_prefill", "long_context_kv", "disaggregation",
                                  "nanoflow_overlap"])
def test_the_serving_experiments_validate(name):
    runs = load_experiment(f"experiments/{name}.yaml")
    assert len(runs) > 1

"""Property-based fuzzing of `clustersim run`: mutated experiment files keep the CLI contract.

Hypothesis starts from small valid experiments (training, collective, serving) and mutates them:
drops, adds, retypes and perturbs keys anywhere in the tree, with NaN, infinities, huge,
negative, zero and empty values, rich markup, emoji codes and path tricks in strings. Whatever
it makes, `clustersim run FILE` must exit 0, 1 or 2, never print a traceback, print exactly one
line for exit 2, and end within ``BOUND_S``. The resource guard's limits are lowered for the
test, so a mutation that would make a long run is refused in milliseconds (that refusal is part
of what is tested). ``CLUSTERSIM_FUZZ_EXAMPLES`` sets the number of cases (default 40).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_contract import check_contract, invoke

BOUND_S = 60
EXAMPLES = int(os.environ.get("CLUSTERSIM_FUZZ_EXAMPLES", "40"))

BASES = [
    {"name": "fuzz-training", "seed": 1,
     "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 2},
     "workload": {"kind": "training", "model": "tiny", "seq_len": 128, "micro_batch_size": 2,
                  "global_batch_size": 4, "parallel": {"tp": 2, "pp": 1, "dp": 1},
                  "granularity": "op", "recompute": "none"},
     "output": {"trace": False, "plots": False, "parquet": False}},
    {"name": "fuzz-collective",
     "cluster": {"node": "DGX-H100", "nodes": 4, "gpus_per_node": 2, "nvlink_bandwidth": "450 GB/s",
                 "intra_node_step_latency": "1 us",
                 "network": {"kind": "leaf_spine", "hosts_per_leaf": 2, "spines": 2}},
     "workload": {"kind": "collective", "collective": "all_reduce", "size": "1 MiB",
                  "group": "all", "routing": "ecmp"},
     "output": {"trace": False, "plots": False, "parquet": False}},
    {"name": "fuzz-serving",
     "cluster": {"node": "DGX-H100", "nodes": 1, "gpus_per_node": 1},
     "workload": {"kind": "serving", "model": "tiny", "parallel": {"tp": 1},
                  "requests": {"count": 12, "arrival": {"kind": "poisson", "rate": 50},
                               "prompt_tokens": {"kind": "uniform", "min": 4, "max": 64},
                               "output_tokens": 4},
                  "slo": {"ttft": "2 s", "tpot": "100 ms"}},
     "sweep": {"workload.requests.arrival.rate": [20, 50]},
     "output": {"trace": False, "plots": False, "parquet": False}},
]

WEIRD = st.sampled_from([
    math.nan, math.inf, -math.inf, 1e308, -1, -1.5, 0, 0.0, 10**30, 2**63, 10**400, "", " ", [], {},
    None,
    True, False, "nan", "inf", ".inf", "-5 GiB", "nan GiB", "1e400 B", "9**9**9 B", "1 parsec",
    "[bold]x", "[/]", "[/oops]", ":id:", ":thumbs_up:", "../../../escape", "/tmp/abs-escape",
    "~/home-escape", "a\nb", "\x1b[31mred", "x" * 5000, [[[[1]]]], {"kind": "bogus"}, [1, "a", None],
    "all", "rail:99", "nodes:3-1", 1e-300, 3.7]).map(copy.deepcopy)  # never share a mutable
# Valid-looking values of other keys: they get past validation and reach the simulation.
PLAUSIBLE = st.one_of(st.integers(1, 64), st.sampled_from([
    "all_to_all", "broadcast", "all_gather", "reduce_scatter", "ring", "tree", "halving_doubling",
    "pairwise", "hierarchical", "spray", "adaptive", "split:2", "split:0", "ideal", "ecmp",
    "gpipe", "1f1b", "interleaved", "zb-h1", "v-half", "bitpipe", "layer", "op", "selective",
    "full", "one", "static", "continuous", "chunked_prefill", "prefix_aware", "swap", "gamma",
    "burst", "closed", "lognormal", "fixed", "uniform", "fat_tree", "non_blocking", "rail:0",
    "node:0", "nodes:0-1", "llama2-7b", "tiny-moe", "DGX-A100", "DGX-B200", "1 GiB", "0 B",
    "10 us", "0 s", "1 TB/s", 0.9, 1e-3, 2.5]))
KEYS = st.sampled_from(["bogus", "[/oops]", ":id:", "kind", "name", "nodes", "tp", "count",
                        "../x", "a.b", "", "1"])


def _paths(node, prefix=()):
    """Every key path of the tree (mapping keys and list indices)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def _at(node, path):
    for part in path:
        node = node[part]
    return node


def _perturb(value, factor):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    try:
        result = value * factor
        return int(result) if isinstance(value, int) and math.isfinite(result) else result
    except OverflowError:  # an int beyond the float range: keep it, it is weird enough
        return value


@st.composite
def mutated(draw):
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        leaves = [p for p in paths if not isinstance(_at(data, p), (dict, list))] or paths
        path = draw(st.sampled_from(leaves if draw(st.integers(0, 3)) else paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        leaf = path[-1]
        action = draw(st.sampled_from(["perturb"] * 4 + ["retype"] * 3 + ["plausible"] * 3
                                      + ["drop"] * 2 + ["add", "replace_root"]))
        if action == "drop":
            del parent[leaf]
        elif action == "retype":
            parent[leaf] = draw(WEIRD)
        elif action == "perturb":
            factor = draw(st.sampled_from([-1, 0, 2, 3, 7, 1000, 1e6, 1e12, 0.5, 1e-9, math.nan]))
            parent[leaf] = _perturb(parent[leaf], factor)
        elif action == "plausible":
            parent[leaf] = draw(PLAUSIBLE)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(WEIRD)
        elif action == "replace_root":
            data[draw(st.sampled_from(list(data)))] = draw(WEIRD)
    return data


class _Timeout(BaseException):
    """Not an Exception: the per-run handler of a sweep must not record a hang as a failure."""


def _alarm(signum, frame):
    raise _Timeout(f"no answer within {BOUND_S} s")


def run_case(data, folder: Path):
    """Run one generated experiment and check the contract; return the outcome."""
    path = folder / "case.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=False))
    except yaml.YAMLError:
        return None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BOUND_S)
    try:
        outcome = invoke("run", str(path), "--out", str(folder / "out"))
    except _Timeout:
        raise AssertionError(f"no answer within {BOUND_S} s: {data!r:.600}") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    check_contract(outcome, f"{data!r:.600}")
    if outcome.code == 2:
        assert str(path) in outcome.error_lines[0], outcome.error_lines
    return outcome


@pytest.fixture
def small_limits(monkeypatch):
    """Guard limits that keep every generated run under a second or two."""
    from clustersim import resource_guard

    monkeypatch.setattr(resource_guard, "LIMITS", {"devices": 64, "tasks": 20_000,
                                                   "flows": 200_000, "requests": 400})
    monkeypatch.delenv(resource_guard.ALLOW_ENV, raising=False)


@settings(max_examples=EXAMPLES, deadline=None,
          derandomize=not os.environ.get("CLUSTERSIM_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=mutated())
def test_mutated_experiments_keep_the_cli_contract(small_limits, data):
    with tempfile.TemporaryDirectory() as folder:
        run_case(data, Path(folder))


@pytest.mark.parametrize("base", BASES, ids=lambda b: b["name"])
def test_the_unmutated_bases_run(small_limits, base, tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    outcome = invoke("run", str(path), "--out", str(tmp_path / "out"))
    check_contract(outcome, base["name"])
    assert outcome.code == 0, outcome.stdout + outcome.stderr

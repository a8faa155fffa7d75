"""Published request traces (Azure, BurstGPT, Mooncake) and the radix-tree prefix cache."""

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustersim.errors import ConfigError
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.workloads.serving.radix_cache import RadixTree
from clustersim.workloads.serving import trace_formats
from clustersim.workloads.serving.trace_formats import read_published_trace, sniff_format
from clustersim.workloads.serving.workload import ServingWorkload

DATA = Path(__file__).parent / "data" / "traces"


@functools.cache
def node():
    return ClusterConfig(node="DGX-H100").build()


# -- readers ---------------------------------------------------------------------------------

def test_the_azure_trace_is_read_with_its_own_columns_and_times_from_the_first_request():
    path = DATA / "azure_conv_sample.csv"
    assert sniff_format(path) == "azure"
    requests = read_published_trace(path, "azure")
    frame = pd.read_csv(path)
    stamps = pd.to_datetime(frame["TIMESTAMP"].str.slice(0, 26))
    expected = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
    np.testing.assert_allclose(requests.arrival_s, expected, rtol=0, atol=1e-6)
    assert (requests.prompt_tokens == frame["ContextTokens"]).all()
    assert (requests.output_tokens == frame["GeneratedTokens"]).all()


def test_burstgpt_failed_requests_are_skipped_and_times_are_seconds():
    path = DATA / "burstgpt_sample.csv"
    assert sniff_format(path) == "burstgpt"
    frame = pd.read_csv(path)
    ok = frame[frame["Response tokens"] > 0]
    requests = read_published_trace(path, "burstgpt", time_scale=0.5)
    assert len(requests) == len(ok) == len(frame) - 2
    np.testing.assert_allclose(requests.arrival_s, (ok["Timestamp"] - ok["Timestamp"].iloc[0])
                               * 0.5, rtol=1e-12)
    assert (requests.prompt_tokens == ok["Request tokens"]).all()


def test_mooncake_keeps_each_requests_block_hashes_and_times_are_milliseconds():
    path = DATA / "mooncake_sample.jsonl"
    assert sniff_format(path) == "mooncake"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    requests = read_published_trace(path, "mooncake")
    assert requests.block_hashes == [tuple(row["hash_ids"]) for row in rows]
    assert requests.hash_block_tokens == 512
    np.testing.assert_allclose(requests.arrival_s,
                               [(r["timestamp"] - rows[0]["timestamp"]) / 1e3 for r in rows])


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n"
              "yesterday,10,5\n", "line 3: TIMESTAMP 'yesterday' is not a date-time"),
    ("a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.1,10\n",
     "line 1: missing column(s) GeneratedTokens"),
    ("b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,100,20,120,API log\n3,ChatGPT,1x,20,120,API log\n",
     "line 3: Request tokens '1x' is not an integer"),
    ("b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,100,20,120,API log\n3,ChatGPT,10,20,30,API log\n",
     "line 3: timestamp 3 s is earlier than the previous line's 5 s"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
                '{"timestamp": 1, "input_length": 10\n', "line 2: not a JSON object"),
    ("m.jsonl",
     '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1, 2, 3]}\n',
     "line 1: 3 hash_ids for 600 input tokens; blocks of 512 tokens give at most 2"),
    ("m.jsonl", '{"timestamp": 0, "output_length": 2}\n', "line 1: missing key(s) input_length"),
])
def test_a_bad_row_is_refused_naming_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_published_trace(path, {"a": "azure", "b": "burstgpt", "m": "mooncake"}[name[0]])
    assert str(path) in str(info.value)


_STAMP = st.builds(
    lambda day, second, digits, space, sep: (
        f"{space}2023-11-{day:02d}{sep}{second // 3600:02d}:{second // 60 % 60:02d}:"
        f"{second % 60:02d}" + (f".{digits}" if digits else "")),
    st.integers(1, 31), st.integers(0, 86399), st.sampled_from(["", "1", "123", "1234567",
                                                                "9999999", "12345678"]),
    st.sampled_from(["", "", "", " "]), st.sampled_from([" ", " ", " ", "T"]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_STAMP, st.integers(-1, 3000), st.integers(0, 500)),
                     min_size=1, max_size=12),
       blank=st.booleans(), ordered=st.booleans())
def test_an_azure_trace_read_at_once_is_the_same_as_read_line_by_line(
        tmp_path, monkeypatch, rows, blank, ordered):
    """The whole-table reading (numpy timestamps) gives the line-by-line reading's requests
    to the bit, and the same error for a bad line (a date that does not exist, a count below
    1, an unsorted time)."""
    if ordered:
        rows.sort(key=lambda row: row[0].strip().replace("T", " "))
    lines = [f"{stamp},{prompt},{output}" for stamp, prompt, output in rows]
    if blank:
        lines.insert(len(lines) // 2, "")
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines) + "\n")

    def read():
        try:
            return read_published_trace(path, "azure")
        except ConfigError as exc:
            return str(exc)

    at_once = read()
    monkeypatch.setattr(trace_formats, "_azure_columns", lambda *args: False)
    by_line = read()
    if isinstance(by_line, str):
        assert at_once == by_line
    else:
        assert at_once.arrival_s.tolist() == by_line.arrival_s.tolist()
        assert at_once.prompt_tokens.tolist() == by_line.prompt_tokens.tolist()
        assert at_once.output_tokens.tolist() == by_line.output_tokens.tolist()


# -- the radix tree --------------------------------------------------------------------------

def test_unheld_leaves_are_evicted_least_recently_used_first_and_parents_after_children():
    tree = RadixTree(node_blocks=2, capacity_blocks=10)
    assert tree.insert([1, 2, 3]) == 0
    assert tree.insert([1, 4]) == 1                 # shares block 1
    assert tree.match([1, 2, 3, 9]) == (3, 0)
    tree.acquire([1, 4])                            # held: never evicted
    assert tree.insert([5, 6]) == 0                 # 6 nodes = 12 blocks > 10: evicts leaf 3
    assert tree.match([1, 2, 3]) == (2, 1) and tree.match([5, 6]) == (2, 0)
    tree.insert([7])                                # then leaf 2 (LRU), never the held path
    assert tree.match([1, 2]) == (1, 1) and tree.match([1, 4]) == (2, 2)
    assert tree.blocks == 10 and tree.evicted_nodes == 2
    tree.check()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "hold", "drop"]),
                          st.lists(st.integers(0, 5), min_size=1, max_size=6)), max_size=50),
       st.integers(2, 12))
def test_the_radix_cache_never_holds_more_blocks_than_its_capacity(ops, capacity):
    tree = RadixTree(node_blocks=2, capacity_blocks=2 * capacity)
    held: list[tuple] = []
    for op, tail in ops:
        path = (tail[0],) + tuple(10 * (i + 1) + x for i, x in enumerate(tail[1:]))
        needed = len(path)
        if op == "drop" and held:
            tree.release(held.pop())
        elif op in ("insert", "hold"):
            if tree.nodes - tree.unheld_nodes + needed > capacity:
                continue                             # might not fit beside the held paths
            tree.acquire(path)
            if op == "hold":
                held.append(path)
            else:
                tree.release(path)
        tree.check()
        assert tree.blocks <= 2 * capacity


# -- the engine on a trace with hashes ------------------------------------------------------

def serving(trace: Path, **spec) -> ServingWorkload:
    base = {"model": "llama2-7b", "max_model_len": 8192, "requests": {"trace": str(trace)}}
    base.update(spec)
    return ServingWorkload.model_validate(base)


def test_a_repeated_prefix_is_computed_once_then_read_from_the_tree(tmp_path):
    trace = tmp_path / "two.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 1600, "output_length": 4, '
                     '"hash_ids": [7, 8, 9, 10]}\n'
                     '{"timestamp": 5000, "input_length": 1600, "output_length": 4, '
                     '"hash_ids": [7, 8, 9, 11]}\n')
    result = serving(trace).simulate(node(), rng=np.random.default_rng(0))
    engine, out = result.engines[0], result.outcome
    # Blocks 7, 8, 9 (3 x 512 tokens, all before the last prompt token) are shared.
    assert engine.prefix_hit_tokens == 3 * 512
    assert engine.blocks.prefix_hits == 3 and engine.blocks.prefix_misses == 3
    model = engine.model
    second = model.iteration(chunks=[(1600 - 1536, 1600)]).latency_s
    assert math.isclose(out.first_token_s[1] - 5.0, second, rel_tol=1e-9)
    assert engine.blocks.held == 0 and engine.blocks.tree.blocks == 3 * 32


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_a_mooncake_trace_under_memory_pressure_finishes_and_returns_every_block(preemption):
    work = serving(DATA / "mooncake_sample.jsonl", scheduler={"policy": "chunked_prefill"},
                   kv_cache={"num_blocks": 500, "preemption": preemption},
                   requests={"trace": str(DATA / "mooncake_sample.jsonl"), "time_scale": 0.05})
    result = work.simulate(node(), rng=np.random.default_rng(0))
    out = result.outcome
    assert (out.status == 1).all()
    assert (out.generated == result.requests.output_tokens).all()
    engine = result.engines[0]
    assert engine.prefix_hit_tokens > 0 and engine.preemptions > 0
    engine.blocks.check()
    assert engine.blocks.held == 0 and engine.blocks.tree.blocks <= engine.blocks.total


def test_hash_blocks_must_split_into_kv_blocks():
    work = serving(DATA / "mooncake_sample.jsonl", kv_cache={"block_size": 48})
    with pytest.raises(ConfigError, match="workload.kv_cache.block_size"):
        work.check(node())


def test_prefix_aware_batching_keeps_requests_of_one_radix_branch_together(tmp_path):
    trace = tmp_path / "two_prompts.jsonl"
    rows = []
    for i in range(12):
        shared = [1, 2, 3] if i % 2 == 0 else [50, 51, 52]
        rows.append(json.dumps({"timestamp": 0, "input_length": 2048, "output_length": 4,
                                "hash_ids": shared + [100 + i]}))
    trace.write_text("\n".join(rows) + "\n")

    def order(policy):
        result = serving(trace, scheduler={"policy": policy, "max_num_seqs": 4,
                                           "max_batched_tokens": 512}).simulate(
            node(), rng=np.random.default_rng(0))
        first = result.outcome.first_token_s
        return [i % 2 for i in np.argsort(first, kind="stable")]

    assert order("chunked_prefill")[:4] == [0, 1, 0, 1]          # arrival order
    assert order("prefix_aware")[:6] == [0] * 6                   # the first branch, together

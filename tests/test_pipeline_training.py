"""Pipeline schedules run on the engine: closed forms when idealised, and the full training
compiler's invariants (critical path, vocabulary balance, memory errors naming the stage)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustersim.errors import ConfigError, OutOfMemory
from clustersim.hardware.cluster_config import ClusterConfig
from clustersim.schedules import ActionKind, critical_path, make_schedule
from clustersim.sim.engine import simulate
from clustersim.workloads.training import TrainingWorkload
from clustersim.workloads.training_step import idealised_program

REL = 1e-9


def uniform(f=1.0, b=2.0):
    """F costs f, a fused backward b, split halves b/2 each (per chunk: divided by v)."""
    def duration(action, v=1):
        return {ActionKind.F: f, ActionKind.BW: b, ActionKind.B: b / 2, ActionKind.W: b / 2}[action.kind]
    return duration


def engine_bubble(schedule, duration):
    trace = simulate(idealised_program(schedule, duration))
    busy = sum(duration(a) for a in schedule)
    return trace.makespan_s, 1 - busy / (schedule.num_stages * trace.makespan_s)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(2, 8), m=st.integers(1, 16), name=st.sampled_from(["1f1b", "gpipe"]))
def test_engine_reproduces_the_1f1b_and_gpipe_bubble_exactly(p, m, name):
    makespan, bubble = engine_bubble(make_schedule(name, p, m), uniform())
    assert math.isclose(makespan, 3.0 * (m + p - 1), rel_tol=REL)
    assert math.isclose(bubble, (p - 1) / (m + p - 1), rel_tol=REL)


@settings(max_examples=25, deadline=None)
@given(p=st.integers(2, 6), k=st.integers(1, 4), v=st.integers(2, 3))
def test_engine_reproduces_the_interleaved_bubble(p, k, v):
    m = k * p
    schedule = make_schedule("interleaved", p, m, v)
    _, bubble = engine_bubble(schedule, lambda a: uniform()(a) / v)
    assert math.isclose(bubble, (p - 1) / (v * m + p - 1), rel_tol=REL)


TINY8 = {"name": "tiny8", "hidden_size": 64, "num_layers": 8, "num_heads": 4, "num_kv_heads": 2,
         "ffn_hidden_size": 128, "vocab_size": 256, "max_seq_len": 128}


def run(schedule, model=TINY8, pp=2, m=4, record_trace=True, **extra):
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=pp * extra.pop("tp", 1)).build()
    work = TrainingWorkload(kind="training", model=model, seq_len=extra.pop("seq_len", 128),
                            micro_batch_size=1, global_batch_size=m, schedule=schedule,
                            parallel={"pp": pp, "tp": cluster.num_devices // pp}, **extra)
    work.check(cluster)
    return work, cluster, work.run(cluster, rng=np.random.default_rng(0), record_trace=record_trace)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "v-half",
                                  "v-min", "v-zb", "bitpipe", "vocab-1f1b", "vocab-v-half"])
def test_every_schedule_compiles_and_never_beats_its_critical_path(name):
    work, cluster, result = run(name, pp=2, m=4)
    schedule = work.make_schedule()
    spans = result.trace.spans
    # Each action's simulated compute time (its ops on the compute stream) is its duration.
    compute = spans[(spans["stream"] == "compute") & (spans["category"] == "compute")]
    per_action = compute.groupby(["stage", "pass", "microbatch", "chunk"])["end_s"].count()
    durations = (compute.assign(d=compute["end_s"] - compute["start_s"])
                 .groupby(["stage", "pass", "microbatch", "chunk"])["d"].sum())

    def duration(action):
        return float(durations.get((action.stage, action.kind.name, action.microbatch, action.chunk), 0.0))

    assert len(per_action) == len(schedule)
    assert result.metrics["step_time_s"] >= critical_path(schedule, duration) * (1 - 1e-9)


def test_vocabulary_parallelism_balances_the_stages():
    # LLaMA-3's 128k vocabulary makes the last stage (LM head) the slowest under 1F1B; the
    # vocabulary-parallel schedule spreads the output layer over all stages.
    def spread(name):
        _, _, result = run(name, model="llama3-8b", pp=4, m=8, seq_len=1024, granularity="layer")
        spans = result.trace.spans
        busy = spans[spans["category"] == "compute"].assign(d=lambda s: s["end_s"] - s["start_s"]) \
            .groupby("stage")["d"].sum()
        return (busy.max() - busy.min()) / busy.mean(), result.metrics["step_time_s"]

    plain, plain_time = spread("1f1b")
    vocab, vocab_time = spread("vocab-1f1b")
    assert plain > 0.1 and vocab < plain / 2
    assert vocab_time < plain_time


def test_a_layout_that_does_not_fit_names_the_stage_and_the_overflow():
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=2,
                            gpu_overrides={"hbm_capacity_bytes": "3 MiB"}).build()
    work = TrainingWorkload(kind="training", model=TINY8, seq_len=128, micro_batch_size=4,
                            global_batch_size=16, schedule="gpipe", parallel={"pp": 2})
    with pytest.raises(OutOfMemory, match=r"pipeline stage \d does not fit: it needs [\d.]+ GiB more"):
        work.run(cluster, rng=np.random.default_rng(0), record_trace=False)


def test_layers_not_divisible_by_stages_is_a_config_error():
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=8).build()
    work = TrainingWorkload(kind="training", model="llama2-13b", seq_len=1024,
                            global_batch_size=8, parallel={"pp": 8}, schedule="interleaved")
    with pytest.raises(ConfigError, match="cannot be split evenly") as info:
        work.check(cluster)
    assert info.value.key == "workload.parallel.pp"


def test_pipeline_trace_has_send_arrows_between_stages(tmp_path):
    import json

    _, cluster, result = run("1f1b", pp=2, m=2)
    path = result.trace.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    starts = [e for e in events if e["ph"] == "s"]
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    # Per micro-batch: one activation forward, one gradient backward.
    assert len(starts) == 4 and set(ends) == {e["id"] for e in starts}
    assert all(ends[e["id"]]["pid"] != e["pid"] and ends[e["id"]]["ts"] >= e["ts"] for e in starts)


@pytest.mark.parametrize("name", ["zb-h1", "zb-h2", "v-half", "v-zb"])
def test_split_backward_schedules_reduce_the_embedding_gradient_with_dp_and_overlap(name):
    # The embedding has no weight-gradient matmul, so no W pass marks its gradient ready: its
    # bucket waits for its chunk's last W pass (this raised KeyError with dp > 1 and overlap).
    cluster = ClusterConfig(node="DGX-H100", nodes=1, gpus_per_node=4).build()
    steps = {}
    for overlap in (True, False):
        work = TrainingWorkload(kind="training", model=TINY8, seq_len=128, micro_batch_size=1,
                                global_batch_size=8, schedule=name, overlap_grad_reduce=overlap,
                                parallel={"pp": 2, "dp": 2})
        work.check(cluster)
        result = work.run(cluster, rng=np.random.default_rng(0), record_trace=False)
        steps[overlap] = result.metrics["step_time_s"]
    assert steps[True] <= steps[False] * (1 + REL)   # overlapping the reduction never costs time

"""`validate --published`: each row simulated exactly as `clustersim run` would, its error
against the published figure, and bad rows refused before anything runs."""

import math

import pytest
import yaml

from clustersim.errors import ConfigError
from clustersim.experiment import expand, run_one
from clustersim.validate.published import load_published, report_text, validate_published

EXPERIMENT = {
    "cluster": {"node": "DGX-A100", "nodes": 1, "gpus_per_node": 2, "collectives": "nccl"},
    "workload": {"kind": "training", "model": "tiny", "seq_len": 128, "micro_batch_size": 2,
                 "global_batch_size": 4, "parallel": {"tp": 2},
                 "kernels": {"attention": "unfused", "attention_dropout": 0.1}},
}


def write(tmp_path, rows):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"rows": rows}))
    return path


def row(**changes):
    base = {"name": "tiny-tp2", "source": {"title": "a test", "url": "https://example.org"},
            "published": {"metric": "step_time_s", "value": 0.01}, "experiment": EXPERIMENT}
    return {**base, **changes}


def test_a_row_is_simulated_as_its_experiment_and_scored_against_the_published_value(tmp_path):
    [result] = validate_published(write(tmp_path, [row()]))
    [run] = expand({"name": "tiny-tp2", **EXPERIMENT})
    expected = run_one(run, record_trace=False).metrics["step_time_s"]
    assert math.isclose(result.predicted, expected, rel_tol=1e-9)
    assert math.isclose(result.error_percent, 100 * (expected - 0.01) / 0.01, rel_tol=1e-9)
    assert "tiny-tp2" in report_text([result]) and "mean |error|" in report_text([result])


def test_unknown_keys_and_metrics_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="publisher"):
        load_published(write(tmp_path, [row(publisher="x")]))
    with pytest.raises(ConfigError, match="no metric 'tokens_per_gpu'"):
        validate_published(write(tmp_path, [row(published={"metric": "tokens_per_gpu", "value": 1})]))


def test_the_shipped_table_loads_and_every_row_names_its_source():
    spec = load_published("experiments/published_results.yaml")
    assert spec.rows and all(r.source.url.startswith("https://") and r.source.where for r in spec.rows)


def test_a_series_reports_its_published_and_simulated_trend():
    from clustersim.validate.published import RowResult, report_text

    rows = [RowResult(f"r{i}", "tflops", pub, sim, {}, "s", series="weak")
            for i, (pub, sim) in enumerate([(100.0, 120.0), (110.0, 118.0), (125.0, 126.0)])]
    text = report_text(rows + [RowResult("alone", "tflops", 1.0, 1.0, {}, "s", series="single")])
    assert "trend weak (3 rows, tflops): published 100 -> 125 (+25.0 %), simulated 120 -> 126 (+5.0 %)" in text
    assert "trend single" not in text  # one row has no trend

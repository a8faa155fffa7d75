"""Gallery health: every experiment in experiments/ runs in its smoke mode (its `smoke:`
overrides, at most 2 sweep points) with every point ok, and experiments/README.md says what
question each one answers. A new experiment without a `smoke:` block fails here on purpose."""

from pathlib import Path

import pytest
import yaml

from clustersim.experiment import run_experiment

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
# Tables of published results (top-level `rows:`) are inputs of `validate --published`, not
# experiments; their own tests check them.
FILES = sorted(p for p in EXPERIMENTS.glob("*.yaml") if "rows" not in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_experiment_runs_in_smoke_mode(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    assert raw.get("smoke"), f"{path.name}: add a `smoke:` block (key path -> value overrides " \
                             "that make it run in a few seconds)"
    table = run_experiment(path, out=tmp_path, smoke=True)
    assert 1 <= len(table) <= 2
    assert (table["status"] == "ok").all(), table.get("error")


def test_readme_says_what_question_each_experiment_answers():
    text = (EXPERIMENTS / "README.md").read_text()
    index = text.split("## What each experiment answers", 1)
    assert len(index) == 2, "experiments/README.md needs its index section"
    section = index[1].split("\n## ", 1)[0]
    for path in FILES:
        lines = [line for line in section.splitlines() if f"`{path.name}`" in line]
        assert len(lines) == 1 and "?" in lines[0], f"{path.name}: one line ending in a question"

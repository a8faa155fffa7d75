"""Every code block of README.md and experiments/README.md is run, in reduced form where needed.

Blocks are split into commands (backslash continuations joined, ``&&`` split, trailing
``# comments`` dropped) and each command is checked by what it is:

* ``clustersim run FILE`` and YAML experiment blocks: the whole file is validated as written
  (every sweep point, layouts, resource guard), then run with its sweep cut to its first value,
  request counts and batches cut down and no trace or plots, in a scratch folder that mirrors
  the repository's layout, so the commands that follow (plots of ``runs/<name>``) run as written;
* synopsis lines (placeholders such as ``KEY``, ``[--hue KEY]``, ``gpu|node``) and the
  minutes-long ``calibrate``/``validate --quick``: the subcommand exists and accepts every
  option named (``--help``); the calibration loop itself is tested in test_validate_loop.py;
* ``clustersim presets`` / ``plot``, ``python -c`` and ``python -m clustersim...`` snippets: as
  written; ``python benchmarks/X.py [options]``: ``--help`` lists every option named;
* ``pip install -e ".[extras]"``: the extras exist in pyproject.toml; ``python -m pytest``: this
  suite itself.
"""

from __future__ import annotations

import re
import shlex
import sys
import warnings
import tomllib
from pathlib import Path

import pytest
import yaml

from cli_contract import invoke

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md"]
_PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b|\[|\||<")


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, text, line) of each fenced block."""
    text = path.read_text()
    return [(m.group(1), m.group(2), text[:m.start()].count("\n") + 1)
            for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.split(r"\s{2,}#\s", line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


BLOCKS = [(path, lang, text, line) for path in DOCS for lang, text, line in code_blocks(path)]


def reduced(data: dict) -> dict:
    """The experiment with one sweep point, small request counts and batches, no trace/plots."""
    data = yaml.safe_load(yaml.safe_dump(data))
    if data.get("sweep"):
        data["sweep"] = {key: values[:1] for key, values in data["sweep"].items()}
    data["output"] = {"trace": False, "plots": False, "parquet": False}
    workload = data.get("workload", {})
    requests = workload.get("requests")
    if isinstance(requests, dict):
        if "count" in requests:
            requests["count"] = min(requests["count"], 40)
        arrival = requests.get("arrival", {})
        if arrival.get("kind") == "closed":
            arrival["requests_per_user"] = 1
    if workload.get("kind") == "training":
        par = workload.get("parallel", {})
        smallest = workload.get("micro_batch_size", 1) * par.get("dp", 1) * 2 * par.get("pp", 1)
        workload["global_batch_size"] = min(workload["global_batch_size"], smallest)
    return data


def check_experiment(path: Path, cwd: Path) -> None:
    """Validate ``path`` as written, then run its reduced form to ``runs/<name>`` under ``cwd``."""
    from clustersim.experiment import load_experiment

    load_experiment(path)  # every point, as written
    data = yaml.safe_load(path.read_text())
    target = cwd / path.relative_to(ROOT) if path.is_relative_to(ROOT) else cwd / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(reduced(data)))
    outcome = invoke("run", str(target.relative_to(cwd)), "-q")
    assert outcome.code == 0, outcome.stdout + outcome.stderr


def check_options(sub: str, words: list[str]) -> None:
    outcome = invoke(sub, "--help")
    assert outcome.code == 0, f"no subcommand {sub!r}"
    for word in words:
        for option in re.findall(r"--[a-z][a-z-]*", word):
            assert option in outcome.stdout, f"`clustersim {sub}` has no option {option}"


def run_python_in_process(args: list[str], cwd: Path) -> None:
    """``python -c CODE`` or ``python -m MODULE ARGS`` in this process (no interpreter start-up),
    in ``cwd``; a non-zero exit fails."""
    import os
    import runpy

    saved_argv, saved_cwd = sys.argv, os.getcwd()
    os.chdir(cwd)
    try:
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            exec(compile(args[1], "<snippet>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = [args[1], *args[2:]]
            with warnings.catch_warnings():  # "found in sys.modules": imported by earlier tests
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        assert exc.code in (0, None), f"python {' '.join(args)} exited {exc.code}"
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)


def check_command(command: str, cwd: Path) -> None:
    words = shlex.split(command)
    if words[:2] == ["pip", "install"]:
        extras = re.search(r"\[([\w,]+)\]", command).group(1).split(",")
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]
        assert set(extras) <= set(declared), extras
    elif words[:4] == ["python", "-m", "pytest", "-q"]:
        pass  # this suite
    elif words[0] == "clustersim":
        sub = words[1] if len(words) > 1 else "run"
        # validate --published simulates whole published runs; its own tests run it
        if _PLACEHOLDER.search(command) or "--quick" in words or "--published" in words:
            check_options(sub, words[2:])
        elif sub == "run":
            path = ROOT / words[2] if len(words) > 2 else ROOT / "clustersim/examples/quickstart.yaml"
            check_experiment(path, cwd)
        else:
            outcome = invoke(*words[1:])
            assert outcome.code == 0, outcome.stdout + outcome.stderr
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        source = (ROOT / words[1]).read_text()  # its argparse options, without running it
        assert "argparse" in source, words[1]
        for option in [w for w in words[2:] if w.startswith("--")]:
            assert f'"{option}"' in source, f"{words[1]} has no option {option}"
    elif words[0] == "python" and words[1] in ("-c", "-m"):
        run_python_in_process(words[1:], cwd)
    else:
        raise AssertionError(f"no rule to run this snippet: {command!r}")


@pytest.mark.parametrize("path, lang, text, line", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, _, _, line in BLOCKS])
def test_snippet_runs(path, lang, text, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("profiles", "traces"):
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    if lang == "yaml":
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "workload" in data:
            experiment = tmp_path / "snippet.yaml"
            experiment.write_text(text)
            check_experiment(experiment, tmp_path)
        return
    if lang not in ("", "bash", "sh", "console"):
        return
    lines = [c for c in commands(text)]
    if lines and not any(c.split()[0] in ("clustersim", "python", "pip") for c in lines):
        return  # a layout drawing, not commands
    for command in lines:
        check_command(command, tmp_path)

"""Bad input gets one clear line (exit 2) or a clear run failure (exit 1), never a traceback,
a hang or a silent success. The regression corpus in tests/data/bad_inputs/ holds the cases of
issue 12; each file's first line says the exit code and a text the one-line error must contain.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cli_contract import check_contract, invoke
from clustersim.ops import Op, OpKind, matmul
from clustersim.units import parse_quantity

CORPUS = Path(__file__).parent / "data" / "bad_inputs"


def _expectation(path: Path) -> tuple[int, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    code, _, text = first.removeprefix("# expect:").strip().partition(" ")
    return int(code), text


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_corpus_case_is_refused_with_one_line_naming_the_key(path, tmp_path):
    code, text = _expectation(path)
    outcome = invoke("run", str(path), "--out", str(tmp_path / "out"))
    check_contract(outcome, path.name)
    assert outcome.code == code, outcome.stdout + outcome.stderr
    if code == 2:
        assert str(path) in outcome.error_lines[0] and text in outcome.error_lines[0]
    else:  # a warning or a run failure, on stderr
        assert text in outcome.stderr


@pytest.mark.parametrize("text", ["-80 GiB", "nan GiB", "1e400 B", "inf B", "9**9**9 B",
                                  float("nan"), float("inf"), -1.0])
def test_parse_quantity_refuses_negative_and_non_finite(text):
    with pytest.raises(ValueError):
        parse_quantity(text, "bytes")


def test_parse_quantity_still_reads_units():
    assert math.isclose(parse_quantity("80 GiB", "bytes"), 80 * 2**30, rel_tol=1e-9)
    assert math.isclose(parse_quantity("400 Gb/s", "bandwidth"), 5e10, rel_tol=1e-9)
    assert parse_quantity(0, "time") == 0.0
    # YAML 1.1 reads 1e6 without a dot as text: still a bare number in the base unit
    assert math.isclose(parse_quantity("1e6", "time"), 1e6, rel_tol=1e-9)


@pytest.mark.parametrize("value", [1e308, "1e308 s", 1e-300, "1e-40 s"])
def test_parse_quantity_refuses_magnitudes_that_overflow_event_times(value):
    with pytest.raises(ValueError, match="out of range"):
        parse_quantity(value, "time")


@pytest.mark.parametrize("flops", [float("nan"), float("inf"), -1.0])
def test_op_refuses_non_finite_or_negative_flops(flops):
    with pytest.raises(ValueError, match="flops"):
        Op(OpKind.MATMUL, flops=flops)


def test_op_refuses_negative_shape_and_matmul_negative_size():
    with pytest.raises(ValueError, match="shape"):
        Op(OpKind.MATMUL, flops=1.0, shape=(1, -5, 4, 4))
    with pytest.raises(ValueError, match="m must be"):
        matmul(-5, 4, 4)
    with pytest.raises(ValueError, match="k must be"):
        matmul(4, 4, float("nan"))

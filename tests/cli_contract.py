"""The CLI's contract for bad input, checked by the bad-input and fuzz tests.

``clustersim run FILE`` exits 0, 1 or 2; prints no traceback without ``--debug``; prints exactly
one line on exit 2. Runs in-process through typer's CliRunner (no interpreter start-up), so a
few hundred cases take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from typer.testing import CliRunner

from clustersim import cli

RUNNER = CliRunner()


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def invoke(*args: str) -> Outcome:
    cli._state["debug"] = False
    result = RUNNER.invoke(cli.app, list(args), catch_exceptions=True)
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exception)


def check_contract(outcome: Outcome, what: str) -> None:
    """Exit 0/1/2, no traceback, one line for exit 2."""
    assert outcome.exception is None, f"{what}: uncaught {outcome.exception!r}"
    assert outcome.code in (0, 1, 2), f"{what}: exit {outcome.code}"
    text = outcome.stdout + outcome.stderr
    assert "Traceback" not in text, f"{what}: traceback printed:\n{text[-2000:]}"
    if outcome.code == 2:
        assert len(outcome.error_lines) == 1, f"{what}: exit 2 with {outcome.error_lines}"
        assert outcome.error_lines[0].startswith("error: "), f"{what}: {outcome.error_lines}"

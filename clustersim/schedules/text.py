"""Compact text for schedules: ``f0 f1 b0 f2 b1``, one row per stage.

Tokens are ``<kind><microbatch>[c<chunk>]``: ``f`` forward, ``b`` backward (``BW`` fused, or
``B`` when the same row also has the matching ``w``), ``w`` weight gradient, ``s``/``t`` the
vocabulary-parallel output passes, ``if``/``ib`` the input-embedding passes. The chunk suffix is
shown when the schedule has more than one chunk per stage (``f3c1``). ``bw3`` is accepted on
input as an explicit fused backward.

The same text parses back (:func:`parse_rows`), which is how tests write deliberately broken
schedules and how docstrings show orders.
"""

from __future__ import annotations

import re
from typing import Sequence

from clustersim.errors import ScheduleError
from clustersim.schedules.actions import Action, ActionKind
from clustersim.schedules.schedule import Schedule

_TOKEN = re.compile(r"(if|ib|bw|f|b|w|s|t)(\d+)(?:c(\d+))?")
_KINDS = {kind.value: kind for kind in ActionKind}


def render_row(actions: Sequence[Action], *, show_chunk: bool = False) -> str:
    """One stage's actions as ``f0 f1 b0 ...``."""
    return " ".join(action.token(show_chunk=show_chunk) for action in actions)


def rows(schedule: Schedule, *, show_chunk: bool | None = None) -> list[str]:
    """One row of tokens per stage; chunks shown when the schedule has more than one."""
    if show_chunk is None:
        show_chunk = schedule.num_chunks > 1
    return [render_row(row, show_chunk=show_chunk) for row in schedule.actions]


def render(schedule: Schedule, *, show_chunk: bool | None = None) -> str:
    """The whole schedule as labelled rows, e.g. ``stage 0: f0 f1 b0``."""
    width = len(str(schedule.num_stages - 1))
    return "\n".join(f"stage {s:>{width}}: {row}"
                     for s, row in enumerate(rows(schedule, show_chunk=show_chunk)))


def parse_row(stage: int, text: str) -> tuple[Action, ...]:
    """Tokens of one stage back into actions (``b`` resolves to ``B`` if the row has its ``w``)."""
    text = re.sub(r"^\s*stage\s+\d+\s*:", "", text)
    parsed: list[tuple[str, int, int]] = []
    for token in text.split():
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise ScheduleError(f"stage {stage}: cannot read token {token!r}; expected e.g. "
                                f"f3, b3, w3, b3c1, s3, t3, if3, ib3")
        parsed.append((match.group(1), int(match.group(2)), int(match.group(3) or 0)))
    weight_grads = {(mb, chunk) for letters, mb, chunk in parsed if letters == "w"}
    actions = []
    for letters, mb, chunk in parsed:
        if letters == "b":
            kind = ActionKind.B if (mb, chunk) in weight_grads else ActionKind.BW
        else:
            kind = _KINDS[letters]
        actions.append(Action(stage, kind, mb, chunk))
    return tuple(actions)


def parse_rows(text_rows: Sequence[str] | str) -> tuple[tuple[Action, ...], ...]:
    """Rows of tokens (a list, or one string with a line per stage) into per-stage actions."""
    if isinstance(text_rows, str):
        text_rows = [line for line in text_rows.strip().splitlines() if line.strip()]
    return tuple(parse_row(stage, row) for stage, row in enumerate(text_rows))


def schedule_from_text(name: str, text_rows: Sequence[str] | str, *, num_chunks: int = 1,
                       placement: Sequence[int] | None = None, num_microbatches: int | None = None,
                       pipelines: Sequence[Sequence[int]] | None = None,
                       microbatch_pipeline: Sequence[int] | None = None,
                       vocab_algorithm: int | None = None) -> Schedule:
    """A :class:`Schedule` from text rows. Placement defaults to Megatron's interleaved one."""
    actions = parse_rows(text_rows)
    p = len(actions)
    if placement is None:
        placement = tuple(k % p for k in range(p * num_chunks))
    if num_microbatches is None:
        num_microbatches = 1 + max((a.microbatch for row in actions for a in row), default=0)
    return Schedule(name, p, num_microbatches, num_chunks, tuple(placement), actions,
                    None if pipelines is None else tuple(map(tuple, pipelines)),
                    None if microbatch_pipeline is None else tuple(microbatch_pipeline),
                    vocab_algorithm)

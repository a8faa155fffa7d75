"""Schedule generators by name, as YAML experiment files spell them."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from clustersim.gc_pause import gc_paused
from clustersim.schedules.arguments import ScheduleArgumentError
from clustersim.schedules.bitpipe import bitpipe
from clustersim.schedules.gpipe import gpipe
from clustersim.schedules.interleaved import interleaved
from clustersim.schedules.one_f_one_b import one_f_one_b
from clustersim.schedules.schedule import Schedule
from clustersim.schedules.v_shape import v_half, v_min, v_zb
from clustersim.schedules.validate import validate as validate_schedule
from clustersim.schedules.vocab_parallel import vocab_1f1b, vocab_v_half
from clustersim.schedules.zero_bubble import zb_h1, zb_h2

Generator = Callable[..., Schedule]

SCHEDULES: dict[str, Generator] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
    "interleaved": interleaved,
    "zb-h1": zb_h1,
    "zb-h2": zb_h2,
    "v-min": v_min,
    "v-half": v_half,
    "v-zb": v_zb,
    "bitpipe": bitpipe,
    "vocab-1f1b": vocab_1f1b,
    "vocab-v-half": vocab_v_half,
}
"""Name -> generator ``(p, m, v=..., **options) -> Schedule``."""


def _generator(name: str) -> Generator:
    key = name.strip().lower().replace("_", "-")
    if key in SCHEDULES:
        return SCHEDULES[key]
    close = difflib.get_close_matches(key, list(SCHEDULES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ScheduleArgumentError(f"unknown schedule {name!r}{hint} Valid names: "
                                f"{', '.join(sorted(SCHEDULES))}")


def make_schedule(name: str, p: int, m: int, v: int | None = None, *, validate: bool = True,
                  **options: Any) -> Schedule:
    """Generate schedule ``name`` for ``p`` stages and ``m`` micro-batches, validated.

    ``v`` (model chunks per stage) defaults to the generator's own default (1 for GPipe, 1F1B
    and ZB-H1/H2, 2 for interleaved and the V-shapes, 4 for BitPipe). ``options`` are the
    generator's keyword options (e.g. ``algorithm=1`` for the vocabulary schedules).
    Schedules are immutable data, so each distinct request is generated and proven once per
    process (a sweep checks thousands of points that share a handful of schedules).
    """
    return _make_schedule(name, p, m, v, validate, options)


def _make_schedule(name: str, p: int, m: int, v: int | None, validate: bool,
                   options: dict[str, Any]) -> Schedule:
    generator = _generator(name)
    accepted = [param for param in inspect.signature(generator).parameters
                if param not in ("p", "m", "v")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ScheduleArgumentError(f"schedule {name!r} does not take {', '.join(unknown)}; "
                                    f"it takes: {', '.join(accepted) or 'no options'}")
    try:
        # Types too: True == 1 and 2.0 == 2 must not hit a schedule cached for a valid int.
        key = (generator, p, m, v, tuple(sorted(options.items())),
               tuple(type(x) for x in (p, m, v, *options.values())))
        hash(key)
    except TypeError:  # an unhashable option: build afresh
        key = None
    cached = _CACHE.get(key) if key is not None else None
    if cached is not None and (cached[1] or not validate):
        return cached[0]
    # Building and proving a schedule only allocates (actions, dependencies, the integer
    # graph) and frees nothing cyclic: the collector's passes over a growing heap of hundreds
    # of thousands of objects find nothing, so it waits until the schedule is done.
    with gc_paused():
        schedule = generator(p, m, **options) if v is None else generator(p, m, v, **options)
        if validate:
            validate_schedule(schedule)
    if key is not None:
        # Schedules are immutable: a run that checks its experiment, then compiles and analyses
        # it, builds and proves each one once (the cache keeps the last few).
        _CACHE[key] = (schedule, validate)
        while len(_CACHE) > 16:
            _CACHE.pop(next(iter(_CACHE)))
    return schedule


_CACHE: dict[tuple, tuple[Schedule, bool]] = {}

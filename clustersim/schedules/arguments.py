"""Checks on generator arguments, with errors that say what was expected and what was given."""

from __future__ import annotations

import math

from clustersim.errors import ConfigError, ScheduleError


class ScheduleArgumentError(ScheduleError, ConfigError, ValueError):
    """A schedule cannot be generated for these arguments (unknown name, too few micro-batches).

    Both a :class:`ScheduleError` and a :class:`ConfigError`, so an experiment loader that maps
    configuration errors to exit code 2 catches it with the file and key it knows.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = "schedule"):
        ConfigError.__init__(self, message, file=file, key=key)


def require_positive(schedule: str, **values: int) -> None:
    """Every value a positive int: ``1F1B needs num_microbatches >= 1, got 0``."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleArgumentError(f"{schedule} needs {name} >= 1, got {value!r}")


def require_count(schedule: str, name: str, value: object, minimum: int) -> int:
    """An int (not a bool) >= minimum: ``V-Half needs extra_lifespan >= 0 (an int), got -1``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ScheduleArgumentError(f"{schedule} needs {name} >= {minimum} (an int), got {value!r}")
    return value


def require_real(schedule: str, name: str, value: object, minimum: float) -> float:
    """A finite real number (not a bool) >= minimum: ``V-ZB needs memory_limit >= 1 ..., got nan``."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value < minimum):
        raise ScheduleArgumentError(f"{schedule} needs {name} to be a finite number >= {minimum}, "
                                    f"got {value!r}")
    return float(value)


def require_chunks(schedule: str, v: int, allowed: tuple[int, ...]) -> None:
    """``V-Half needs v = 2 model chunks per stage, got 3``."""
    if v not in allowed:
        wanted = " or ".join(str(a) for a in allowed)
        raise ScheduleArgumentError(
            f"{schedule} needs v = {wanted} model chunk{'s' if allowed != (1,) else ''} per stage, got {v}")


def require_multiple(schedule: str, m: int, unit: int, what: str) -> None:
    """``Interleaved 1F1B needs micro-batches in groups of p = 4 (Megatron), got 6``."""
    if m % unit:
        raise ScheduleArgumentError(
            f"{schedule} needs the number of micro-batches to be a multiple of {what} = {unit}, "
            f"got {m}")


def require_even_stages(schedule: str, p: int) -> None:
    if p % 2:
        raise ScheduleArgumentError(f"{schedule} needs an even number of stages, got {p}")

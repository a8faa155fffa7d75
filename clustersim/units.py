"""Human units in YAML and presets ("80 GiB", "3.35 TB/s", "989 TFLOPS", "2 us") -> SI floats.

Parsing is pint's; this module only adds FLOP and FLOPS and returns plain floats in the base
units the models use internally: seconds, bytes, FLOP, bytes/s, FLOP/s. A bare number is
already in the base unit. Bits are accepted where bytes are expected ("400 Gb/s" -> 5e10 B/s).

Every quantity is a finite, non-negative number: NaN, infinity (".inf", "1e400 B" which
overflows) and negative sizes are refused with the accepted form, since a NaN bandwidth makes
a simulation that never ends and an infinite one makes communication free.
"""

from __future__ import annotations

import functools
import math
import re

_BASE = {
    "time": "second",
    "bytes": "byte",
    "bandwidth": "byte / second",
    "flops": "FLOP",
    "flop_rate": "FLOP / second",
    "frequency": "hertz",
    "power": "watt",
}

# pint reads "TB" as terabyte and "Tb" as terabit, as the datasheets mean them; "FLOPS" in
# vendor sheets is a rate, which we spell out so pint never sees the ambiguous "S".
_FLOPS_RATE = re.compile(r"(?<![A-Za-z])([kMGTPE]?)FLOPS\b|([kMGTPE]?)FLOP/s\b")


@functools.cache
def _registry():
    import pint

    ureg = pint.UnitRegistry()
    ureg.define("FLOP = [flop] = flop")
    return ureg


# Network rates come in bits: "400 Gb/s", "200 Gbps". pint would read "Gb" as gilbert.
_BITS = re.compile(r"(?<![A-Za-z])([kMGTP]i?)b(?:ps\b|(?=/s\b)|\b)")


def _normalise(text: str) -> str:
    text = _FLOPS_RATE.sub(lambda m: f"{m.group(1) or m.group(2) or ''}FLOP/second", text.strip())
    return _BITS.sub(lambda m: f"{m.group(1)}bit" + ("/second" if m.group(0).endswith("ps") else ""), text)


# The forms presets and experiments use ("80 GiB", "3.35 TB/s", "989 TFLOPS", "2 us", "400 Gb/s",
# "1.98 GHz") are read without pint: importing it and building its registry takes about a
# second, most of a newcomer's first run. Anything else goes to pint. The factors are pint's
# definitions (SI and IEC prefixes; bit = byte / 8).
_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_SMALL = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9, "p": 1e-12}
_SIMPLE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                     r"(Ki|[kMGTPE]i?|[munpµ]?)(B|b|bit|s|FLOP|FLOPS|Hz|W)(/s|ps)?\s*$")
_UNIT_KIND = {"B": "bytes", "b": "bytes", "bit": "bytes", "s": "time", "FLOP": "flops",
              "FLOPS": "flop_rate", "Hz": "frequency", "W": "power"}


def _simple_quantity(text: str, kind: str) -> float | None:
    """The value of a plain ``<number> <prefix><unit>[/s]`` quantity of ``kind``, else None."""
    match = _SIMPLE.match(text)
    if match is None:
        return None
    number, prefix, unit, rate = match.groups()
    unit_kind = _UNIT_KIND[unit]
    if rate:
        if unit == "FLOP" and rate == "/s":
            unit_kind = "flop_rate"
        elif unit_kind != "bytes":
            return None
        else:
            unit_kind = "bandwidth"
    if unit == "FLOP" and rate is None and kind == "flop_rate":
        return None
    if unit_kind != kind:
        return None
    if unit == "s":
        factor = _SMALL.get(prefix)
    elif prefix in _SMALL and prefix:
        return None
    else:
        factor = _PREFIX.get(prefix)
    if factor is None:
        return None
    if unit in ("b", "bit"):
        factor = factor / 8
    return float(number) * factor


def parse_quantity(value: float | int | str, kind: str) -> float:
    """Return ``value`` in the base unit of ``kind`` (one of the keys of ``_BASE``).

    Raises ``ValueError`` with the accepted form when the text is not a quantity of that kind,
    or is negative, NaN or infinite.
    """
    magnitude = _parse(value, kind)
    if magnitude < 0:
        raise ValueError(f"must be > 0 (or 0 where allowed), got {value!r}: a {kind} quantity "
                         f"looks like {_EXAMPLES[kind]!r}")
    return magnitude


def _parse(value: float | int | str, kind: str) -> float:
    """``value`` in the base unit of ``kind``, finite, of either sign."""
    if kind not in _BASE:
        raise ValueError(f"unknown quantity kind {kind!r}; expected one of {sorted(_BASE)}")
    example = _EXAMPLES[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a {kind} quantity like {example!r}, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            return _finite(float(value), value, kind)
        except OverflowError:  # an int beyond the float range
            return _finite(math.inf, f"{str(value)[:20]}... ({len(str(value))} digits)", kind)
    text = value.strip()
    try:  # YAML 1.1 reads "1e6" (no dot) as text; a bare number is in the base unit
        return _finite(float(text), value, kind)
    except ValueError as exc:
        if "finite" in str(exc):
            raise
    # pint evaluates arithmetic: "9**9**9 B" would compute for ever, so powers are refused.
    if len(text) > _MAX_TEXT or "**" in text or "^" in text:
        raise ValueError(f"expected a {kind} quantity like {example!r} (a number and a unit, "
                         f"no powers), got {value!r:.80}")
    try:
        simple = _simple_quantity(text, kind)
    except OverflowError:
        simple = math.inf
    if simple is not None:
        return _finite(simple, value, kind)
    ureg = _registry()
    try:
        quantity = ureg.Quantity(_normalise(text))
        magnitude = float(quantity.to(_BASE[kind]).magnitude)
    except Exception as exc:  # noqa: BLE001 — pint's parser raises tokenize, key, type errors...
        raise ValueError(f"expected a {kind} quantity like {example!r}, got {value!r} "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return _finite(magnitude, value, kind)


_MAX_TEXT = 64
_EXAMPLES = {"time": "2 us", "bytes": "80 GiB", "bandwidth": "3.35 TB/s", "flops": "1.2 PFLOP",
             "flop_rate": "989 TFLOPS", "frequency": "1.98 GHz", "power": "700 W"}


# Quantities are 0 or between these magnitudes (in base units): every real figure is (a
# zettabyte is 1e21 B, a year 3e7 s), and sums of event times near 1e308 overflow to inf,
# after which a simulation never ends (found by the fuzz test with a 1e308 s step latency).
MAX_MAGNITUDE, MIN_MAGNITUDE = 1e30, 1e-30


def _finite(magnitude: float, given: object, kind: str) -> float:
    if not math.isfinite(magnitude):
        raise ValueError(f"expected a finite {kind} quantity like {_EXAMPLES[kind]!r}, got "
                         f"{given!r} (NaN and infinity are not sizes)")
    if magnitude and not MIN_MAGNITUDE <= abs(magnitude) <= MAX_MAGNITUDE:
        raise ValueError(f"{given!r:.60} is out of range for a {kind} quantity: expected 0 or a "
                         f"magnitude from {MIN_MAGNITUDE:g} to {MAX_MAGNITUDE:g} base units "
                         f"(like {_EXAMPLES[kind]!r})")
    return magnitude


def _quantity_type(kind: str, *, positive: bool):
    from typing import Annotated

    from pydantic import AfterValidator, BeforeValidator

    def check(value: float) -> float:
        if positive and value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        if not positive and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    return Annotated[float, BeforeValidator(lambda v: _parse(v, kind)),
                     AfterValidator(check)]


# pydantic field types that accept human units in YAML and hold SI floats.
Seconds = _quantity_type("time", positive=False)
PositiveSeconds = _quantity_type("time", positive=True)
Bytes = _quantity_type("bytes", positive=True)
NonNegativeBytes = _quantity_type("bytes", positive=False)
BytesPerSecond = _quantity_type("bandwidth", positive=True)
FlopsPerSecond = _quantity_type("flop_rate", positive=True)

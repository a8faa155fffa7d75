"""Human units in YAML and presets ("80 GiB", "3.35 TB/s", "989 TFLOPS", "2 us") -> SI floats.

Parsing is pint's; this module only adds FLOP and FLOPS and returns plain floats in the base
units the models use internally: seconds, bytes, FLOP, bytes/s, FLOP/s. A bare number is
already in the base unit. Bits are accepted where bytes are expected ("400 Gb/s" -> 5e10 B/s).
"""

from __future__ import annotations

import functools
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
                     r"([kMGTPE]i?|[munpµ]?)(B|b|bit|s|FLOP|FLOPS|Hz|W)(/s|ps)?\s*$")
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

    Raises ``ValueError`` with the accepted form when the text is not a quantity of that kind.
    """
    if kind not in _BASE:
        raise ValueError(f"unknown quantity kind {kind!r}; expected one of {sorted(_BASE)}")
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} quantity, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    simple = _simple_quantity(str(value), kind)
    if simple is not None:
        return simple
    import pint

    ureg = _registry()
    try:
        quantity = ureg.Quantity(_normalise(str(value)))
        return float(quantity.to(_BASE[kind]).magnitude)
    except (pint.errors.PintError, AttributeError, TypeError, ValueError, AssertionError) as exc:
        example = {"time": "2 us", "bytes": "80 GiB", "bandwidth": "3.35 TB/s",
                   "flops": "1.2 PFLOP", "flop_rate": "989 TFLOPS", "frequency": "1.98 GHz",
                   "power": "700 W"}[kind]
        raise ValueError(f"expected a {kind} quantity like {example!r}, got {value!r} ({exc})") from None


def _quantity_type(kind: str, *, positive: bool):
    from typing import Annotated

    from pydantic import AfterValidator, BeforeValidator

    def check(value: float) -> float:
        if positive and value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        if not positive and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    return Annotated[float, BeforeValidator(lambda v: parse_quantity(v, kind)),
                     AfterValidator(check)]


# pydantic field types that accept human units in YAML and hold SI floats.
Seconds = _quantity_type("time", positive=False)
PositiveSeconds = _quantity_type("time", positive=True)
Bytes = _quantity_type("bytes", positive=True)
NonNegativeBytes = _quantity_type("bytes", positive=False)
BytesPerSecond = _quantity_type("bandwidth", positive=True)
FlopsPerSecond = _quantity_type("flop_rate", positive=True)

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

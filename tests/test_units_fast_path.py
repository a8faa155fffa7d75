"""Plain quantities are read without pint, to the same float pint gives."""

import pytest

from clustersim import units

CASES = [("80 GiB", "bytes"), ("3.35 TB/s", "bandwidth"), ("989 TFLOPS", "flop_rate"),
         ("2 us", "time"), ("400 Gb/s", "bandwidth"), ("200 Gbps", "bandwidth"),
         ("1.98 GHz", "frequency"), ("700 W", "power"), ("1.2 PFLOP", "flops"), ("0.5 ms", "time"),
         ("12 ns", "time"), ("1e3 B", "bytes"), ("4 TiB", "bytes"), ("312 TFLOP/s", "flop_rate"),
         ("3.2 Tbps", "bandwidth"), ("25 MHz", "frequency"), ("256 KiB", "bytes")]


@pytest.mark.parametrize("text, kind", CASES)
def test_the_fast_path_gives_pints_value(text, kind):
    fast = units._simple_quantity(text, kind)
    slow = float(units._registry().Quantity(units._normalise(text)).to(units._BASE[kind]).magnitude)
    assert fast == pytest.approx(slow, rel=1e-15)


@pytest.mark.parametrize("text, kind", [("80 GiB", "time"), ("2 us", "bytes"), ("5 mB", "bytes"),
                                        ("1 FLOP", "flop_rate"), ("3 furlong", "time")])
def test_anything_else_is_left_to_pint(text, kind):
    assert units._simple_quantity(text, kind) is None


@pytest.mark.parametrize("text, kind", [("80 GiB", "time"), ("2 us", "bytes"), ("3 furlong", "time")])
def test_pint_still_rejects_the_wrong_kind(text, kind):
    with pytest.raises(ValueError, match=f"expected a {kind} quantity"):
        units.parse_quantity(text, kind)

"""Money: ISO 4217 minor units, explicit rounding modes, exact Fraction rounding, no floats."""

from __future__ import annotations

import inspect
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billow.domain.money import (
    ISO_4217_MINOR_UNITS,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Currency,
    Rounding,
    minor_unit,
    round_money,
)
from billow.errors import ValidationFailed

MODES = [ROUND_HALF_UP, ROUND_HALF_EVEN]


@pytest.mark.parametrize("code,units", [
    ("USD", 2), ("EUR", 2), ("GBP", 2), ("JPY", 0), ("KRW", 0), ("ISK", 0), ("CLP", 0), ("VND", 0),
    ("BHD", 3), ("KWD", 3), ("JOD", 3), ("TND", 3), ("CLF", 4), ("UYW", 4), ("XCG", 2), ("ZWG", 2),
])
def test_iso_4217_minor_units(code: str, units: int) -> None:
    cur = Currency.of(code)
    assert (cur.code, cur.minor_units) == (code, units)
    assert cur.minor_unit == Decimal(1).scaleb(-units)
    assert minor_unit(code) == cur.minor_unit


def test_table_shape() -> None:
    assert len(ISO_4217_MINOR_UNITS) > 150
    assert all(len(c) == 3 and c.isalpha() and c.isupper() for c in ISO_4217_MINOR_UNITS)
    assert set(ISO_4217_MINOR_UNITS.values()) == {0, 2, 3, 4}


@pytest.mark.parametrize("code", ["ZZZ", "usd", "US", "USDX", "", None, 840, "HRK", "SLL"])
def test_unknown_currency_is_a_validation_error_naming_the_field(code: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        Currency.of(code)
    assert info.value.errors[0]["field"] == "currency"
    with pytest.raises(ValidationFailed) as info:
        Currency.of(code, field="plan.currency")
    assert info.value.errors[0]["field"] == "plan.currency"


@pytest.mark.parametrize("code", ["XAU", "XDR", "XTS", "XXX"])
def test_codes_without_minor_unit_are_refused_with_a_reason(code: str) -> None:
    with pytest.raises(ValidationFailed, match="no minor unit"):
        Currency.of(code)


@pytest.mark.parametrize("amount,code,half_up,half_even", [
    ("2.345", "USD", "2.35", "2.34"),
    ("2.355", "USD", "2.36", "2.36"),
    ("-2.345", "USD", "-2.35", "-2.34"),
    ("2.5", "JPY", "3", "2"),
    ("3.5", "JPY", "4", "4"),
    ("1.2345", "BHD", "1.235", "1.234"),
    ("0.00005", "CLF", "0.0001", "0.0000"),
    ("1", "USD", "1.00", "1.00"),
    ("1E+3", "USD", "1000.00", "1000.00"),
    ("-0.004", "USD", "0.00", "0.00"),  # no negative zero on an invoice
    ("12345678901234567890.125", "USD", "12345678901234567890.13", "12345678901234567890.12"),
])
def test_round_money_modes(amount: str, code: str, half_up: str, half_even: str) -> None:
    up = round_money(Decimal(amount), code, ROUND_HALF_UP)
    even = round_money(Decimal(amount), code, ROUND_HALF_EVEN)
    assert str(up) == half_up and str(even) == half_even
    assert isinstance(up, Decimal) and isinstance(even, Decimal)


@pytest.mark.parametrize("value,mode,expected", [
    (Fraction(1, 3), ROUND_HALF_UP, "0.33"),
    (Fraction(2, 3), ROUND_HALF_EVEN, "0.67"),
    (Fraction(1, 200), ROUND_HALF_UP, "0.01"),
    (Fraction(1, 200), ROUND_HALF_EVEN, "0.00"),
    (Fraction(3, 200), ROUND_HALF_EVEN, "0.02"),
    (Fraction(-1, 200), ROUND_HALF_UP, "-0.01"),
    (Fraction(-1, 200), ROUND_HALF_EVEN, "0.00"),
    (Fraction(2100, 31), ROUND_HALF_UP, "67.74"),
])
def test_round_money_of_an_exact_fraction(value: Fraction, mode: Rounding, expected: str) -> None:
    assert str(round_money(value, "USD", mode)) == expected


def test_rounding_mode_is_explicit_and_checked() -> None:
    params = inspect.signature(round_money).parameters
    assert params["rounding"].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        round_money(Decimal(1), "USD")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        round_money(Decimal(1), "USD", "ROUND_DOWN")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.5, 0.1, True, "1.00", None, [1]])
def test_non_decimal_input_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        round_money(bad, "USD", ROUND_HALF_UP)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_non_finite_decimal_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        round_money(Decimal(bad), "USD", ROUND_HALF_UP)


def test_int_is_accepted() -> None:
    assert str(round_money(7, "BHD", ROUND_HALF_EVEN)) == "7.000"


decimals = st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(-(10**30), 10**30), st.integers(0, 12))
codes = st.sampled_from(["USD", "JPY", "BHD", "CLF", "EUR"])


@settings(deadline=None, max_examples=150)
@given(decimals, codes, st.sampled_from(MODES))
def test_round_money_properties(value: Decimal, code: str, mode: Rounding) -> None:
    cur = Currency.of(code)
    rounded = round_money(value, cur, mode)
    assert isinstance(rounded, Decimal)
    assert rounded.as_tuple().exponent == -cur.minor_units
    assert abs(rounded - value) <= cur.minor_unit / 2  # nearest
    assert round_money(rounded, cur, mode) == rounded  # idempotent
    # Decimal.quantize and the integer Fraction path agree digit for digit
    assert round_money(Fraction(value), cur, mode) == rounded


@settings(deadline=None, max_examples=100)
@given(st.integers(-(10**12), 10**12), st.integers(1, 10**6), codes, st.sampled_from(MODES))
def test_fraction_rounding_is_nearest(num: int, den: int, code: str, mode: Rounding) -> None:
    cur = Currency.of(code)
    value = Fraction(num, den)
    rounded = round_money(value, cur, mode)
    assert abs(Fraction(rounded) - value) <= Fraction(cur.minor_unit) / 2

"""Exact decimal arithmetic. Python's default context keeps 28 digits and rounds silently past that;
usage values have up to 38 and sums more, so every Decimal operation that could round runs here, where
rounding raises instead of happening."""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

EXACT = decimal.Context(prec=120, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation, decimal.DivisionByZero])


def exact(op: Callable[..., Decimal], *args: Any) -> Decimal:
    """Run a Decimal method or function in the exact context, e.g. exact(value.normalize)."""
    with decimal.localcontext(EXACT):
        return op(*args)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    with decimal.localcontext(EXACT):
        return sum(values, Decimal(0))


# A number sent as a JSON string: what a JSON number looks like, in ASCII digits (leading zeros allowed). No leading
# "+", no surrounding whitespace, no "_" separators, no digits of other scripts ("١٢", "５"), no "," fractions,
# no ".5" or "5.", no NaN/Infinity: Python's Decimal() takes most of those ("1_000" is 1000 to it), Billow does not.
DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_MAX_TEXT = 400  # characters; a longer numeric string cannot fit any bound used here


def parse_decimal(raw: object, *, int_digits: int | None = None, scale: int | None = None) -> Decimal:
    """The one reader of numbers from request bodies: a JSON number (int, or Decimal as billow.jsonx reads it) or a
    plain ASCII decimal string (DECIMAL_TEXT), as an exact Decimal. With `int_digits`, |value| must be below
    10**int_digits; with `scale`, at most that many decimal places (trailing zeros do not count): refused, never
    rounded. Raises ValueError whose message completes "<field> ..." (e.g. "is not a number: '1_000'"). Runs no
    context arithmetic, so a huge exponent (1e999999999) is "out of range", never a decimal.Overflow."""
    if type(raw) is int and (int_digits is None or -(10**int_digits) < raw < 10**int_digits):
        return Decimal(raw)  # the common JSON integer (ingest, per event): exact, in range, no places to check
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise ValueError("must be a number or a decimal string")
    if isinstance(raw, str):
        if len(raw) > _MAX_TEXT or not DECIMAL_TEXT.fullmatch(raw):
            raise ValueError(f"is not a number (a JSON number or a decimal string such as \"12.5\"): {raw[:64]!r}")
        try:
            value = Decimal(raw)
        except (InvalidOperation, ValueError, OverflowError):  # an exponent beyond what Decimal can represent
            raise ValueError(f"is out of range: {raw[:64]!r}") from None
    else:
        value = Decimal(raw)
    if not value.is_finite():
        raise ValueError("must be finite (NaN and Infinity are refused)")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return Decimal(0)
    if int_digits is not None and value.adjusted() >= int_digits:
        raise ValueError(f"is out of range (|value| must be below 1e{int_digits})")
    if scale is None:
        return value
    zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    if exponent + zeros < -scale:
        raise ValueError(f"has more than {scale} decimal places; round it before sending")
    if exponent < -scale:  # only trailing zeros past `scale`: drop them (1.000...0 -> 1)
        shift = min(zeros, -exponent)
        return Decimal((sign, digits[: len(digits) - shift], exponent + shift))
    if exponent > 0 and int_digits is not None:  # bounded, so write it plainly: 1E+3 -> 1000
        return Decimal((sign, digits + (0,) * exponent, 0))
    return value

"""Money: ISO 4217 currencies and exact rounding to a currency's minor unit.

Rules (DESIGN.md §4): amounts are `Decimal` (or an exact `Fraction`), never `float`; rounding happens only
where a caller asks for it, with the rounding mode passed explicitly (half-up or banker's) — there is no
default mode anywhere in this module.

No ISO 4217 package is installed in the venv (checked: no babel, pycountry, py-moneyed or iso4217), so
the table below is the ISO 4217 "list one" of active codes with their minor units. Codes ISO lists
with minor unit "N.A." (precious metals XAU/XAG/XPD/XPT, bond-market units XBA–XBD, XDR, XSU, XUA, the
test code XTS and the no-currency code XXX) are known but cannot be rounded, so `Currency.of` refuses
them with a message that says why. Withdrawn codes (HRK, SLL, ZWL, CUC, ANG → XCG, …) are unknown.
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final, Literal

from billow.errors import ValidationFailed

__all__ = [
    "ROUND_HALF_EVEN",
    "ROUND_HALF_UP",
    "Currency",
    "Rounding",
    "ISO_4217_MINOR_UNITS",
    "check_amount",
    "check_rounding",
    "minor_unit",
    "round_money",
]

Rounding = Literal["ROUND_HALF_UP", "ROUND_HALF_EVEN"]
# The same strings as decimal.ROUND_HALF_UP / decimal.ROUND_HALF_EVEN, typed as the Literal above.
ROUND_HALF_UP: Final[Rounding] = "ROUND_HALF_UP"  # ties away from zero
ROUND_HALF_EVEN: Final[Rounding] = "ROUND_HALF_EVEN"  # banker's rounding
ROUNDING_MODES: Final = (ROUND_HALF_UP, ROUND_HALF_EVEN)
assert (ROUND_HALF_UP, ROUND_HALF_EVEN) == (decimal.ROUND_HALF_UP, decimal.ROUND_HALF_EVEN)

_ZERO_DIGITS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DIGITS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DIGITS = "CLF UYW"
_TWO_DIGITS = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
    "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL "
    "MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK "
    "PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
_NO_MINOR_UNIT = frozenset("XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS XUA XXX".split())

ISO_4217_MINOR_UNITS: Final[dict[str, int]] = {
    **{c: 0 for c in _ZERO_DIGITS.split()},
    **{c: 2 for c in _TWO_DIGITS.split()},
    **{c: 3 for c in _THREE_DIGITS.split()},
    **{c: 4 for c in _FOUR_DIGITS.split()},
}

_CODE_RE = re.compile(r"^[A-Z]{3}$")

# Rounding context: wide enough that quantize never runs out of digits (usage values carry up to 38
# digits, products up to ~76); rounding to the minor unit is the point, so Inexact/Rounded are not traps.
_ROUND_CTX = decimal.Context(prec=120, traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero])


_bad = ValidationFailed.at


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: its code and how many decimal digits its minor unit has (USD 2, JPY 0, BHD 3)."""

    code: str
    minor_units: int

    @classmethod
    def of(cls, code: object, *, field: str = "currency") -> Currency:
        """Look up an ISO 4217 code; anything else is a ValidationFailed naming `field`."""
        if isinstance(code, Currency):
            return code
        if not isinstance(code, str) or not _CODE_RE.match(code):
            raise _bad(field, "must be a three-letter upper-case ISO 4217 currency code")
        if code in _NO_MINOR_UNIT:
            raise _bad(field, f"{code} has no minor unit in ISO 4217 and cannot be billed")
        units = ISO_4217_MINOR_UNITS.get(code)
        if units is None:
            raise _bad(field, f"unknown ISO 4217 currency code {code!r}")
        return cls(code, units)

    @property
    def minor_unit(self) -> Decimal:
        """The smallest amount, e.g. Decimal('0.01') for USD, Decimal('1') for JPY."""
        return Decimal(1).scaleb(-self.minor_units)


def minor_unit(currency: Currency | str) -> Decimal:
    return Currency.of(currency).minor_unit


def check_rounding(rounding: object) -> str:
    """The rounding mode, checked: ROUND_HALF_UP or ROUND_HALF_EVEN (anything else is a ValueError)."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be ROUND_HALF_UP or ROUND_HALF_EVEN, not {rounding!r}")
    assert isinstance(rounding, str)
    return rounding


def check_amount(value: object, what: str = "amount") -> Decimal | Fraction:
    """Accept Decimal (finite), int or Fraction; refuse float (TypeError) and anything else."""
    if isinstance(value, float):
        raise TypeError(f"{what} must be a Decimal, never a float (got {value!r})")
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a Decimal, not a bool")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be a finite Decimal, got {value}")
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Fraction):
        return value
    raise TypeError(f"{what} must be a Decimal, int or Fraction, not {type(value).__name__}")


def _round_fraction(value: Fraction, places: int, rounding: str) -> Decimal:
    """Exact rounding of a rational number to `places` decimal digits (integer arithmetic only)."""
    scaled = value * (10**places)
    negative = scaled < 0
    num, den = abs(scaled.numerator), scaled.denominator
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and (rounding == ROUND_HALF_UP or q % 2 == 1)):
        q += 1
    result = Decimal(-q if negative else q).scaleb(-places, _ROUND_CTX)
    return result if result != 0 else abs(result)


def round_money(amount: Decimal | int | Fraction, currency: Currency | str, rounding: Rounding) -> Decimal:
    """Round `amount` to the currency's minor unit with the stated mode; the result has exactly that many
    decimal places (USD 12.345 half-up -> Decimal('12.35'), JPY -> whole yen). Floats raise TypeError."""
    value = check_amount(amount)
    cur = Currency.of(currency)
    mode = check_rounding(rounding)
    if isinstance(value, Fraction):
        return _round_fraction(value, cur.minor_units, mode)
    result = value.quantize(cur.minor_unit, rounding=mode, context=_ROUND_CTX)
    return result if result != 0 else abs(result)  # no "-0.00" on invoices

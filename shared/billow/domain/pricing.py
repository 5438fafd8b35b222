"""Prices and rating: price × usage → invoice lines. Pure: no I/O, no clock, no floats.

Price models follow OpenMeter's v1 JSON shapes (`RateCardUsageBasedPrice`: flat, unit, tiered, package,
dynamic; amounts are decimal strings) and its rating pipeline (openmeter/billing/rating/service):

1. usage discount — the first N units of the period are free: cumulative usage x becomes max(0, x - N);
2. the pricer emits detailed lines (graduated: a usage line and a flat-fee line per tier touched;
   volume: the one tier holding the total, its flat fee and its unit line);
3. percentage discount — each line gets round(line amount × p / 100) off;
4. maximum spend — lines are walked in order and whatever pushes the period's running total past the
   maximum is taken off again as a "maximum spend" discount on that line (a negative adjustment);
5. minimum spend — on the last part of a period, a "minimum spend" line tops the period up to the minimum.

Each line carries its exact amount (quantity × unit price) and that amount rounded to the currency's
minor unit with the rounding mode the caller states. Discounts are rounded amounts too, so a line's
`total` and any sum of totals are exact: an invoice total is the sum of its lines, digit for digit.

Flat fees are prorated by the share of the period served (an exact Fraction of microseconds) and the
prorated fee is rounded to the currency's precision at that point (DESIGN.md §7); the full period is
the price itself. Progressive (part-period) billing — `rate_part` — applies to unit, graduated, package
and dynamic prices, never volume or flat: a part is rated from the cumulative usage before and after
it, so graduated tiers continue where the previous part stopped and each tier's flat fee is billed once,
in the part where usage first enters the tier (tier 1's in the period's first part).
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar, Final, Literal, cast

from billow.domain.money import Currency, Rounding, check_amount, check_rounding, round_money
from billow.errors import ValidationFailed
from billow.exact import EXACT, parse_decimal

__all__ = [
    "Discounts",
    "DynamicPrice",
    "FlatPrice",
    "Line",
    "LineDiscount",
    "PackagePrice",
    "Price",
    "PriceTier",
    "TieredPrice",
    "Totals",
    "UnitPrice",
    "discounts_to_json",
    "package_count",
    "parse_discounts",
    "parse_price",
    "price_to_json",
    "prorate",
    "rate",
    "rate_part",
    "splittable",
    "totals",
]

PaymentTerm = Literal["in_advance", "in_arrears"]
TieredMode = Literal["graduated", "volume"]
PAYMENT_TERMS: Final = ("in_advance", "in_arrears")
TIERED_MODES: Final = ("graduated", "volume")
PRICE_TYPES: Final = ("flat", "unit", "tiered", "package", "dynamic")
# OpenMeter's `Numeric`: an arbitrary-precision decimal string.
NUMERIC_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

_ZERO = Decimal(0)
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_MICROSECOND = timedelta(microseconds=1)

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------------------------------------------------
# Validation plumbing: every problem names the JSON field it concerns (camelCase, like the API).


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name:
        return prefix
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _failure(problems: Problems, prefix: str = "") -> ValidationFailed:
    errors = [{"field": _join(prefix, f), "message": m} for f, m in problems]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ValidationFailed(detail, errors)


def _prefixed(exc: ValidationFailed, prefix: str) -> ValidationFailed:
    return _failure([(e["field"], e["message"]) for e in exc.errors], prefix)


_bad = ValidationFailed.at


def _coerce(obj: object, attr: str, optional: bool = False) -> None:
    """Dataclass fields hold Decimals: ints are widened, floats refused (TypeError), other types too."""
    value = getattr(obj, attr)
    if value is None and optional:
        return
    if isinstance(value, float) or isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{type(obj).__name__}.{attr} must be a Decimal, not {type(value).__name__}"
                        + (" (floats are never money)" if isinstance(value, float) else ""))
    if isinstance(value, int):
        object.__setattr__(obj, attr, Decimal(value))


def _finite_nonneg(value: Decimal | None, name: str, problems: Problems) -> bool:
    if value is None:
        return True
    if not value.is_finite():
        problems.append((name, "must be a finite number"))
        return False
    if value < 0:
        problems.append((name, "must not be negative"))
        return False
    return True


def _commitment_problems(minimum: Decimal | None, maximum: Decimal | None, problems: Problems) -> None:
    ok = _finite_nonneg(minimum, "minimumAmount", problems) & _finite_nonneg(maximum, "maximumAmount", problems)
    if ok and minimum is not None and maximum is not None and minimum > maximum:
        problems.append(("minimumAmount", "must not be greater than maximumAmount"))


def _raise_if(problems: Problems) -> None:
    if problems:
        raise _failure(problems)


# ---------------------------------------------------------------------------------------------------------
# Price models


@dataclass(frozen=True, slots=True)
class FlatPrice:
    """A fixed fee per billing period; OpenMeter's default payment term is in advance."""

    amount: Decimal
    payment_term: PaymentTerm = "in_advance"

    type: ClassVar[Literal["flat"]] = "flat"

    def __post_init__(self) -> None:
        _coerce(self, "amount")
        problems: Problems = []
        _finite_nonneg(self.amount, "amount", problems)
        if self.payment_term not in PAYMENT_TERMS:
            problems.append(("paymentTerm", "must be in_advance or in_arrears"))
        _raise_if(problems)


@dataclass(frozen=True, slots=True)
class UnitPrice:
    """amount per unit of usage, with optional minimum/maximum spend commitments."""

    amount: Decimal
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None

    type: ClassVar[Literal["unit"]] = "unit"

    def __post_init__(self) -> None:
        _coerce(self, "amount")
        _coerce(self, "minimum_amount", optional=True)
        _coerce(self, "maximum_amount", optional=True)
        problems: Problems = []
        _finite_nonneg(self.amount, "amount", problems)
        _commitment_problems(self.minimum_amount, self.maximum_amount, problems)
        _raise_if(problems)


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Quantities up to and including `up_to_amount` (None: open-ended) fall into the tier. `flat_price` is
    billed once when usage enters the tier, `unit_price` per unit inside it; at least one is required."""

    up_to_amount: Decimal | None
    flat_price: Decimal | None = None
    unit_price: Decimal | None = None

    def __post_init__(self) -> None:
        _coerce(self, "up_to_amount", optional=True)
        _coerce(self, "flat_price", optional=True)
        _coerce(self, "unit_price", optional=True)


@dataclass(frozen=True, slots=True)
class TieredPrice:
    """Graduated: each tier prices the units inside it. Volume: the tier holding the total prices all units."""

    mode: TieredMode
    tiers: tuple[PriceTier, ...]
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None

    type: ClassVar[Literal["tiered"]] = "tiered"

    def __post_init__(self) -> None:
        if not isinstance(self.tiers, tuple):
            object.__setattr__(self, "tiers", tuple(self.tiers))
        _coerce(self, "minimum_amount", optional=True)
        _coerce(self, "maximum_amount", optional=True)
        problems: Problems = []
        if self.mode not in TIERED_MODES:
            problems.append(("mode", "must be graduated or volume"))
        if not self.tiers:
            problems.append(("tiers", "at least one tier is required"))
        previous: Decimal | None = None
        last = len(self.tiers) - 1
        for i, tier in enumerate(self.tiers):
            name = f"tiers[{i}]"
            if not isinstance(tier, PriceTier):
                raise TypeError(f"TieredPrice.{name} must be a PriceTier, not {type(tier).__name__}")
            if tier.flat_price is None and tier.unit_price is None:
                problems.append((name, "at least one of flatPrice and unitPrice is required"))
            _finite_nonneg(tier.flat_price, f"{name}.flatPrice.amount", problems)
            _finite_nonneg(tier.unit_price, f"{name}.unitPrice.amount", problems)
            up_to = tier.up_to_amount
            if up_to is None:
                if i != last:
                    problems.append((f"{name}.upToAmount", "only the last tier may be open-ended (no upToAmount)"))
                continue
            if not up_to.is_finite():
                problems.append((f"{name}.upToAmount", "must be a finite number"))
                continue
            if i == last:
                problems.append((f"{name}.upToAmount", "the last tier must be open-ended: leave upToAmount out"))
            if up_to <= 0:
                problems.append((f"{name}.upToAmount", "must be greater than 0"))
            elif previous is not None and up_to <= previous:
                # Tiers are contiguous by construction (each starts where the previous one ends), so an
                # overlap or a gap can only show up as an upToAmount that does not increase.
                problems.append((f"{name}.upToAmount",
                                 f"must be greater than the previous tier's upToAmount ({_plain(previous)}): "
                                 "tiers must be in increasing order without overlaps"))
            previous = up_to if previous is None or up_to > previous else previous
        _commitment_problems(self.minimum_amount, self.maximum_amount, problems)
        _raise_if(problems)


@dataclass(frozen=True, slots=True)
class PackagePrice:
    """`amount` per started package of `quantity_per_package` units: packages = ceil(quantity / size)."""

    amount: Decimal
    quantity_per_package: Decimal
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None

    type: ClassVar[Literal["package"]] = "package"

    def __post_init__(self) -> None:
        _coerce(self, "amount")
        _coerce(self, "quantity_per_package")
        _coerce(self, "minimum_amount", optional=True)
        _coerce(self, "maximum_amount", optional=True)
        problems: Problems = []
        _finite_nonneg(self.amount, "amount", problems)
        if not self.quantity_per_package.is_finite() or self.quantity_per_package <= 0:
            problems.append(("quantityPerPackage", "must be greater than 0"))
        _commitment_problems(self.minimum_amount, self.maximum_amount, problems)
        _raise_if(problems)


@dataclass(frozen=True, slots=True)
class DynamicPrice:
    """amount = usage × multiplier, the usage being a cost meter's value (already money)."""

    multiplier: Decimal = _ONE
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None

    type: ClassVar[Literal["dynamic"]] = "dynamic"

    def __post_init__(self) -> None:
        _coerce(self, "multiplier")
        _coerce(self, "minimum_amount", optional=True)
        _coerce(self, "maximum_amount", optional=True)
        problems: Problems = []
        _finite_nonneg(self.multiplier, "multiplier", problems)
        _commitment_problems(self.minimum_amount, self.maximum_amount, problems)
        _raise_if(problems)


Price = FlatPrice | UnitPrice | TieredPrice | PackagePrice | DynamicPrice
UsagePrice = UnitPrice | TieredPrice | PackagePrice | DynamicPrice


@dataclass(frozen=True, slots=True)
class Discounts:
    """OpenMeter `Discounts`: `percentage` (0–100) off every line; `usage_quantity` units free first."""

    percentage: Decimal | None = None
    usage_quantity: Decimal | None = None

    def __post_init__(self) -> None:
        _coerce(self, "percentage", optional=True)
        _coerce(self, "usage_quantity", optional=True)
        problems: Problems = []
        p = self.percentage
        if p is not None and (not p.is_finite() or p < 0 or p > _HUNDRED):
            problems.append(("percentage.percentage", "must be between 0 and 100"))
        q = self.usage_quantity
        if q is not None and (not q.is_finite() or q <= 0):
            problems.append(("usage.quantity", "must be positive"))
        _raise_if(problems)


# ---------------------------------------------------------------------------------------------------------
# JSON (OpenMeter shapes)


def _plain(value: Decimal) -> str:
    """Decimal as an OpenMeter Numeric string: no exponent, no negative zero, scale kept ('0.10' stays)."""
    text = format(value, "f")
    return text[1:] if text.startswith("-") and value == 0 else text


def _numeric(doc: Mapping[str, Any], key: str, problems: Problems, *, required: bool,
             default: Decimal | None = None) -> Decimal | None:
    if key not in doc or doc[key] is None:
        if required:
            problems.append((key, "required"))
        return default
    value = doc[key]
    if isinstance(value, float):
        raise TypeError(f"{key}: got a float; parse JSON with billow.jsonx (numbers as Decimal)")
    if isinstance(value, str) and not NUMERIC_RE.fullmatch(value):
        problems.append((key, "must be a decimal number string such as \"12.50\""))
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        problems.append((key, "must be a finite number"))
        return None
    if isinstance(value, bool) or not isinstance(value, str | Decimal | int):
        problems.append((key, "must be a decimal number string"))
        return None
    try:  # bounded like every amount (Decimal(38, 18)), so 1e999999999 cannot overflow the rating later
        return parse_decimal(value, int_digits=20, scale=18)
    except ValueError:
        problems.append((key, "must be below 1e20 with at most 18 decimal places"))
        return None


def _object(doc: Any, problems: Problems, name: str) -> Mapping[str, Any] | None:
    if not isinstance(doc, Mapping):
        problems.append((name, "must be a JSON object"))
        return None
    return doc


def _sub(problems: Problems, prefix: str) -> Problems:
    return [(_join(prefix, f), m) for f, m in problems]


def _no_commitments_on_flat(doc: Mapping[str, Any], problems: Problems) -> None:
    for key in ("minimumAmount", "maximumAmount"):
        if doc.get(key) is not None:
            problems.append((key, "spend commitments are not supported on flat prices"))


def _parse_tier(doc: Any, i: int, problems: Problems) -> PriceTier | None:
    name = f"tiers[{i}]"
    tier = _object(doc, problems, name)
    if tier is None:
        return None
    inner: Problems = []
    up_to = _numeric(tier, "upToAmount", inner, required=False)
    components: dict[str, Decimal | None] = {}
    for key, kind in (("flatPrice", "flat"), ("unitPrice", "unit")):
        component = tier.get(key)
        if component is None:
            components[key] = None
            continue
        if not isinstance(component, Mapping):
            inner.append((key, "must be a JSON object or null"))
            components[key] = None
            continue
        sub: Problems = []
        if component.get("type", kind) != kind:
            sub.append(("type", f"must be {kind!r}"))
        components[key] = _numeric(component, "amount", sub, required=True)
        inner.extend(_sub(sub, key))
    problems.extend(_sub(inner, name))
    if inner:
        return None
    return PriceTier(up_to, components["flatPrice"], components["unitPrice"])


def parse_price(doc: Any, *, field: str = "price") -> Price:
    """An OpenMeter price object (`{"type": "unit", "amount": "0.10", ...}`) → a validated Price.
    Every problem is reported at once, each naming its field under `field` (e.g. price.tiers[1].upToAmount)."""
    problems: Problems = []
    obj = _object(doc, problems, "")
    if obj is None:
        raise _failure(problems, field)
    kind = obj.get("type")
    if kind not in PRICE_TYPES:
        raise _failure([("type", f"must be one of {', '.join(PRICE_TYPES)}")], field)
    price: Price | None = None
    try:
        if kind == "flat":
            amount = _numeric(obj, "amount", problems, required=True)
            term = obj.get("paymentTerm", "in_advance")
            if term not in PAYMENT_TERMS:
                problems.append(("paymentTerm", "must be in_advance or in_arrears"))
            _no_commitments_on_flat(obj, problems)
            if not problems and amount is not None:
                price = FlatPrice(amount, cast(PaymentTerm, term))
        else:
            minimum = _numeric(obj, "minimumAmount", problems, required=False)
            maximum = _numeric(obj, "maximumAmount", problems, required=False)
            if kind == "unit":
                amount = _numeric(obj, "amount", problems, required=True)
                if not problems and amount is not None:
                    price = UnitPrice(amount, minimum, maximum)
            elif kind == "package":
                amount = _numeric(obj, "amount", problems, required=True)
                size = _numeric(obj, "quantityPerPackage", problems, required=True)
                if not problems and amount is not None and size is not None:
                    price = PackagePrice(amount, size, minimum, maximum)
            elif kind == "dynamic":
                multiplier = _numeric(obj, "multiplier", problems, required=False, default=_ONE)
                if not problems and multiplier is not None:
                    price = DynamicPrice(multiplier, minimum, maximum)
            else:
                mode = obj.get("mode")
                if mode not in TIERED_MODES:
                    problems.append(("mode", "must be graduated or volume"))
                raw_tiers = obj.get("tiers")
                tiers: list[PriceTier | None] = []
                if not isinstance(raw_tiers, list) or not raw_tiers:
                    problems.append(("tiers", "must be a non-empty list of tiers"))
                else:
                    tiers = [_parse_tier(t, i, problems) for i, t in enumerate(raw_tiers)]
                if not problems:
                    price = TieredPrice(cast(TieredMode, mode), tuple(t for t in tiers if t is not None),
                                        minimum, maximum)
    except ValidationFailed as exc:
        raise _prefixed(exc, field) from None
    if problems or price is None:
        raise _failure(problems, field)
    return price


def price_to_json(price: Price) -> dict[str, Any]:
    """A Price → its OpenMeter JSON shape, amounts as decimal strings."""
    out: dict[str, Any] = {"type": price.type}
    if isinstance(price, FlatPrice):
        out["amount"] = _plain(price.amount)
        out["paymentTerm"] = price.payment_term
        return out
    if isinstance(price, UnitPrice):
        out["amount"] = _plain(price.amount)
    elif isinstance(price, PackagePrice):
        out["amount"] = _plain(price.amount)
        out["quantityPerPackage"] = _plain(price.quantity_per_package)
    elif isinstance(price, DynamicPrice):
        out["multiplier"] = _plain(price.multiplier)
    else:
        out["mode"] = price.mode
        tiers: list[dict[str, Any]] = []
        for tier in price.tiers:
            t: dict[str, Any] = {}
            if tier.up_to_amount is not None:
                t["upToAmount"] = _plain(tier.up_to_amount)
            t["flatPrice"] = None if tier.flat_price is None else {"type": "flat", "amount": _plain(tier.flat_price)}
            t["unitPrice"] = None if tier.unit_price is None else {"type": "unit", "amount": _plain(tier.unit_price)}
            tiers.append(t)
        out["tiers"] = tiers
    if price.minimum_amount is not None:
        out["minimumAmount"] = _plain(price.minimum_amount)
    if price.maximum_amount is not None:
        out["maximumAmount"] = _plain(price.maximum_amount)
    return out


def parse_discounts(doc: Any, *, field: str = "discounts") -> Discounts:
    """OpenMeter `Discounts`: {"percentage": {"percentage": 10}, "usage": {"quantity": "100"}}. The
    percentage is a JSON number in the spec (read as Decimal by billow.jsonx); a decimal string is accepted."""
    if doc is None:
        return Discounts()
    problems: Problems = []
    obj = _object(doc, problems, "")
    if obj is None:
        raise _failure(problems, field)
    percentage: Decimal | None = None
    usage: Decimal | None = None
    if obj.get("percentage") is not None:
        inner = _object(obj["percentage"], problems, "percentage")
        if inner is not None:
            sub: Problems = []
            percentage = _numeric(inner, "percentage", sub, required=True)
            problems.extend(_sub(sub, "percentage"))
    if obj.get("usage") is not None:
        inner = _object(obj["usage"], problems, "usage")
        if inner is not None:
            sub = []
            usage = _numeric(inner, "quantity", sub, required=True)
            problems.extend(_sub(sub, "usage"))
    if problems:
        raise _failure(problems, field)
    try:
        return Discounts(percentage, usage)
    except ValidationFailed as exc:
        raise _prefixed(exc, field) from None


def discounts_to_json(discounts: Discounts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if discounts.percentage is not None:
        out["percentage"] = {"percentage": discounts.percentage}  # a JSON number in OpenMeter's spec
    if discounts.usage_quantity is not None:
        out["usage"] = {"quantity": _plain(discounts.usage_quantity)}
    return out


# ---------------------------------------------------------------------------------------------------------
# Lines


LineCategory = Literal["regular", "commitment"]
DiscountReason = Literal["ratecard_percentage", "maximum_spend"]


@dataclass(frozen=True, slots=True)
class LineDiscount:
    """An amount taken off one line (already rounded to the currency; subtracted from the line's total)."""

    reason: DiscountReason
    description: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Line:
    """One detailed invoice line. `amount` = quantity × unit_price exactly; `amount_rounded` is that amount
    rounded to the currency's minor unit with `rounding`; `total` = amount_rounded − discounts (exact)."""

    key: str  # stable per price: one line per key per part (e.g. "graduated-tier-2-usage")
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    amount_rounded: Decimal
    currency: str
    rounding: Rounding
    period_start: datetime
    period_end: datetime
    payment_term: PaymentTerm = "in_arrears"
    category: LineCategory = "regular"
    tier: int | None = None  # 1-based tier number for tiered prices
    proration: Fraction | None = None  # flat fees: the share of the period served, when less than all of it
    discounts: tuple[LineDiscount, ...] = field(default=())

    @property
    def discounts_total(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return sum((d.amount for d in self.discounts), _ZERO)

    @property
    def total(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return self.amount_rounded - self.discounts_total


@dataclass(frozen=True, slots=True)
class Totals:
    amount: Decimal  # sum of the lines' rounded amounts
    discounts: Decimal  # sum of their discounts
    total: Decimal  # amount − discounts = sum of line totals, exactly


def totals(lines: Iterable[Line]) -> Totals:
    """Sums of rounded line amounts: exact, no further rounding."""
    with decimal.localcontext(EXACT):
        amount = discounts = _ZERO
        for line in lines:
            amount += line.amount_rounded
            discounts += line.discounts_total
        return Totals(amount, discounts, amount - discounts)


@dataclass(frozen=True, slots=True)
class _Ctx:
    currency: Currency
    rounding: Rounding
    name: str
    start: datetime
    end: datetime


def _label(ctx: _Ctx, text: str) -> str:
    return f"{ctx.name}: {text}" if ctx.name else text[:1].upper() + text[1:]


def _line(ctx: _Ctx, key: str, text: str, quantity: Decimal, unit_price: Decimal, *, tier: int | None = None,
          payment_term: PaymentTerm = "in_arrears", category: LineCategory = "regular",
          start: datetime | None = None, end: datetime | None = None, proration: Fraction | None = None) -> Line:
    amount = quantity * unit_price  # exact: runs under billow.exact.EXACT (Inexact traps)
    return Line(key=key, description=_label(ctx, text), quantity=quantity, unit_price=unit_price, amount=amount,
                amount_rounded=round_money(amount, ctx.currency, ctx.rounding), currency=ctx.currency.code,
                rounding=ctx.rounding, period_start=start or ctx.start, period_end=end or ctx.end,
                payment_term=payment_term, category=category, tier=tier, proration=proration)


def _with_discount(line: Line, discount: LineDiscount) -> Line:
    return replace(line, discounts=(*line.discounts, discount))


# ---------------------------------------------------------------------------------------------------------
# Rating


def package_count(quantity: Decimal, quantity_per_package: Decimal) -> int:
    """Started packages: ceil(quantity / quantity_per_package), exactly (no division rounding)."""
    return math.ceil(Fraction(quantity) / Fraction(quantity_per_package))


def _graduated(price: TieredPrice, before: Decimal, after: Decimal, first: bool, ctx: _Ctx) -> list[Line]:
    lines: list[Line] = []
    lower = _ZERO
    for i, tier in enumerate(price.tiers):
        number = i + 1
        upper = tier.up_to_amount
        lo = max(before, lower)
        hi = after if upper is None else min(after, upper)
        if tier.unit_price is not None and hi > lo:
            lines.append(_line(ctx, f"graduated-tier-{number}-usage", f"usage price for tier {number}",
                               hi - lo, tier.unit_price, tier=number))
        # A tier's flat fee is billed once, in the part where cumulative usage enters the tier; tier 1 is
        # entered at the start of the period (so its fee is due even with no usage, as in OpenMeter).
        entered = first if i == 0 else before <= lower < after
        if tier.flat_price is not None and entered:
            lines.append(_line(ctx, f"graduated-tier-{number}-flat", f"flat price for tier {number}",
                               _ONE, tier.flat_price, tier=number))
        if upper is None or upper >= after:
            break
        lower = upper
    return lines


def _volume_tier(price: TieredPrice, quantity: Decimal) -> int:
    for i, tier in enumerate(price.tiers):
        if tier.up_to_amount is None or quantity <= tier.up_to_amount:
            return i
    raise AssertionError("validated tiered prices end with an open tier")


def _volume(price: TieredPrice, quantity: Decimal, ctx: _Ctx) -> list[Line]:
    index = _volume_tier(price, quantity)
    tier, number = price.tiers[index], index + 1
    lines: list[Line] = []  # OpenMeter's order (VolumeTiered): the flat price, then the unit price; a maximum spend
    # walks the lines in this order
    if tier.flat_price is not None:
        lines.append(_line(ctx, "volume-tier-flat", f"flat price for tier {number}", _ONE, tier.flat_price,
                           tier=number))
    if tier.unit_price is not None and quantity > 0:
        lines.append(_line(ctx, "volume-tier-usage", f"unit price for tier {number}", quantity,
                           tier.unit_price, tier=number))
    return lines


def _usage_lines(price: UsagePrice, before: Decimal, after: Decimal, first: bool, ctx: _Ctx) -> list[Line]:
    if isinstance(price, TieredPrice):
        if price.mode == "graduated":
            return _graduated(price, before, after, first, ctx)
        return _volume(price, after, ctx)
    if isinstance(price, UnitPrice):
        used = after - before
        return [_line(ctx, "unit-usage", "usage in period", used, price.amount)] if used > 0 else []
    if isinstance(price, PackagePrice):
        count = package_count(after, price.quantity_per_package) - package_count(before, price.quantity_per_package)
        if count <= 0:
            return []
        return [_line(ctx, "package-usage", f"usage in period, packages of {_plain(price.quantity_per_package)}",
                      Decimal(count), price.amount)]
    used = after - before
    return [_line(ctx, "dynamic-usage", "usage in period", used, price.multiplier)] if used > 0 else []


def _apply_percentage(lines: list[Line], percentage: Decimal | None, ctx: _Ctx) -> list[Line]:
    if percentage is None or percentage == 0:
        return lines
    out: list[Line] = []
    for line in lines:
        off = round_money(line.amount_rounded * percentage / _HUNDRED, ctx.currency, ctx.rounding)
        out.append(_with_discount(line, LineDiscount("ratecard_percentage", f"{_plain(percentage)}% discount", off))
                   if off > 0 else line)
    return out


def _apply_maximum(lines: list[Line], maximum: Decimal | None, billed_before: Decimal, ctx: _Ctx) -> list[Line]:
    if maximum is None:
        return lines
    cap = round_money(maximum, ctx.currency, ctx.rounding)
    billed = round_money(billed_before, ctx.currency, ctx.rounding)
    text = f"Maximum spend discount for charges over {_plain(cap)}"
    out: list[Line] = []
    for line in lines:
        total = line.total
        if total > 0 and billed + total > cap:
            off = total if billed >= cap else billed + total - cap
            line = _with_discount(line, LineDiscount("maximum_spend", text, off))
        billed += line.total
        out.append(line)
    return out


def _apply_minimum(lines: list[Line], minimum: Decimal | None, billed_before: Decimal, ctx: _Ctx,
                   period_start: datetime, period_end: datetime) -> list[Line]:
    if minimum is None:
        return lines
    billed = round_money(billed_before, ctx.currency, ctx.rounding) + sum((line.total for line in lines), _ZERO)
    floor = round_money(minimum, ctx.currency, ctx.rounding)
    if billed >= floor:
        return lines
    # Billed for the whole period (OpenMeter's MinAmountCommitment), in arrears, as a commitment line.
    return [*lines, _line(ctx, "minimum-spend", "minimum spend", _ONE, floor - billed, category="commitment",
                          start=period_start, end=period_end)]


def _aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return value


def _check_span(period_start: datetime, period_end: datetime, start: datetime, end: datetime,
                names: tuple[str, str]) -> None:
    for value, name in ((period_start, "period_start"), (period_end, "period_end"), (start, names[0]),
                        (end, names[1])):
        _aware(value, name)
    if period_end <= period_start:
        raise _bad("period", "the period must end after it starts")
    if not period_start <= start <= end <= period_end:
        raise _bad(names[0], f"{names[0]}..{names[1]} must lie within the period and not end before it starts")


def _quantity(value: object, name: str) -> Decimal:
    checked = check_amount(value, name)
    if isinstance(checked, Fraction):
        raise TypeError(f"{name} must be a Decimal")
    if checked < 0:
        raise _bad(name, "must not be negative")
    return checked


def billable_usage(metered: Decimal) -> Decimal:
    """A meter's reading as a usage price rates it: below zero (negative values on a SUM meter, e.g. refunds, or a
    LATEST gauge below zero) is no usage. OpenMeter's unit and dynamic pricers bill nothing for a usage that is not
    positive; Billow rates every usage price so (OpenMeter's graduated price fails on it, its package and volume prices
    bill a negative amount), and the rest of the customer's bill is billed as usual."""
    return metered if metered > 0 else _ZERO


def _check_price(price: object) -> Price:
    if not isinstance(price, FlatPrice | UnitPrice | TieredPrice | PackagePrice | DynamicPrice):
        raise TypeError(f"price must be a Price, not {type(price).__name__}")
    return price


def prorate(amount: Decimal, *, period_start: datetime, period_end: datetime, served_start: datetime,
            served_end: datetime, currency: Currency | str, rounding: Rounding) -> tuple[Decimal, Fraction]:
    """(prorated amount, share served): amount × served/period with the share an exact Fraction of
    microseconds, rounded to the currency's precision; the full period returns `amount` itself."""
    _check_span(period_start, period_end, served_start, served_end, ("served_start", "served_end"))
    check_rounding(rounding)
    value = check_amount(amount)
    if isinstance(value, Fraction):
        raise TypeError("amount must be a Decimal")
    share = Fraction((served_end - served_start) // _MICROSECOND, (period_end - period_start) // _MICROSECOND)
    if share == 1:
        return value, share
    return round_money(Fraction(value) * share, currency, rounding), share


def rate(price: Price, quantity: Decimal, *, currency: Currency | str, rounding: Rounding,
         period_start: datetime, period_end: datetime, served_start: datetime | None = None,
         served_end: datetime | None = None, discounts: Discounts | None = None, name: str = "") -> list[Line]:
    """Rate one billing period (or the part of it that was served) in one go.

    Flat prices ignore `quantity` and are prorated by served/period. Usage prices rate `quantity`, the
    usage over the served span, as a whole (tiers are not prorated; commitments apply in full)."""
    price = _check_price(price)
    check_rounding(rounding)
    served_start = period_start if served_start is None else served_start
    served_end = period_end if served_end is None else served_end
    _check_span(period_start, period_end, served_start, served_end, ("served_start", "served_end"))
    cur = Currency.of(currency)
    discounts = discounts or Discounts()
    with decimal.localcontext(EXACT):
        qty = _quantity(quantity, "quantity")
        ctx = _Ctx(cur, rounding, name, served_start, served_end)
        if isinstance(price, FlatPrice):
            if discounts.usage_quantity is not None:
                raise _bad("discounts.usage", "usage discounts do not apply to flat prices")
            unit_price, share = prorate(price.amount, period_start=period_start, period_end=period_end,
                                        served_start=served_start, served_end=served_end, currency=cur,
                                        rounding=rounding)
            partial = share != 1
            line = _line(ctx, "flat", f"flat fee{' (prorated)' if partial else ''}", _ONE, unit_price,
                         payment_term=price.payment_term, proration=share if partial else None)
            return _apply_percentage([line], discounts.percentage, ctx)
        return _rate_usage(price, _ZERO, qty, first=True, last=True, billed_before=_ZERO, discounts=discounts,
                           ctx=ctx, period_start=served_start, period_end=served_end)


def _rate_usage(price: UsagePrice, before: Decimal, after: Decimal, *, first: bool, last: bool,
                billed_before: Decimal, discounts: Discounts, ctx: _Ctx, period_start: datetime,
                period_end: datetime) -> list[Line]:
    free = discounts.usage_quantity
    if free is not None:  # OpenMeter's usage discount: the period's first `free` units count as zero
        before, after = max(_ZERO, before - free), max(_ZERO, after - free)
    lines = _usage_lines(price, before, after, first, ctx)
    lines = _apply_percentage(lines, discounts.percentage, ctx)
    lines = _apply_maximum(lines, price.maximum_amount, billed_before, ctx)
    if last:
        lines = _apply_minimum(lines, price.minimum_amount, billed_before, ctx, period_start, period_end)
    return lines


def splittable(price: Price) -> bool:
    """Whether a price can be billed in parts of its period (`rate_part`): unit, graduated, package and dynamic
    prices (OpenMeter's ProgressiveBillingMeteredPricer); never a flat or a volume tiered one."""
    return isinstance(price, UnitPrice | PackagePrice | DynamicPrice) or (
        isinstance(price, TieredPrice) and price.mode == "graduated")


def rate_part(price: Price, *, usage_before: Decimal, usage_after: Decimal, billed_before: Decimal,
              currency: Currency | str, rounding: Rounding, period_start: datetime, period_end: datetime,
              part_start: datetime, part_end: datetime, discounts: Discounts | None = None,
              name: str = "") -> list[Line]:
    """Progressive billing: rate the part [part_start, part_end) of a period from cumulative usage.

    `usage_before`/`usage_after` are the period's cumulative usage at part_start/part_end; the lines are
    rate(usage_after) − rate(usage_before) line by line (graduated tiers continue where the last part
    stopped; each tier's flat fee lands in the part that enters the tier). `billed_before` is what earlier
    parts of this period billed for this price (the sum of their line totals): maximum spend caps the
    period, and the minimum-spend top-up is added on the period's last part. Only unit, graduated,
    package and dynamic prices can be billed in parts (DESIGN.md §7); a volume price only as one whole part."""
    price = _check_price(price)
    check_rounding(rounding)
    _check_span(period_start, period_end, part_start, part_end, ("part_start", "part_end"))
    first, last = part_start == period_start, part_end == period_end
    if isinstance(price, FlatPrice):
        raise _bad("price.type", "flat prices are not billed progressively; prorate them with rate(served_start=…)")
    if isinstance(price, TieredPrice) and price.mode == "volume" and not (first and last):
        raise _bad("price.mode", "volume tiered prices cannot be billed progressively: rate the whole period")
    cur = Currency.of(currency)
    with decimal.localcontext(EXACT):
        before = _quantity(usage_before, "usageBefore")
        after = _quantity(usage_after, "usageAfter")
        billed = check_amount(billed_before, "billed_before")
        if isinstance(billed, Fraction):
            raise TypeError("billed_before must be a Decimal")
        if after < before:
            raise _bad("usageAfter", "cumulative usage cannot decrease (usageAfter < usageBefore)")
        if first and before != 0:
            raise _bad("usageBefore", "must be 0 for the first part of a period")
        ctx = _Ctx(cur, rounding, name, part_start, part_end)
        return _rate_usage(price, before, after, first=first, last=last, billed_before=billed,
                           discounts=discounts or Discounts(), ctx=ctx, period_start=period_start,
                           period_end=period_end)

"""Rating engine: worked examples (Stripe, OpenMeter), properties (hypothesis) and bad input."""

from __future__ import annotations

import dataclasses
import inspect
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from billow.domain.money import ROUND_HALF_EVEN, ROUND_HALF_UP, Currency, Rounding, round_money
from billow.domain.pricing import (
    Discounts,
    DynamicPrice,
    FlatPrice,
    Line,
    PackagePrice,
    Price,
    PriceTier,
    TieredPrice,
    UnitPrice,
    discounts_to_json,
    package_count,
    parse_discounts,
    parse_price,
    price_to_json,
    prorate,
    rate,
    rate_part,
    totals,
)
from billow.errors import ValidationFailed

D = Decimal
UP = ROUND_HALF_UP
JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


def rate_usd(price: Price, qty: Any, **kw: Any) -> list[Line]:
    kw.setdefault("currency", "USD")
    kw.setdefault("rounding", UP)
    return rate(price, D(qty), period_start=JAN[0], period_end=JAN[1], **kw)


def total(lines: list[Line]) -> Decimal:
    return totals(lines).total


def summary(lines: list[Line]) -> list[tuple[str, str, str, str]]:
    return [(ln.key, str(ln.quantity), str(ln.unit_price), str(ln.total)) for ln in lines]


def field_of(info: pytest.ExceptionInfo[ValidationFailed]) -> list[str]:
    return [e["field"] for e in info.value.errors]


# ---------------------------------------------------------------------------------------------------------
# Worked examples: Stripe
#
# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing — "Typographic" tiers: fonts 1-5 at
# 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD. The page's volume-based table (quantity -> total monthly cost):
# 1 -> 7, 5 -> 35, 6 -> 39, 20 -> 120, 25 -> 150. For graduated pricing the page states that 5 fonts cost
# the same as volume (35 USD) and that each tier's units are priced at that tier's rate and summed; the
# stored copy of the page was cut before its graduated table, so the other graduated figures below are
# that stated rule worked by hand: 6 = 5×7 + 1×6.5 = 41.50; 20 = 35 + 5×6.5 + 10×6 = 127.50; 25 = 157.50.

STRIPE_TIERS = (PriceTier(D(5), unit_price=D(7)), PriceTier(D(10), unit_price=D("6.5")),
                PriceTier(None, unit_price=D(6)))


@pytest.mark.parametrize("qty,expected", [(1, "7.00"), (5, "35.00"), (6, "39.00"), (20, "120.00"), (25, "150.00")])
def test_stripe_volume_example(qty: int, expected: str) -> None:
    lines = rate_usd(TieredPrice("volume", STRIPE_TIERS), qty)
    assert str(total(lines)) == expected
    assert len(lines) == 1 and lines[0].quantity == qty  # the whole quantity at one tier's unit price


@pytest.mark.parametrize("qty,expected,tier_lines", [
    (1, "7.00", [("graduated-tier-1-usage", "1", "7", "7.00")]),
    (5, "35.00", [("graduated-tier-1-usage", "5", "7", "35.00")]),
    (6, "41.50", [("graduated-tier-1-usage", "5", "7", "35.00"), ("graduated-tier-2-usage", "1", "6.5", "6.50")]),
    (20, "127.50", [("graduated-tier-1-usage", "5", "7", "35.00"), ("graduated-tier-2-usage", "5", "6.5", "32.50"),
                    ("graduated-tier-3-usage", "10", "6", "60.00")]),
    (25, "157.50", [("graduated-tier-1-usage", "5", "7", "35.00"), ("graduated-tier-2-usage", "5", "6.5", "32.50"),
                    ("graduated-tier-3-usage", "15", "6", "90.00")]),
])
def test_stripe_graduated_example(qty: int, expected: str, tier_lines: list[tuple[str, ...]]) -> None:
    lines = rate_usd(TieredPrice("graduated", STRIPE_TIERS), qty)
    assert str(total(lines)) == expected
    assert summary(lines) == tier_lines


# ---------------------------------------------------------------------------------------------------------
# Worked examples: OpenMeter's own rating tests
# (openmeterio/openmeter openmeter/billing/rating/service/rate/tieredgraduated_test.go, tieredvolume_test.go)

OM_GRADUATED = (PriceTier(D(5), flat_price=D(100), unit_price=D(0)), PriceTier(D(10), flat_price=D(50)),
                PriceTier(D(15), unit_price=D(5)), PriceTier(None, unit_price=D(1)))
OM_VOLUME = (PriceTier(D(5), flat_price=D(100)), PriceTier(D(10), flat_price=D(150)),
             PriceTier(D(15), unit_price=D(10)), PriceTier(None, unit_price=D(5)))
MID = datetime(2026, 1, 15, tzinfo=UTC)


def part(price: Price, before: Any, after: Any, *, start: datetime = MID, end: datetime = JAN[1],
         billed: Any = 0, **kw: Any) -> list[Line]:
    return rate_part(price, usage_before=D(before), usage_after=D(after), billed_before=D(billed), currency="USD",
                     rounding=UP, period_start=JAN[0], period_end=JAN[1], part_start=start, part_end=end, **kw)


def test_openmeter_graduated_single_period_22_units() -> None:
    lines = rate_usd(TieredPrice("graduated", OM_GRADUATED), 22, name="feature")
    assert summary(lines) == [
        ("graduated-tier-1-usage", "5", "0", "0.00"),
        ("graduated-tier-1-flat", "1", "100", "100.00"),
        ("graduated-tier-2-flat", "1", "50", "50.00"),
        ("graduated-tier-3-usage", "5", "5", "25.00"),
        ("graduated-tier-4-usage", "7", "1", "7.00"),
    ]
    assert lines[1].description == "feature: flat price for tier 1"
    assert total(lines) == D("182.00")


def test_openmeter_graduated_progressive_parts() -> None:
    price = TieredPrice("graduated", OM_GRADUATED)
    # mid period, 7 -> 8 units: inside tier 2 which has only a flat fee, already billed -> no lines
    assert part(price, 7, 8, end=datetime(2026, 1, 20, tzinfo=UTC)) == []
    # 12 -> 22 units: tiers continue where the previous part stopped
    assert summary(part(price, 12, 22)) == [("graduated-tier-3-usage", "3", "5", "15.00"),
                                            ("graduated-tier-4-usage", "7", "1", "7.00")]


def test_graduated_flat_fee_lands_in_the_part_that_enters_the_tier() -> None:
    price = TieredPrice("graduated", OM_GRADUATED)
    first = part(price, 0, 5, start=JAN[0], end=MID)  # ends exactly on tier 1's upper bound
    assert [ln.key for ln in first] == ["graduated-tier-1-usage", "graduated-tier-1-flat"]
    second = part(price, 5, 6)  # the first unit past 5 enters tier 2: its flat fee is billed now
    assert summary(second) == [("graduated-tier-2-flat", "1", "50", "50.00")]
    assert part(price, 5, 5) == []  # no usage past the bound: tier 2 not entered yet


def test_openmeter_graduated_maximum_spend_mid_tier() -> None:
    price = TieredPrice("graduated", OM_GRADUATED, maximum_amount=D(170))
    # previously billed for 12 units: 100 + 50 + 2×5 = 160
    lines = part(price, 12, 22, billed=160, end=datetime(2026, 1, 25, tzinfo=UTC))
    assert [(ln.amount_rounded, ln.discounts_total, ln.total) for ln in lines] == [
        (D("15.00"), D("5.00"), D("10.00")), (D("7.00"), D("7.00"), D("0.00"))]
    assert all(d.reason == "maximum_spend" for ln in lines for d in ln.discounts)
    assert "170" in lines[0].discounts[0].description


def test_openmeter_graduated_minimum_spend_on_last_part() -> None:
    price = TieredPrice("graduated", OM_GRADUATED, minimum_amount=D(1000))
    lines = part(price, 0, 0, billed=100)  # tier 1's flat fee (100) was billed in the first part
    assert summary(lines) == [("minimum-spend", "1", "900.00", "900.00")]
    assert lines[0].category == "commitment" and (lines[0].period_start, lines[0].period_end) == JAN
    # a part that is not the period's last never tops up
    assert part(price, 2, 2, billed=100, end=datetime(2026, 1, 20, tzinfo=UTC)) == []


@pytest.mark.parametrize("qty,expected", [
    (0, [("volume-tier-flat", "1", "100", "100.00")]),
    (3, [("volume-tier-flat", "1", "100", "100.00")]),
    (5, [("volume-tier-flat", "1", "100", "100.00")]),
    (14, [("volume-tier-usage", "14", "10", "140.00")]),
    (15, [("volume-tier-usage", "15", "10", "150.00")]),
    (16, [("volume-tier-usage", "16", "5", "80.00")]),
    (100, [("volume-tier-usage", "100", "5", "500.00")]),
])
def test_openmeter_volume(qty: int, expected: list[tuple[str, ...]]) -> None:
    assert summary(rate_usd(TieredPrice("volume", OM_VOLUME), qty)) == expected


def test_openmeter_volume_minimum_spend() -> None:
    lines = rate_usd(TieredPrice("volume", OM_VOLUME, minimum_amount=D(150)), 0)
    assert summary(lines) == [("volume-tier-flat", "1", "100", "100.00"), ("minimum-spend", "1", "50.00", "50.00")]
    assert rate_usd(TieredPrice("volume", OM_VOLUME, minimum_amount=D(100)), 100)[-1].key == "volume-tier-usage"


def test_volume_tier_flat_price_comes_first_so_a_maximum_spend_cuts_the_unit_line() -> None:
    """OpenMeter's VolumeTiered emits the tier's flat price, then its unit price; the maximum spend walks the lines in
    that order, so the flat price is billed whole and the unit-price line is cut (found by the billing oracle, seed 1:
    a volume tier with a 4.09 flat price under a maximum spend billed the flat price 0.00)."""
    tiers = (PriceTier(D(10), unit_price=D(1)), PriceTier(None, unit_price=D(2), flat_price=D(5)))
    lines = rate_usd(TieredPrice("volume", tiers, maximum_amount=D(30)), 20)
    assert [(ln.key, ln.amount_rounded, ln.total) for ln in lines] == [
        ("volume-tier-flat", D("5.00"), D("5.00")), ("volume-tier-usage", D("40.00"), D("25.00"))]


# ---------------------------------------------------------------------------------------------------------
# Other price types, discounts, commitments, proration


@pytest.mark.parametrize("qty,packages", [(0, 0), (D("0.001"), 1), (1, 1), (1000, 1), (1001, 2), (2500, 3)])
def test_package_price(qty: Any, packages: int) -> None:
    lines = rate_usd(PackagePrice(D(10), D(1000)), qty)
    assert total(lines) == 10 * packages
    assert (lines[0].quantity if lines else 0) == packages


@pytest.mark.parametrize("usage,mode,expected", [
    ("10.005", ROUND_HALF_UP, "10.01"), ("10.005", ROUND_HALF_EVEN, "10.00"), ("12.345", ROUND_HALF_UP, "12.35"),
])
def test_dynamic_price_is_usage_times_multiplier(usage: str, mode: Rounding, expected: str) -> None:
    lines = rate_usd(DynamicPrice(), usage, rounding=mode)
    assert lines[0].amount == D(usage) and str(lines[0].total) == expected
    marked_up = rate_usd(DynamicPrice(D("1.5")), "12.345")
    assert marked_up[0].amount == D("18.5175") and marked_up[0].amount_rounded == D("18.52")


def test_unit_price_sub_cent_rounds_per_line() -> None:
    lines = rate_usd(UnitPrice(D("0.0015")), 333)  # 0.4995 USD
    assert lines[0].amount == D("0.4995") and lines[0].amount_rounded == D("0.50")
    assert rate_usd(UnitPrice(D(1)), 0) == []


def test_percentage_discount_per_line() -> None:
    lines = rate_usd(UnitPrice(D("0.10")), 1234, discounts=Discounts(percentage=D(15)))
    assert lines[0].amount_rounded == D("123.40")
    assert [(d.reason, d.amount) for d in lines[0].discounts] == [("ratecard_percentage", D("18.51"))]
    assert lines[0].total == D("104.89")


def test_usage_discount_makes_first_units_free_even_across_parts() -> None:
    price, free = UnitPrice(D(2)), Discounts(usage_quantity=D(100))
    assert summary(rate_usd(price, 250, discounts=free)) == [("unit-usage", "150", "2", "300.00")]
    assert part(price, 0, 60, start=JAN[0], end=MID, discounts=free) == []
    assert summary(part(price, 60, 250, discounts=free)) == [("unit-usage", "150", "2", "300.00")]


def test_unit_price_commitments() -> None:
    low = rate_usd(UnitPrice(D("0.10"), minimum_amount=D(50)), 100)
    assert summary(low) == [("unit-usage", "100", "0.10", "10.00"), ("minimum-spend", "1", "40.00", "40.00")]
    assert total(low) == D("50.00")
    high = rate_usd(UnitPrice(D("0.10"), maximum_amount=D(5)), 100)
    assert high[0].discounts_total == D("5.00") and total(high) == D("5.00")
    both = rate_usd(UnitPrice(D("0.10"), minimum_amount=D(20), maximum_amount=D(30)), 1000)
    assert total(both) == D("30.00")


def test_flat_fee_proration() -> None:
    full = rate_usd(FlatPrice(D(100)), 0)
    assert summary(full) == [("flat", "1", "100", "100.00")] and full[0].proration is None
    assert full[0].payment_term == "in_advance"
    # served 21 of January's 31 days: 100 × 21/31 = 67.7419… -> 67.74
    partial = rate_usd(FlatPrice(D(100), "in_arrears"), 0, served_start=datetime(2026, 1, 11, tzinfo=UTC))
    assert summary(partial) == [("flat", "1", "67.74", "67.74")]
    assert partial[0].proration == Fraction(21, 31) and partial[0].payment_term == "in_arrears"
    assert (partial[0].period_start, partial[0].period_end) == (datetime(2026, 1, 11, tzinfo=UTC), JAN[1])
    half_feb = rate(FlatPrice(D(100)), D(0), currency="USD", rounding=UP, period_start=FEB[0], period_end=FEB[1],
                    served_end=datetime(2026, 2, 15, tzinfo=UTC))
    assert total(half_feb) == D("50.00")
    third, share = prorate(D(1000), period_start=JAN[0], period_end=JAN[0] + timedelta(days=3),
                           served_start=JAN[0], served_end=JAN[0] + timedelta(days=1), currency="JPY", rounding=UP)
    assert (third, share) == (D(333), Fraction(1, 3))


def test_flat_fee_percentage_discount() -> None:
    lines = rate_usd(FlatPrice(D("99.99")), 0, discounts=Discounts(percentage=D(50)))
    assert lines[0].discounts_total == D("50.00") and lines[0].total == D("49.99")  # 49.995 half-up


# ---------------------------------------------------------------------------------------------------------
# JSON shapes


@pytest.mark.parametrize("doc", [
    {"type": "flat", "amount": "100", "paymentTerm": "in_arrears"},
    {"type": "unit", "amount": "0.10", "minimumAmount": "5", "maximumAmount": "1000.00"},
    {"type": "package", "amount": "10", "quantityPerPackage": "1000"},
    {"type": "dynamic", "multiplier": "1.25"},
    {"type": "tiered", "mode": "volume", "tiers": [
        {"upToAmount": "5", "flatPrice": {"type": "flat", "amount": "100"}, "unitPrice": None},
        {"flatPrice": None, "unitPrice": {"type": "unit", "amount": "5"}}]},
])
def test_json_round_trip(doc: dict[str, Any]) -> None:
    price = parse_price(doc)
    assert price_to_json(price) == doc
    assert parse_price(price_to_json(price)) == price


def test_json_defaults() -> None:
    assert parse_price({"type": "flat", "amount": "5"}) == FlatPrice(D(5), "in_advance")
    assert parse_price({"type": "dynamic"}) == DynamicPrice(D(1))
    assert parse_discounts(None) == Discounts()
    d = parse_discounts({"percentage": {"percentage": D("12.5")}, "usage": {"quantity": "100"}})
    assert d == Discounts(D("12.5"), D(100))
    assert discounts_to_json(d) == {"percentage": {"percentage": D("12.5")}, "usage": {"quantity": "100"}}


# ---------------------------------------------------------------------------------------------------------
# Bad input: ValidationFailed naming the field


def tiered(*ups: str | None, mode: str = "graduated") -> dict[str, Any]:
    return {"type": "tiered", "mode": mode,
            "tiers": [{**({"upToAmount": u} if u is not None else {}), "unitPrice": {"type": "unit", "amount": "1"}}
                      for u in ups]}


@pytest.mark.parametrize("doc,fields", [
    (tiered("10", "10", None), ["price.tiers[1].upToAmount"]),  # overlap (duplicate bound)
    (tiered("10", "5", None), ["price.tiers[1].upToAmount"]),  # non-increasing
    (tiered(None, "10", None), ["price.tiers[0].upToAmount"]),  # open tier before the last
    (tiered("10", "20"), ["price.tiers[1].upToAmount"]),  # last tier closed: quantities above it unpriceable
    (tiered("0", None), ["price.tiers[0].upToAmount"]),
    (tiered("abc", None), ["price.tiers[0].upToAmount"]),
    ({"type": "tiered", "mode": "graduated", "tiers": []}, ["price.tiers"]),
    ({"type": "tiered", "mode": "stepped", "tiers": [{"unitPrice": {"amount": "1"}}]}, ["price.mode"]),
    ({"type": "tiered", "mode": "volume", "tiers": [{"flatPrice": None, "unitPrice": None}]}, ["price.tiers[0]"]),
    ({"type": "tiered", "mode": "volume", "tiers": [{"flatPrice": {"amount": "-1"}, "unitPrice": None}]},
     ["price.tiers[0].flatPrice.amount"]),
    ({"type": "unit", "amount": "-0.10"}, ["price.amount"]),
    ({"type": "unit"}, ["price.amount"]),
    ({"type": "unit", "amount": "1e3"}, ["price.amount"]),
    ({"type": "unit", "amount": "1", "minimumAmount": "10", "maximumAmount": "5"}, ["price.minimumAmount"]),
    ({"type": "unit", "amount": "1", "maximumAmount": "-5"}, ["price.maximumAmount"]),
    ({"type": "package", "amount": "10", "quantityPerPackage": "0"}, ["price.quantityPerPackage"]),
    ({"type": "package", "amount": "10"}, ["price.quantityPerPackage"]),
    ({"type": "dynamic", "multiplier": "-1"}, ["price.multiplier"]),
    ({"type": "flat", "amount": "10", "paymentTerm": "monthly"}, ["price.paymentTerm"]),
    ({"type": "flat", "amount": "10", "minimumAmount": "1"}, ["price.minimumAmount"]),
    ({"type": "bogus"}, ["price.type"]),
    ("unit", ["price"]),
])
def test_bad_prices_name_the_field(doc: Any, fields: list[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_price(doc)
    assert field_of(info) == fields
    assert info.value.status == 400


def test_all_problems_reported_at_once_under_a_custom_prefix() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_price(tiered("10", "5", "20"), field="rateCards[2].price")
    assert field_of(info) == ["rateCards[2].price.tiers[1].upToAmount", "rateCards[2].price.tiers[2].upToAmount"]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValidationFailed) as info:
        PackagePrice(D(1), D(0))
    assert field_of(info) == ["quantityPerPackage"]
    with pytest.raises(TypeError):
        UnitPrice(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_price({"type": "unit", "amount": 0.1})


@pytest.mark.parametrize("doc,fields", [
    ({"percentage": {"percentage": 101}}, ["discounts.percentage.percentage"]),
    ({"percentage": {"percentage": "-1"}}, ["discounts.percentage.percentage"]),
    ({"usage": {"quantity": "0"}}, ["discounts.usage.quantity"]),
    ({"usage": {}}, ["discounts.usage.quantity"]),
    ({"usage": "10"}, ["discounts.usage"]),
])
def test_bad_discounts(doc: dict[str, Any], fields: list[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_discounts(doc)
    assert field_of(info) == fields


def test_bad_rating_input() -> None:
    unit = UnitPrice(D(1))
    with pytest.raises(ValidationFailed) as info:
        rate_usd(unit, 1, currency="ABC")
    assert field_of(info) == ["currency"]
    with pytest.raises(ValidationFailed) as info:
        rate_usd(unit, -1)
    assert field_of(info) == ["quantity"]
    with pytest.raises(TypeError):
        rate(unit, 1.5, currency="USD", rounding=UP, period_start=JAN[0], period_end=JAN[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rate_usd(unit, 1, rounding="ROUND_CEILING")
    with pytest.raises(ValueError):
        rate(unit, D(1), currency="USD", rounding=UP, period_start=datetime(2026, 1, 1), period_end=JAN[1])
    with pytest.raises(ValidationFailed) as info:
        rate(unit, D(1), currency="USD", rounding=UP, period_start=JAN[1], period_end=JAN[0])
    assert field_of(info) == ["period"]
    with pytest.raises(ValidationFailed) as info:
        rate_usd(FlatPrice(D(1)), 0, served_start=datetime(2025, 12, 31, tzinfo=UTC))
    assert field_of(info) == ["served_start"]
    with pytest.raises(ValidationFailed) as info:
        rate_usd(FlatPrice(D(1)), 0, discounts=Discounts(usage_quantity=D(1)))
    assert field_of(info) == ["discounts.usage"]


def test_progressive_billing_only_where_openmeter_allows_it() -> None:
    with pytest.raises(ValidationFailed) as info:
        part(TieredPrice("volume", OM_VOLUME), 0, 5)
    assert field_of(info) == ["price.mode"]
    with pytest.raises(ValidationFailed) as info:
        part(FlatPrice(D(1)), 0, 0)
    assert field_of(info) == ["price.type"]
    with pytest.raises(ValidationFailed) as info:
        part(UnitPrice(D(1)), 5, 4)
    assert field_of(info) == ["usageAfter"]
    with pytest.raises(ValidationFailed) as info:
        part(UnitPrice(D(1)), 5, 6, start=JAN[0])
    assert field_of(info) == ["usageBefore"]
    # a volume price "in parts" is fine when the one part is the whole period
    assert total(part(TieredPrice("volume", OM_VOLUME), 0, 16, start=JAN[0])) == D("80.00")


def test_rounding_is_never_defaulted() -> None:
    for fn in (rate, rate_part, prorate, round_money):
        assert inspect.signature(fn).parameters["rounding"].default is inspect.Parameter.empty


# ---------------------------------------------------------------------------------------------------------
# Properties

CODES = ["USD", "JPY", "BHD"]
amounts = st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(0, 10**7), st.integers(0, 4))
quantities = st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(0, 10**6), st.integers(0, 3))
modes = st.sampled_from([ROUND_HALF_UP, ROUND_HALF_EVEN])


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[PriceTier, ...]:
    n = draw(st.integers(1, 5))
    bounds: list[Decimal | None] = []
    upper = D(0)
    for _ in range(n - 1):
        upper += draw(st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(1, 10**5), st.integers(0, 2)))
        bounds.append(upper)
    bounds.append(None)
    tiers = []
    for up in bounds:
        flat, unit = draw(st.one_of(st.none(), amounts)), draw(st.one_of(st.none(), amounts))
        if flat is None and unit is None:
            unit = draw(amounts)
        tiers.append(PriceTier(up, flat, unit))
    return tuple(tiers)


progressive_prices = st.one_of(
    st.builds(UnitPrice, amounts),
    st.builds(lambda t: TieredPrice("graduated", t), tier_lists()),
    st.builds(PackagePrice, amounts, st.builds(lambda n: Decimal(n).scaleb(-1), st.integers(1, 10**5))),
    st.builds(DynamicPrice, amounts),
)
any_price = st.one_of(progressive_prices, st.builds(lambda t: TieredPrice("volume", t), tier_lists()),
                      st.builds(FlatPrice, amounts, st.sampled_from(["in_advance", "in_arrears"])))
periods = st.builds(lambda start, length: (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=start),
                                           datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=start + length)),
                    st.integers(0, 10**7), st.integers(1, 400 * 86400))


def _rate(price: Price, qty: Decimal, code: str, mode: Rounding, **kw: Any) -> list[Line]:
    return rate(price, qty, currency=code, rounding=mode, period_start=JAN[0], period_end=JAN[1], **kw)


@settings(deadline=None, max_examples=100)
@given(tier_lists(), quantities, quantities, st.sampled_from(CODES), modes)
def test_graduated_total_is_monotone(tiers: tuple[PriceTier, ...], a: Decimal, b: Decimal, code: str,
                                     mode: Rounding) -> None:
    lo, hi = sorted((a, b))
    price = TieredPrice("graduated", tiers)
    assert total(_rate(price, lo, code, mode)) <= total(_rate(price, hi, code, mode))


@settings(deadline=None, max_examples=100)
@given(tier_lists(), quantities, st.sampled_from(CODES), modes)
def test_volume_total_uses_the_tier_holding_the_quantity(tiers: tuple[PriceTier, ...], qty: Decimal, code: str,
                                                          mode: Rounding) -> None:
    lower, tier = D(0), tiers[-1]
    for t in tiers:  # the tier whose (lower, upTo] holds qty; qty 0 is in the first tier
        if t.up_to_amount is None or qty <= t.up_to_amount:
            tier = t
            break
        lower = t.up_to_amount
    assert tier.up_to_amount is None or lower < qty or (qty == 0 and tier is tiers[0])
    expected = D(0)
    if tier.unit_price is not None:
        expected += round_money(qty * tier.unit_price, code, mode)
    if tier.flat_price is not None:
        expected += round_money(tier.flat_price, code, mode)
    assert total(_rate(TieredPrice("volume", tiers), qty, code, mode)) == expected


@settings(deadline=None, max_examples=100)
@given(amounts, periods, st.sampled_from(CODES), modes, st.data())
def test_proration(amount: Decimal, period: tuple[datetime, datetime], code: str, mode: Rounding,
                   data: st.DataObject) -> None:
    start, end = period
    kw: Any = {"period_start": start, "period_end": end, "currency": code, "rounding": mode}
    full = rate(FlatPrice(amount), D(0), **kw)
    assert full[0].unit_price == amount and full[0].amount == amount  # the full period is the price, exactly
    assert full[0].amount_rounded == round_money(amount, code, mode)
    cut = start + timedelta(microseconds=data.draw(st.integers(0, (end - start) // timedelta(microseconds=1))))
    first = rate(FlatPrice(amount), D(0), served_end=cut, **kw)
    second = rate(FlatPrice(amount), D(0), served_start=cut, **kw)
    share = first[0].proration or Fraction(1 if cut == end else 0)
    assert share == Fraction((cut - start) // timedelta(microseconds=1), (end - start) // timedelta(microseconds=1))
    # each prorated fee is the exact share rounded once; the two halves lose or gain at most one minor unit
    unit = Currency.of(code).minor_unit
    assert abs(Fraction(first[0].unit_price) - Fraction(amount) * share) <= Fraction(unit) / 2
    assert abs(total(first) + total(second) - full[0].amount_rounded) <= unit


def _by_key(lines: list[Line]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for ln in lines:
        out[ln.key] += ln.quantity
    return dict(out)


def _boundaries(price: Price) -> list[Decimal]:
    """Usage levels where a price changes behaviour: tier bounds, package multiples (cuts land on them)."""
    if isinstance(price, TieredPrice):
        return [t.up_to_amount for t in price.tiers if t.up_to_amount is not None] or [D(1)]
    if isinstance(price, PackagePrice):
        return [price.quantity_per_package * k for k in (1, 2, 3)]
    return [D(1)]


@settings(deadline=None, max_examples=150)
@given(progressive_prices, periods, st.sampled_from(CODES), modes, st.data())
def test_splitting_a_period_neither_creates_nor_loses_money(price: Price, period: tuple[datetime, datetime],
                                                            code: str, mode: Rounding, data: st.DataObject) -> None:
    start, end = period
    micros = (end - start) // timedelta(microseconds=1)
    # cumulative usage at each cut: random levels mixed with the price's own boundaries
    levels = data.draw(st.lists(st.one_of(quantities, st.sampled_from(_boundaries(price))), min_size=1, max_size=4))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, micros - 1), min_size=len(levels) - 1,
                                         max_size=len(levels) - 1)) if micros > 1 else []))
    bounds = [start, *(start + timedelta(microseconds=c) for c in cuts), end]
    cumulative = [D(0), *sorted(levels)]
    assume(len(cumulative) == len(bounds))
    parts: list[Line] = []
    billed = D(0)
    for i in range(len(bounds) - 1):
        lines = rate_part(price, usage_before=cumulative[i], usage_after=cumulative[i + 1], billed_before=billed,
                          currency=code, rounding=mode, period_start=start, period_end=end,
                          part_start=bounds[i], part_end=bounds[i + 1])
        assert all((ln.period_start, ln.period_end) == (bounds[i], bounds[i + 1]) for ln in lines)
        billed += total(lines)
        parts += lines
    whole = rate(price, cumulative[-1], currency=code, rounding=mode, period_start=start,
                 period_end=end)
    # line by line, the parts are rate(after) - rate(before): same keys, quantities and exact amounts
    assert _by_key(parts) == _by_key(whole)
    assert sum((ln.amount for ln in parts), D(0)) == sum((ln.amount for ln in whole), D(0))
    # rounding happens once per line, so the parts differ from the whole by at most half a unit per line
    unit = Currency.of(code).minor_unit
    assert abs(total(parts) - total(whole)) <= unit * (len(parts) + len(whole)) / 2
    assert abs(total(parts) - total(whole)) <= unit * len(parts)


@settings(deadline=None, max_examples=60)
@given(progressive_prices, st.lists(quantities, min_size=1, max_size=4), amounts, amounts, modes)
def test_commitments_hold_across_parts(base: Price, increments: list[Decimal], a: Decimal, b: Decimal,
                                       mode: Rounding) -> None:
    minimum, maximum = sorted((a, b))
    price = dataclasses.replace(base, minimum_amount=minimum, maximum_amount=maximum)  # type: ignore[arg-type]
    n = len(increments)
    bounds = [JAN[0] + (JAN[1] - JAN[0]) * i / n for i in range(n)] + [JAN[1]]
    billed, before = D(0), D(0)
    for i, inc in enumerate(increments):
        lines = rate_part(price, usage_before=before, usage_after=before + inc, billed_before=billed, currency="USD",
                          rounding=mode, period_start=JAN[0], period_end=JAN[1],
                          part_start=bounds[i], part_end=bounds[i + 1])
        billed += total(lines)
        before += inc
        assert billed <= round_money(maximum, "USD", mode)
    assert billed >= round_money(minimum, "USD", mode)


@settings(deadline=None, max_examples=150)
@given(quantities, st.builds(lambda n, e: Decimal(n).scaleb(-e), st.integers(1, 10**6), st.integers(0, 3)))
def test_package_count_is_ceil(qty: Decimal, size: Decimal) -> None:
    n = package_count(qty, size)
    assert isinstance(n, int)
    assert n * size >= qty and (n == 0 or (n - 1) * size < qty)
    assert (n == 0) == (qty == 0)


def _no_floats(value: Any) -> None:
    assert not isinstance(value, float), value
    if isinstance(value, dict):
        for v in value.values():
            _no_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _no_floats(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _no_floats(getattr(value, f.name))


MONEY_FIELDS = ("quantity", "unit_price", "amount", "amount_rounded")


@settings(deadline=None, max_examples=120)
@given(any_price, quantities, st.sampled_from(CODES), modes,
       st.builds(Discounts, st.one_of(st.none(), st.integers(0, 100).map(Decimal))))
def test_totals_are_sums_of_lines_and_nothing_is_a_float(price: Price, qty: Decimal, code: str, mode: Rounding,
                                                         discounts: Discounts) -> None:
    lines = _rate(price, qty, code, mode, discounts=discounts)
    t = totals(lines)
    assert t.amount == sum((ln.amount_rounded for ln in lines), D(0))
    assert t.discounts == sum((d.amount for ln in lines for d in ln.discounts), D(0))
    assert t.total == sum((ln.total for ln in lines), D(0)) == t.amount - t.discounts
    places = Currency.of(code).minor_units
    for ln in lines:
        assert all(type(getattr(ln, f)) is Decimal for f in MONEY_FIELDS)
        assert ln.amount == ln.quantity * ln.unit_price
        assert ln.amount_rounded == round_money(ln.amount, code, mode)
        assert ln.amount_rounded.as_tuple().exponent == -places and ln.rounding == mode
        assert all(type(d.amount) is Decimal and d.amount >= 0 for d in ln.discounts)
        assert ln.total >= 0
    _no_floats(lines)
    doc = price_to_json(price)
    _no_floats(doc)
    assert parse_price(doc) == price

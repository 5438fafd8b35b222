"""Billing numbers against an independent reference: random plans, customers and usage driven through the API only
(the real handlers, with the test clock), every subscription invoice line compared with what OpenMeter's rating
would bill, computed here in exact Decimals from what was sent, never from Billow's answers.

A seed makes a world: plans of random rate cards (flat fees in advance and in arrears, unit, graduated and volume
tiers with flat prices, packages, dynamic prices; minimum and maximum spend; percentage and usage discounts;
features filtered by a group-by value) on a random cadence (P1D, P1W, P2W, P1M) and currency (USD, EUR, JPY, KWD);
customers that subscribe at a random minute (some with a billing anchor before or after it: a cut first period),
may change plan mid-period and may cancel (requested before or after the period's in-advance fee was invoiced);
usage events at random seconds, inside and outside the subscriptions, some sent late (after their period was
invoiced, some past the correction window) and some resent; scheduled billing runs and "invoice now" at random
times; one-off pending lines (0-3 a customer, any price, periods at random seconds). At the end every rate card's
billing period must have been billed, over all invoices, exactly what the reference says, and every one-off line too
(rated by the first run at or after its invoiceAt, over its period in whole minutes; an "invoice now" inside a
usage line's period bills it up to then, progressive billing being the profile's default, and the parts add up to
the line rated whole); a period billed in one
line must have the reference's detailed lines; every invoice's total must be its lines' less prepaid credit; a
further run bills nothing. On SQLite and PostgreSQL (usage in memory) and on SQLite with usage in chdb.

A wide world (make_world(seed, wide=True); the extra seeds' default, BILLOW_ORACLE_WIDE=0 for narrow ones) adds, from
an RNG of its own: monthly cadence in half the worlds, billing anchors on day 29-31 of January or March (periods
clamped to the month's end: Feb 28, Apr 30), usage cards on a COUNT meter (events), a UNIQUE_COUNT meter (distinct
`user` values) and a LATEST meter (the last `level` value in the span; one event a second), negative values (15% of
the SUM meter's and of the LATEST meter's), and an add-on of 1-2 flat fees on every plan that some customers' last
subscription takes at a random minute (quantity 1-3; half of them changed to 0-4 later, "immediate"). From an RNG of
their own again (BILLOW_ORACLE_MORE=0 leaves them out): that add-on also on some subscriptions a plan change ends; a
single-instance add-on "meter" with a usage card (any usage price, discounts, commitments) on a feature no plan
prices, on any subscription (also one ended by a plan change or a cancel, or whose end was asked for already:
Billow takes it, OpenMeter refuses any add-on change on a canceled subscription, 403); an add-on "bundle" of a flat
fee on the plans' key `fee`, offered by the plans whose `fee` it can be laid over (BILLOW_ORACLE_SHARED=0 leaves it
out); in half of the worlds with "meter", plans with a rate card without a price on its feature, which the add-on's
usage price is laid over (BILLOW_ORACLE_UNPRICED=0 leaves them out); 0-3 more "invoice now" runs a customer at random
minutes.

The reference (OpenMeter, openmeter/billing/rating and worker/subscriptionsync):
- amounts are rounded to the currency's minor unit half away from zero (currencyx.RoundToPrecision): each
  detailed line's quantity x unit price, each percentage discount (of the rounded line), the prorated flat fee;
- a flat fee is prorated by served / full period when the period is cut short (proRatingConfig prorate_prices,
  subscriptionEndProrationMode bill_actual_period), rounded; a fee rounding to zero is no line;
- usage prices: the usage discount's free quantity applies in full to a cut period; rating order: usage discount,
  pricer, percentage discount per detailed line, maximum spend, minimum spend (rate/*.go, mutator/*.go); a volume
  tier's flat price comes before its unit price; graduated tier 1's flat price is due even with no usage, a volume
  tier's too;
- usage is the meter's aggregation of the events whose time lies in the served span (whole minutes here), each
  id+source once: SUM, COUNT, UNIQUE_COUNT, LATEST (none: 0);
- month periods are the anchor plus n months, the day clamped to the month's last (AddMonthsNoOverflow, counted from
  the anchor, so Jan 31's periods start Feb 28 then Mar 31);
- an add-on's flat fee is the add-on rate card's amount times the quantity (subscriptionaddon Apply, once an
  instance), prorated over each span of one quantity like a plan's flat fee; a usage card of an add-on (single
  instance) is rated over each span of quantity 1 as a plan's usage card over a cut period (an instance is an item);
- an add-on card on the key of a plan's flat fee is laid over it (addondiff apply): the plan's item is split at the
  instance's bounds, inside it the amount is the plan's plus quantity times the add-on's, with the plan's payment
  term and percentage discount, each part prorated and rounded on its own; over a plan card without a price, the
  add-on's price and usage discount, not its percentage discount (Apply copies prices and usage discounts only);
- a plan change keeps the billing anchor and leaves the add-ons behind (ChangeToPlan creates the next subscription
  from the plan alone: the add-on ends with the subscription).
Where Billow differs on purpose (docs, domain/subscriptions.py, domain/billing.py), the reference follows Billow:
- what changes in a billed period (late usage, a cancel that cuts an in-advance period already invoiced) is billed
  as a correction on a later invoice until CORRECTION_WINDOW after the period ends (OpenMeter leaves an issued
  invoice as it is and reports the drift), so a period's lines over all invoices add up to the reference as of the
  last run inside the window;
- a usage below zero is rated as no usage (pricing.billable_usage): OpenMeter's unit and dynamic prices bill nothing
  for it, but its graduated price fails the line and its package and volume prices bill a negative amount;
- a cut period's minimum and maximum spend are prorated like a flat fee. OpenMeter does not (StateItem.GetExpectedLine
  copies a usage price as it is; shouldProrate is for flat prices only): BILLOW_ORACLE_PRORATE_COMMITMENTS=0 checks
  OpenMeter's rule, and fails wherever a cut period has a commitment.

Seeds: BILLOW_ORACLE_SEEDS=5,6,7 (comma separated) adds seeds to the fixed ones."""

from __future__ import annotations

import calendar
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, harness, on_meta_store
from tests.support.billing import PROFILE, scheduled_run

D = Decimal
ZERO = D(0)
# (seed, wide): a narrow world is the first generator's (SUM meter only, anchors on days <= 28); a wide one adds
# month-end anchors, COUNT / UNIQUE_COUNT / LATEST meters and negative values (BILLOW_ORACLE_WIDE=0: extra seeds narrow)
FIXED_SEEDS = [(1, False), (30, False), (82, False), (24, True), (8, True)]  # 1 and 30 failed before c7add81 (volume
# tier line order), 82 before ed810ac (empty points), 24 (wide) before ea43ee1 (usage below zero), 8 (wide) before
# billed_items (an add-on fee laid over the plan's `fee`: 122 JPY billed, 123 due)
WIDE = os.environ.get("BILLOW_ORACLE_WIDE", "1") == "1"
SEEDS = FIXED_SEEDS + [(int(s), WIDE) for s in os.environ.get("BILLOW_ORACLE_SEEDS", "").split(",") if s.strip()]
# (feature key, the meter's group-by value it counts, None for all)
FEATURES = [("u_a1", "a"), ("u_a2", "a"), ("u_b1", "b"), ("u_b2", "b"), ("u_all1", None), ("u_all2", None)]
# wide worlds' other meters: slug -> (aggregation, value property); their features (key, meter, group-by value)
METERS = {"calls": ("COUNT", None), "users": ("UNIQUE_COUNT", "$.user"), "level": ("LATEST", "$.level")}
WIDE_FEATURES = [("c_a", "calls", "a"), ("c_all", "calls", None), ("q_all", "users", None), ("q_b", "users", "b"),
                 ("l_all", "level", None), ("l_a", "level", "a")]
AGGREGATION = {"tokens": "SUM"} | {slug: agg for slug, (agg, _) in METERS.items()}
USERS = [f"user{i}" for i in range(1, 7)]
CADENCES = ["P1D", "P1W", "P2W", "P1M"]
CURRENCIES = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}  # code: minor unit digits (ISO 4217, as OpenMeter's gobl)
SUBJECTS = ["customer_1", "customer_2"]
CORRECTION_WINDOW = timedelta(days=7)  # Billow: a billed period is re-checked for corrections this long after it ends
PRORATE_COMMITMENTS = os.environ.get("BILLOW_ORACLE_PRORATE_COMMITMENTS", "1") == "1"  # see the module doc
MORE = os.environ.get("BILLOW_ORACLE_MORE", "1") == "1"  # wide worlds: the usage add-on, add-ons ended by a plan change
# or a cancel, random "invoice now" (make_world's more()); 0: wide worlds as before
SHARED = os.environ.get("BILLOW_ORACLE_SHARED", "1") == "1"
UNPRICED = os.environ.get("BILLOW_ORACLE_UNPRICED", "1") == "1"  # wide worlds: plan cards without a price on the
# "meter" add-on's feature, which the add-on's usage price is laid over  # wide worlds: the "bundle" add-on laid over the plans' fee


# -- the reference -------------------------------------------------------------------------------------------
def money(x: Decimal | Fraction, digits: int) -> Decimal:
    """Half away from zero to the currency's minor unit (`digits` decimals), as alpacadecimal's Round."""
    unit = D(1).scaleb(-digits)
    if isinstance(x, Fraction):
        q, r = divmod(abs(x) * 10**digits, 1)
        minor = int(q) + (1 if r >= Fraction(1, 2) else 0)
        return (D(minor) * unit * (1 if x >= 0 else -1)).quantize(unit)
    return x.quantize(unit, rounding=ROUND_HALF_UP)


@dataclass
class Detail:
    """A detailed line: its rounded amount and its discounts (rounded)."""

    name: str
    amount: Decimal
    discount: Decimal = ZERO
    category: str = "regular"

    @property
    def total(self) -> Decimal:
        return self.amount - self.discount


@dataclass
class Card:
    key: str
    kind: str  # flat_advance, flat_arrears, unit, graduated, volume, package, dynamic; "free": usage_based, no price
    price: dict[str, Any] | None
    model: str | None = None  # the group-by value its feature counts (usage cards)
    meter: str = "tokens"  # its feature's meter
    percentage: Decimal | None = None
    free: Decimal | None = None  # usage discount
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    digits: int = 2  # the currency's minor unit

    def money(self, x: Decimal | Fraction) -> Decimal:
        return money(x, self.digits)

    @property
    def usage(self) -> bool:
        return not self.kind.startswith("flat")

    def body(self, cadence: str) -> dict[str, Any]:
        discounts: dict[str, Any] = {}
        if self.percentage is not None:
            discounts["percentage"] = {"percentage": float(self.percentage)}
        if self.free is not None:
            discounts["usage"] = {"quantity": str(self.free)}
        price: dict[str, Any] | None = None if self.price is None else dict(self.price)
        if price is not None and self.minimum is not None:
            price["minimumAmount"] = str(self.minimum)
        if price is not None and self.maximum is not None:
            price["maximumAmount"] = str(self.maximum)
        out: dict[str, Any] = {"type": "usage_based" if self.usage else "flat_fee", "key": self.key, "name": self.key,
                               "billingCadence": cadence, "price": price}
        if self.usage:
            out["featureKey"] = self.key
        if discounts:
            out["discounts"] = discounts
        return out


def rate_usage(card: Card, q: Decimal, share: Fraction) -> list[Detail]:
    """One whole (or cut: `share` of it served) period's usage q, rated as OpenMeter's pricer and mutators do."""
    if card.free is not None:
        q = max(ZERO, q - card.free)
    p = card.price
    out: list[Detail] = []
    if card.kind == "unit":
        if q > 0:
            out.append(Detail("usage", card.money(q * D(p["amount"]))))
    elif card.kind == "dynamic":
        if q > 0:
            out.append(Detail("usage", card.money(q * D(p["multiplier"]))))
    elif card.kind == "package":
        size = D(p["quantityPerPackage"])
        n = math.ceil(Fraction(q) / Fraction(size))
        if n:
            out.append(Detail("usage", card.money(n * D(p["amount"]))))
    elif card.kind == "graduated":
        lower = ZERO
        for i, tier in enumerate(p["tiers"]):
            upper = D(tier["upToAmount"]) if "upToAmount" in tier else None
            if i > 0 and lower >= q:
                break
            hi = q if upper is None else min(q, upper)
            if "unitPrice" in tier:
                out.append(Detail(f"tier {i + 1} usage", card.money((hi - lower) * D(tier["unitPrice"]["amount"]))))
            if "flatPrice" in tier:
                out.append(Detail(f"tier {i + 1} flat", card.money(D(tier["flatPrice"]["amount"]))))
            if upper is None or upper >= q:
                break
            lower = upper
    elif card.kind == "volume":
        for i, tier in enumerate(p["tiers"]):
            if "upToAmount" not in tier or q <= D(tier["upToAmount"]):
                if "flatPrice" in tier:
                    out.append(Detail(f"tier {i + 1} flat", card.money(D(tier["flatPrice"]["amount"]))))
                if "unitPrice" in tier and q != 0:
                    out.append(Detail(f"tier {i + 1} usage", card.money(q * D(tier["unitPrice"]["amount"]))))
                break
    else:
        raise AssertionError(card.kind)
    return commitments(card, discounted(card, out), share)


def discounted(card: Card, lines: list[Detail]) -> list[Detail]:
    if card.percentage is None:
        return lines
    for d in lines:
        d.discount += card.money(d.total * card.percentage / 100)
    return lines


def commitments(card: Card, lines: list[Detail], share: Fraction) -> list[Detail]:
    minimum, maximum = card.minimum, card.maximum
    if PRORATE_COMMITMENTS and share != 1:
        minimum = None if minimum is None else card.money(Fraction(minimum) * share)
        maximum = None if maximum is None else card.money(Fraction(maximum) * share)
    if maximum is not None:
        cap, billed = card.money(maximum), ZERO
        for d in lines:
            total = d.total
            if billed + total > cap:
                d.discount += total if billed >= cap else billed + total - cap
            billed += d.total
    if minimum is not None:
        billed = sum((d.total for d in lines), ZERO)
        if billed < minimum:
            lines.append(Detail("minimum spend", card.money(minimum - billed), category="commitment"))
    return lines


def rate_flat(card: Card, share: Fraction, quantity: int = 1, plus: Decimal = ZERO) -> list[Detail]:
    """A flat fee (an add-on's: times its quantity, OpenMeter's Apply adds the add-on's amount once an instance;
    `plus`: an add-on's amount laid over it), prorated by `share`."""
    amount = D(card.price["amount"]) * quantity + plus
    fee = card.money(amount) if share == 1 else card.money(Fraction(amount) * share)
    return discounted(card, [Detail("flat fee", fee)]) if fee else []


# -- the world a seed makes ----------------------------------------------------------------------------------
def amount(rng: random.Random, lo: int, hi: int, places: int) -> Decimal:
    return D(rng.randint(lo, hi)).scaleb(-places).normalize() + ZERO


def random_price(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "flat_advance" or kind == "flat_arrears":
        return {"type": "flat", "amount": str(amount(rng, 1, 99999, rng.choice([0, 2, 3]))),
                "paymentTerm": "in_advance" if kind == "flat_advance" else "in_arrears"}
    if kind == "unit":
        return {"type": "unit", "amount": str(amount(rng, 1, 50000, rng.choice([2, 3, 4])))}
    if kind == "dynamic":
        return {"type": "dynamic", "multiplier": str(amount(rng, 1, 3000, rng.choice([1, 2, 3])))}
    if kind == "package":
        return {"type": "package", "amount": str(amount(rng, 1, 5000, rng.choice([0, 2, 3]))),
                "quantityPerPackage": str(amount(rng, 1, 500, rng.choice([0, 0, 1])))}
    tiers: list[dict[str, Any]] = []
    bound = ZERO
    for _ in range(rng.randint(1, 3)):
        bound += amount(rng, 1, 4000, rng.choice([0, 1]))
        tiers.append({"upToAmount": str(bound)})
    tiers.append({})
    for tier in tiers:
        has_unit = rng.random() < 0.85
        if has_unit:
            tier["unitPrice"] = {"type": "unit", "amount": str(amount(rng, 0, 3000, rng.choice([2, 3, 4])))}
        if not has_unit or rng.random() < 0.35:
            tier["flatPrice"] = {"type": "flat", "amount": str(amount(rng, 0, 5000, rng.choice([0, 2, 3])))}
    return {"type": "tiered", "mode": kind, "tiers": tiers}


def random_card(rng: random.Random, kind: str, key: str, model: str | None, digits: int, meter: str = "tokens") -> Card:
    card = Card(key, kind, random_price(rng, kind), model, meter, digits=digits)
    if rng.random() < 0.4:
        card.percentage = amount(rng, 1, 1000, 1) if rng.random() < 0.5 else D(rng.randint(1, 100))
    if card.usage:
        if rng.random() < 0.3:
            card.free = amount(rng, 1, 3000, rng.choice([0, 1]))
        if rng.random() < 0.4:
            card.minimum = amount(rng, 1, 20000, rng.choice([0, 2]))
        if rng.random() < 0.3:
            card.maximum = (card.minimum or ZERO) + amount(rng, 1, 30000, rng.choice([0, 2]))
    return card


@dataclass
class Plan:
    key: str
    cadence: str
    currency: str
    cards: list[Card]

    def body(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.key, "currency": self.currency, "billingCadence": self.cadence,
                "phases": [{"key": "p", "name": "P", "rateCards": [c.body(self.cadence) for c in self.cards]}]}


def features(wide: bool) -> list[tuple[str, str, str | None]]:
    """(feature key, meter, group-by value) a world's usage cards draw from."""
    return [(k, "tokens", m) for k, m in FEATURES] + (WIDE_FEATURES if wide else [])


def random_plan(rng: random.Random, key: str, cadence: str, currency: str, wide: bool = False) -> Plan:
    digits = CURRENCIES[currency]
    kinds = ["flat_advance", "flat_arrears", "unit", "graduated", "volume", "package", "dynamic"]
    cards: list[Card] = []
    if rng.random() < 0.7:
        cards.append(random_card(rng, rng.choice(kinds[:2]), "fee", None, digits))
    if rng.random() < 0.3:
        cards.append(random_card(rng, "flat_arrears" if cards and cards[0].kind == "flat_advance" else "flat_advance",
                                 "fee2", None, digits))
    for fkey, meter, model in rng.sample(features(wide), rng.randint(1, 4)):
        cards.append(random_card(rng, rng.choice(kinds[2:]), fkey, model, digits, meter))
    return Plan(key, cadence, currency, cards)


def add_period(t: datetime, cadence: str, n: int) -> datetime:
    """t plus n periods; months as OpenMeter's AddMonthsNoOverflow: the day clamped to the month's last (the n-th
    period of an anchor on the 31st starts on Feb 28, Apr 30, ...: always counted from the anchor)."""
    if cadence == "P1M":
        month = t.month - 1 + n
        year, month = t.year + month // 12, month % 12 + 1
        return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))
    return t + n * {"P1D": timedelta(days=1), "P1W": timedelta(weeks=1), "P2W": timedelta(weeks=2)}[cadence]


@dataclass
class Sub:
    customer: str
    plan: Plan
    start: datetime
    anchor: datetime
    created_at: datetime
    end: datetime | None = None
    end_known_at: datetime | None = None  # when the cancel / change that ends it was requested
    by_change: bool = False  # made by a plan change of the one before
    id: str = ""

    def end_as_of(self, t: datetime) -> datetime | None:
        return self.end if self.end_known_at is not None and self.end_known_at <= t else None


@dataclass
class Event:
    id: str
    subject: str
    time: datetime
    value: Decimal
    model: str
    sends: list[datetime]
    user: str = ""  # wide worlds: the UNIQUE_COUNT meter's value
    level: Decimal = ZERO  # wide worlds: the LATEST meter's value


@dataclass
class World:
    plans: list[Plan]
    subs: list[Sub]
    events: list[Event]
    runs: list[tuple[datetime, str | None]]  # (when, customer for "invoice now" or None for the scheduled run)
    subjects: dict[str, str]  # customer key -> subject
    horizon: datetime
    currency: str
    pending: list[Pending] = field(default_factory=list)
    wide: bool = False
    addons: list[Addon] = field(default_factory=list)  # wide worlds: the add-ons the plans offer
    uses: list[AddonUse] = field(default_factory=list)


@dataclass
class Addon:
    """An add-on: "extra" (multiple instances, 1-2 flat fees of keys of their own), "meter" (single instance, a
    usage card on a feature no plan prices) or "bundle" (multiple instances, a flat fee on the plans' key `fee`: laid
    over the plan's fee where a plan has one, OpenMeter's Apply), offered by the plans in `plans`."""

    key: str
    instance: str
    cards: list[Card]
    plans: list[str]
    id: str = ""


@dataclass
class AddonUse:
    """An add-on on a subscription from `at` (quantity), its quantity changed at `change_at` (to 0-4; a single
    instance's to 0-1), each "immediate", so each is known when it takes effect."""

    sub: Sub
    addon: Addon
    at: datetime
    quantity: int
    change_at: datetime | None = None
    new_quantity: int = 0
    id: str = ""

    def segments(self, as_of: datetime) -> list[tuple[datetime, datetime | None, int]]:
        """(from, to, quantity) as known at as_of."""
        if self.at > as_of:
            return []
        if self.change_at is not None and self.change_at <= as_of:
            return [(self.at, self.change_at, self.quantity), (self.change_at, None, self.new_quantity)]
        return [(self.at, None, self.quantity)]


@dataclass
class Pending:
    """A one-off line (POST /billing/customers/{id}/invoices/pending-lines): rated once, by the first run at or after
    its invoiceAt, over its period truncated to whole minutes (OpenMeter: ResolveBillablePeriod)."""

    customer: str
    name: str
    card: Card
    start: datetime
    end: datetime
    invoice_at: datetime
    created_at: datetime

    def billed_whole_by(self, run: datetime, progressive: bool) -> bool:
        """Whether a run at `run` bills the line (or what is left of it) whole (OpenMeter's gatherInScopeLines and
        ResolveBillablePeriod, in whole minutes): a flat price once its invoiceAt has come; a usage price, under
        progressive billing ("invoice now": the profile's default) once its period has ended, else once its
        invoiceAt has come. An earlier progressive run inside its period bills a part of it (a split line, whose
        parts add up to the line rated whole with the usage this run sees)."""
        at = floor_minute(run)
        if self.card.usage and progressive:
            return floor_minute(self.end) <= at
        return floor_minute(self.invoice_at) <= at

    def body(self, currency: str) -> dict[str, Any]:
        card = self.card.body("P1D")
        rate_card = {k: card[k] for k in ("price", "discounts", "featureKey") if k in card}
        if not self.card.usage:
            rate_card["price"] = {k: v for k, v in rate_card["price"].items() if k != "paymentTerm"}
        return {"currency": currency, "lines": [{
            "type": "usage_based", "name": self.name, "period": {"from": iso(self.start), "to": iso(self.end)},
            "invoiceAt": iso(self.invoice_at), "rateCard": rate_card}]}


def minute_between(rng: random.Random, a: datetime, b: datetime) -> datetime:
    span = int((b - a).total_seconds() // 60)
    return a + timedelta(minutes=rng.randint(1, max(1, span - 1)))


def make_world(seed: int, wide: bool = False) -> World:
    """A seed's world. A wide one draws its extras from an RNG of their own (wrng), so that the narrow world's draws
    stay as they were: half its worlds are monthly, a customer's anchor may be on day 29-31 of January or March,
    its plans' usage cards may count the COUNT / UNIQUE_COUNT / LATEST meters, and some values are negative."""
    rng, wrng = random.Random(seed), random.Random(seed * 7919 + 2)
    cadence = rng.choice(CADENCES)
    if wide and wrng.random() < 0.5:
        cadence = "P1M"
    currency = rng.choice(list(CURRENCIES))
    plans = [random_plan(rng, f"plan{i}", cadence, currency, wide) for i in range(3)]
    start0 = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 20), minutes=rng.randint(0, 1439))
    n = rng.randint(2, 3)
    horizon = add_period(start0 + timedelta(days=2), cadence, n)
    subs: list[Sub] = []
    events: list[Event] = []
    subjects: dict[str, str] = {}
    tails: list[tuple[Sub, datetime]] = []  # each customer's last subscription and the end of its world
    limits: dict[str, datetime] = {}  # each customer's end of its world
    for ci in range(rng.randint(1, 2)):
        customer = f"cust{ci}"
        subjects[customer] = SUBJECTS[ci]
        start = start0 + timedelta(minutes=rng.randint(0, 2000))
        anchor = start  # OpenMeter's default; else a billing anchor before or after the start: a cut first period
        if rng.random() < 0.35:
            anchor = start + timedelta(minutes=rng.randint(-20 * 1440, 5 * 1440))  # a day of month <= 28 (P1M)
        if wide and wrng.random() < 0.5:  # a month-end anchor: periods from Jan 31 start Feb 28, Mar 31, Apr 30
            anchor = datetime(2026, wrng.choice([1, 3]), wrng.choice([29, 30, 31]), wrng.randint(0, 23),
                              wrng.randint(0, 59), tzinfo=UTC)
        first = Sub(customer, rng.choice(plans), start, anchor, start - timedelta(hours=rng.randint(1, 30)))
        subs.append(first)
        last = first
        end_limit = add_period(start, cadence, n)
        if rng.random() < 0.5:  # a plan change at a random minute, requested a little before
            at = minute_between(rng, start, end_limit)
            first.end, first.end_known_at = at, at - timedelta(minutes=rng.choice([0, 0, 5, 600]))
            first.end_known_at = max(first.end_known_at, start)
            last = Sub(customer, rng.choice([p for p in plans if p is not first.plan]), at, anchor, first.end_known_at,
                       by_change=True)
            subs.append(last)
        if rng.random() < 0.5:  # a cancel of the current subscription, requested before it takes effect
            at = minute_between(rng, last.start, end_limit)
            last.end = at
            asked = at - timedelta(minutes=rng.randint(0, int((at - last.start).total_seconds() // 60)))
            last.end_known_at = max(asked, last.created_at, last.start)
        tails.append((last, end_limit))
        limits[customer] = end_limit
        lo, hi = start - timedelta(hours=3), end_limit + timedelta(hours=3)
        times: set[datetime] = set()
        for k in range(rng.randint(4, 30)):
            t = lo + timedelta(seconds=rng.randint(0, int((hi - lo).total_seconds())))
            while wide and t in times:  # a LATEST meter's last value needs one event a second
                t += timedelta(seconds=1)
            times.add(t)
            value = amount(rng, 0, 300000, rng.choice([0, 1, 2, 3]))
            delay = timedelta(seconds=rng.randint(0, 600))
            if rng.random() < 0.2:  # late: after its period was likely invoiced
                delay = timedelta(hours=rng.randint(2, 24 * 20))
            sends = [t + delay]
            if rng.random() < 0.15:
                sends.append(t + delay + timedelta(seconds=rng.randint(0, 3 * 86400)))
            events.append(Event(f"{customer}-e{k}", SUBJECTS[ci], t, value, rng.choice("ab"), sends))
            if wide:
                events[-1].user = wrng.choice(USERS)
                events[-1].level = amount(wrng, 0, 5000, wrng.choice([0, 1])) * (-1 if wrng.random() < 0.15 else 1)
                if wrng.random() < 0.15:  # e.g. a refund sent as negative usage
                    events[-1].value = -events[-1].value
    runs: list[tuple[datetime, str | None]] = []
    for k in range(1, n + 2):
        boundary = add_period(start0, cadence, k)
        runs.append((boundary + timedelta(minutes=rng.randint(1, 4000)), None))
    for _ in range(rng.randint(1, 4)):
        runs.append((minute_between(rng, start0, horizon), rng.choice([None, *subjects])))
    last_send = max(s for e in events for s in e.sends)
    horizon = max(horizon, last_send, *(r for r, _ in runs)) + timedelta(hours=1)
    w = World(plans, subs, events, runs, subjects, horizon, currency, wide=wide)
    if wide and wrng.random() < 0.6:
        addons(wrng, w, tails)
    if wide and MORE:
        more(random.Random(seed * 7919 + 3), w, limits, start0)
    one_off(random.Random(seed * 7919 + 1), w, start0)
    return w


def addons(rng: random.Random, w: World, tails: list[tuple[Sub, datetime]]) -> None:
    """An add-on of 1-2 flat fees (in advance or in arrears, some discounted) offered on every plan; some customers'
    last subscription takes it at a random minute, 1-3 of it, and some change its quantity later."""
    digits = CURRENCIES[w.currency]
    extra = Addon("extra", "multiple", [random_card(rng, rng.choice(["flat_advance", "flat_arrears"]), f"ao{i}", None,
                                                    digits) for i in range(1, rng.randint(1, 2) + 1)],
                  [p.key for p in w.plans])
    w.addons.append(extra)
    for sub, end_limit in tails:
        if rng.random() < 0.3:
            continue
        use(rng, w, extra, sub, end_limit, 3)


def use(rng: random.Random, w: World, addon: Addon, sub: Sub, end_limit: datetime, most: int) -> None:
    """The add-on on the subscription from a random minute (1 to `most` of it), its quantity changed later in half
    of the uses (to 0 to `most` + 1; a single instance's to 0 or 1)."""
    limit = sub.end or end_limit
    one = AddonUse(sub, addon, minute_between(rng, sub.start, limit), rng.randint(1, most))
    if rng.random() < 0.5 and limit - one.at > timedelta(minutes=2):
        one.change_at = minute_between(rng, one.at, limit)
        one.new_quantity = rng.randint(0, most + 1 if addon.instance == "multiple" else 1)
    w.uses.append(one)


def more(rng: random.Random, w: World, limits: dict[str, datetime], start0: datetime) -> None:
    """A wide world's later extras (an RNG of their own): the "meter" add-on (one usage card on a feature no plan
    prices, single instance) and, with BILLOW_ORACLE_SHARED, the "bundle" add-on (a flat fee on key `fee`, offered by
    the plans whose `fee` it can be laid over), each on some subscriptions (any: also one a plan change or a cancel
    ends, or whose end was already asked for); the "extra" add-on also on some subscriptions a plan change ends (it
    does not move to the next plan: OpenMeter's ChangeToPlan creates the next subscription from the plan alone); 0-3
    "invoice now" runs a customer at random minutes."""
    digits = CURRENCIES[w.currency]
    priced = {c.key for p in w.plans for c in p.cards}
    free = [f for f in features(True) if f[0] not in priced]
    if free and rng.random() < 0.7:
        fkey, meter, model = rng.choice(free)
        card = random_card(rng, rng.choice(["unit", "graduated", "volume", "package", "dynamic"]), fkey, model, digits,
                           meter)
        w.addons.append(Addon("meter", "single", [card], [p.key for p in w.plans]))
        frng = random.Random(f"unpriced {fkey} {iso(w.horizon)}")  # the rest of the world stays as it was
        if UNPRICED and frng.random() < 0.5:  # some plans have the feature on a rate card without a price
            for plan in w.plans:
                if frng.random() < 0.6:
                    plan.cards.append(Card(fkey, "free", None, model, meter, digits=digits))
    if SHARED and rng.random() < 0.6:
        card = random_card(rng, rng.choice(["flat_advance", "flat_arrears"]), "fee", None, digits)

        def fits(plan: Plan) -> bool:  # OpenMeter's RateCardWithOverlay: one payment term, one percentage discount
            fee = next((c for c in plan.cards if c.key == "fee"), None)
            return fee is None or (fee.kind == card.kind and None in (fee.percentage, card.percentage))

        w.addons.append(Addon("bundle", "multiple", [card], [p.key for p in w.plans if fits(p)]))
    for addon in w.addons:
        for i, sub in enumerate(w.subs):
            ends_by_change = any(o.by_change and o.customer == sub.customer and o.start == sub.end for o in w.subs[i:])
            if addon.key == "extra" and not ends_by_change:
                continue  # its uses on the last subscriptions are addons()'
            if sub.plan.key in addon.plans and rng.random() < 0.5 and (sub.end or limits[sub.customer]) - sub.start \
                    > timedelta(minutes=3) and not any(u.sub is sub and u.addon is addon for u in w.uses):
                use(rng, w, addon, sub, limits[sub.customer], 1 if addon.instance == "single" else 3)
    for customer in w.subjects:
        for _ in range(rng.randint(0, 3)):
            w.runs.append((minute_between(rng, start0, w.horizon), customer))


def one_off(rng: random.Random, w: World, start0: datetime) -> None:
    """Each customer's one-off lines (an RNG of their own: the rest of a seed's world stays as it was)."""
    kinds = ["flat_arrears", "unit", "graduated", "volume", "package", "dynamic"]
    digits = CURRENCIES[w.currency]
    for customer in w.subjects:
        for i in range(rng.randint(0, 3)):
            fkey, meter, model = rng.choice(features(w.wide))
            card = random_card(rng, rng.choice(kinds), fkey, model, digits, meter)
            start = start0 + timedelta(seconds=rng.randint(-86400, 20 * 86400))
            end = start + timedelta(seconds=rng.randint(60, 10 * 86400))
            invoice_at = end + timedelta(seconds=rng.choice([0, 0, rng.randint(1, 86400)]))
            created = start0 - timedelta(days=1) + timedelta(seconds=rng.randint(0, 10 * 86400))
            w.pending.append(Pending(customer, f"one-off {customer} {i}", card, start, end, invoice_at, created))
    if w.pending:
        w.horizon = max(w.horizon, max(max(p.invoice_at, p.created_at) for p in w.pending) + timedelta(hours=1))


# -- the expected bill ---------------------------------------------------------------------------------------
def periods(sub: Sub, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The subscription's billing periods (its cadence counted from its anchor, either side) up to `until`."""
    k = -60
    while True:
        ps, pe = add_period(sub.anchor, sub.plan.cadence, k), add_period(sub.anchor, sub.plan.cadence, k + 1)
        if ps >= until or (sub.end is not None and ps >= sub.end):
            return
        if pe > sub.start:
            yield ps, pe
        k += 1


def usage(w: World, sub: Sub, card: Card, start: datetime, end: datetime, as_of: datetime) -> Decimal:
    """The card's usage in [start, end) from the events sent by as_of, as its meter aggregates them (an event counts
    once however often it was sent; no event: 0)."""
    subject = w.subjects[sub.customer]
    seen = [e for e in w.events if e.subject == subject and start <= e.time < end and min(e.sends) <= as_of
            and (card.model is None or e.model == card.model)]
    aggregation = AGGREGATION[card.meter]
    if aggregation == "COUNT":
        return D(len(seen))
    if aggregation == "UNIQUE_COUNT":
        return D(len({e.user for e in seen}))
    if aggregation == "LATEST":
        return max(seen, key=lambda e: e.time).level if seen else ZERO
    return sum((e.value for e in seen), ZERO)


def last_look(w: World, customer: str, due: datetime, pe: datetime) -> datetime | None:
    """The run whose view of a point stands: the last run for the customer from the point's due time until
    CORRECTION_WINDOW after its billing period ends, or the first run after it if that one is later."""
    runs = sorted(r for r, who in [*w.runs, (w.horizon, None)] if r >= due and who in (None, customer))
    if not runs:
        return None
    within = [r for r in runs if r <= pe + CORRECTION_WINDOW]
    return within[-1] if within else runs[0]


def served(w: World, sub: Sub, cards: list[Card]) -> Iterator[tuple[Card, datetime, datetime, datetime, datetime,
                                                                     datetime]]:
    """(card, period start, period end, served start, served end, the run whose view stands) for each billing period
    of the subscription and card (served as that run knew the subscription's end)."""
    for ps, pe in periods(sub, w.horizon):
        s = max(ps, sub.start)
        for card in cards:
            due = s if card.kind == "flat_advance" else min(pe, sub.end or pe)
            seen = last_look(w, sub.customer, due, pe)
            if seen is None:
                continue
            end = sub.end_as_of(seen)
            yield card, ps, pe, s, pe if end is None else min(pe, end), seen


def expected(w: World) -> dict[tuple[str, str, str], list[Detail]]:
    """(subscription id, rate card key, billing period start) -> its detailed lines."""
    out: dict[tuple[str, str, str], list[Detail]] = {}
    laid = {(u.sub.id, c.key): u for u in w.uses for c in u.addon.cards  # an add-on card on a plan card's key
            if any(p.key == c.key for p in u.sub.plan.cards)}
    for sub in w.subs:
        for card, ps, pe, s, e, seen in served(w, sub, sub.plan.cards):
            if e <= s:
                continue
            share = Fraction(int((e - s).total_seconds()), int((pe - ps).total_seconds()))
            if card.price is None:  # priced by an add-on laid over it, where it is
                use = laid.get((sub.id, card.key))
                if use is None:
                    continue
                (extra,) = [c for c in use.addon.cards if c.key == card.key]  # Apply: the add-on's price and usage
                lines = per_span(w, use, replace(extra, percentage=card.percentage), ps, pe, s, e, seen)  # discount
            elif card.usage:
                lines = rate_usage(card, max(ZERO, usage(w, sub, card, s, e, seen)), share)
            elif (sub.id, card.key) in laid:
                lines = overlaid(card, laid[(sub.id, card.key)], ps, pe, s, e, seen)
            else:
                lines = rate_flat(card, share)
            out[(sub.id, card.key, iso(ps))] = lines
    for use in w.uses:
        own = [c for c in use.addon.cards if (use.sub.id, c.key) not in laid]
        for card, ps, pe, s, e, seen in served(w, use.sub, own):
            found = per_span(w, use, card, ps, pe, s, e, seen)
            if found:
                out[(use.sub.id, card.key, iso(ps))] = found
    for p in w.pending:
        seen = min(r for r, who in [*w.runs, (w.horizon, None)]  # the first run that bills it (or its rest) whole
                   if r >= p.created_at and who in (None, p.customer) and p.billed_whole_by(r, who is not None))
        s, e = floor_minute(p.start), floor_minute(p.end)
        holder = Sub(p.customer, w.plans[0], s, s, s)
        out[("pending", p.name, iso(p.start))] = (rate_usage(p.card, max(ZERO, usage(w, holder, p.card, s, e, seen)),
                                                             Fraction(1))
                                                  if p.card.usage else rate_flat(p.card, Fraction(1)))
    return out


def per_span(w: World, use: AddonUse, card: Card, ps: datetime, pe: datetime, s: datetime, e: datetime,
             seen: datetime) -> list[Detail]:
    """An add-on card's lines in a period: each span of one quantity is an item of its own, prorated (a usage card,
    single instance: rated over the span) on its own."""
    found: list[Detail] = []
    for a, b, q in use.segments(seen):
        lo, hi = max(s, a), e if b is None else min(e, b)
        share = Fraction(int((hi - lo).total_seconds()), int((pe - ps).total_seconds()))
        if hi <= lo or not q:
            continue
        if card.usage:
            found += rate_usage(card, max(ZERO, usage(w, use.sub, card, lo, hi, seen)), share)
        else:
            found += rate_flat(card, share, q)
    return found


def overlaid(card: Card, use: AddonUse, ps: datetime, pe: datetime, s: datetime, e: datetime,
             seen: datetime) -> list[Detail]:
    """A plan's flat fee with an add-on's flat fee of its key laid over it (OpenMeter's addondiff apply: the plan's
    item is split at each add-on instance's bounds; over an instance of quantity q its amount is the plan's plus q
    times the add-on's, its payment term and discounts the plan's (Apply adds prices and usage discounts only));
    each part prorated and rounded on its own."""
    (extra,) = [c for c in use.addon.cards if c.key == card.key]
    cuts = sorted({s, e} | {t for a, b, q in use.segments(seen) if q for t in (a, b) if t is not None and s < t < e})
    lines: list[Detail] = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        q = next((q for a, b, q in use.segments(seen) if a <= lo and (b is None or hi <= b)), 0)
        lines += rate_flat(card, Fraction(int((hi - lo).total_seconds()), int((pe - ps).total_seconds())),
                           plus=q * D(extra.price["amount"]))
    return lines


def floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- driving Billow ------------------------------------------------------------------------------------------
def build(b: Billow, w: World) -> None:
    b.clock.set("2026-02-01T00:00:00Z")
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    if w.wide:
        for slug, (aggregation, prop) in METERS.items():
            meter = {"slug": slug, "eventType": "prompt", "aggregation": aggregation, "groupBy": {"model": "$.model"}}
            b.ok("POST", "/api/v1/meters", meter | ({"valueProperty": prop} if prop else {}))
    for key, slug, model in features(w.wide):
        body: dict[str, Any] = {"key": key, "name": key, "meterSlug": slug}
        if model is not None:
            body["meterGroupByFilters"] = {"model": model}
        b.ok("POST", "/api/v1/features", body)
    for a in w.addons:
        addon = b.ok("POST", "/api/v1/addons", {"key": a.key, "name": a.key.title(), "currency": w.currency,
                                                "instanceType": a.instance,
                                                "rateCards": [c.body(w.plans[0].cadence) for c in a.cards]})
        a.id = b.ok("POST", f"/api/v1/addons/{addon['id']}/publish")["id"]
    for plan in w.plans:
        draft = b.ok("POST", "/api/v1/plans", plan.body())
        for a in w.addons:
            if plan.key in a.plans:
                b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": a.id, "fromPlanPhase": "p"}
                     | ({"maxQuantity": 10} if a.instance == "multiple" else {}))
        b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    for customer, subject in w.subjects.items():
        b.ok("POST", "/api/v1/customers", {"key": customer, "name": customer, "currency": w.currency,
                                           "usageAttribution": {"subjectKeys": [subject]}})


def drive(b: Billow, w: World) -> list[str]:
    """Every action in clock order; the log of what was done (for a failing seed's story)."""
    actions: list[tuple[datetime, int, str, Any]] = []
    for i, sub in enumerate(w.subs):
        if not sub.by_change:
            actions.append((sub.created_at, 0, "subscribe", i))
        if sub.end is not None and sub.end_known_at is not None:
            nxt = next((s for s in w.subs[i + 1:] if s.customer == sub.customer and s.start == sub.end), None)
            actions.append((sub.end_known_at, 1, "change" if nxt else "cancel", i))
    for e in w.events:
        for at in e.sends:
            actions.append((at, 2, "send", e))
    for at, who in w.runs:
        actions.append((at, 3, "run", who))
    for p in w.pending:
        actions.append((p.created_at, 1, "pending", p))
    for use in w.uses:
        actions.append((use.at, 1, "addon", use))
        if use.change_at is not None:
            actions.append((use.change_at, 1, "addon quantity", use))
    actions.append((w.horizon, 3, "run", None))
    actions.sort(key=lambda a: (a[0], a[1]))
    customer_ids = {c["key"]: c["id"] for c in b.ok("GET", "/api/v1/customers")["items"]}
    log: list[str] = []
    for at, _, what, arg in actions:
        b.clock.set(iso(at))
        if what == "subscribe":
            sub = w.subs[arg]
            out = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": sub.plan.key}, "customerKey": sub.customer,
                                                         "timing": iso(sub.start), "billingAnchor": iso(sub.anchor)})
            sub.id = out["id"]
            log.append(f"{iso(at)} subscribe {sub.customer} to {sub.plan.key} from {iso(sub.start)}, anchor "
                       f"{iso(sub.anchor)}")
        elif what == "change":
            sub = w.subs[arg]
            nxt = next(s for s in w.subs[arg + 1:] if s.customer == sub.customer and s.start == sub.end)
            assert sub.end is not None
            out = b.ok("POST", f"/api/v1/subscriptions/{sub.id}/change",
                       {"timing": iso(sub.end), "plan": {"key": nxt.plan.key}})
            nxt.id = out["next"]["id"]
            log.append(f"{iso(at)} change {sub.customer} to {nxt.plan.key} at {iso(sub.end)}")
        elif what == "cancel":
            sub = w.subs[arg]
            assert sub.end is not None
            b.ok("POST", f"/api/v1/subscriptions/{sub.id}/cancel", {"timing": iso(sub.end)})
            log.append(f"{iso(at)} cancel {sub.customer} at {iso(sub.end)}")
        elif what == "pending":
            p = arg
            b.ok("POST", f"/api/v1/billing/customers/{customer_ids[p.customer]}/invoices/pending-lines",
                 p.body(w.currency))
            log.append(f"{iso(at)} pending line {p.name} {iso(p.start)}..{iso(p.end)} at {iso(p.invoice_at)}: "
                       f"{p.card}")
        elif what == "addon":
            use = arg
            use.id = b.ok("POST", f"/api/v1/subscriptions/{use.sub.id}/addons",
                          {"addon": {"id": use.addon.id}, "quantity": use.quantity, "timing": "immediate",
                           "name": use.addon.key.title()})["id"]
            log.append(f"{iso(at)} add-on {use.addon.key} x{use.quantity} to {use.sub.customer}/{use.sub.plan.key}")
        elif what == "addon quantity":
            use = arg
            b.ok("PATCH", f"/api/v1/subscriptions/{use.sub.id}/addons/{use.id}",
                 {"quantity": use.new_quantity, "timing": "immediate"})
            log.append(f"{iso(at)} add-on {use.addon.key} quantity {use.new_quantity} for {use.sub.customer}/"
                       f"{use.sub.plan.key}")
        elif what == "send":
            e = arg
            b.call("POST", "/api/v1/events", [{"specversion": "1.0", "id": e.id, "source": "oracle", "type": "prompt",
                                               "subject": e.subject, "time": iso(e.time),
                                               "data": {"tokens": str(e.value), "model": e.model}
                                               | ({"user": e.user, "level": str(e.level)} if w.wide else {})}],
                   content_type="application/cloudevents-batch+json")
            log.append(f"{iso(at)} send {e.id} {e.subject} {iso(e.time)} {e.value} model={e.model}"
                       + (f" user={e.user} level={e.level}" if w.wide else ""))
        elif arg is None:
            run = scheduled_run(b)
            assert not run["failures"], run
            log.append(f"{iso(at)} run -> {len(run['invoices'])} invoices")
        else:
            status, out = b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": customer_ids[arg]})
            assert status in (201, 400, 404, 409), (status, out)
            log.append(f"{iso(at)} invoice now {arg} -> {status}")
    return log


Key = tuple[str, str, str]


def billed(b: Billow, horizon: datetime) -> tuple[dict[Key, Decimal], dict[Key, list[list[Decimal]]], list[str],
                                                 set[Key]]:
    """Each (subscription, rate card, billing period)'s total over every invoice but the gathering ones, the totals
    of each of its lines' detailed lines, the invoices whose own sums do not add up, and the keys of billing periods
    still in progress at `horizon` (the world's last run)."""
    out: dict[Key, Decimal] = {}
    open_: set[Key] = set()
    details: dict[Key, list[list[Decimal]]] = {}
    bad: list[str] = []
    items = b.ok("GET", "/api/v1/billing/invoices", query={"pageSize": "1000"})["items"]
    for inv in items:
        if inv["status"] == "gathering":
            continue
        full = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}", query={"expand": "lines"})
        lines_total = ZERO
        for line in full["lines"]:
            ref = line.get("subscription")
            key = ((ref["id"], line["name"], ref["billingPeriod"]["from"]) if ref is not None
                   else ("pending", line["name"], (line.get("splitLineGroup") or line)["period"]["from"]))
            total = D(line["totals"]["total"])
            out[key] = out.get(key, ZERO) + total
            if ref is not None and datetime.fromisoformat(ref["billingPeriod"]["to"]) > horizon:
                open_.add(key)
            details.setdefault(key, []).append([D(ch["totals"]["total"]) for ch in line.get("children", [])])
            lines_total += total
            children = sum((D(ch["totals"]["total"]) for ch in line.get("children", [])), ZERO)
            if children != total:
                bad.append(f"{full['number']} line {line['name']}: children {children} != {total}")
            for ch in line.get("children", []):
                t = ch["totals"]
                if D(t["amount"]) - D(t["discountsTotal"]) != D(t["total"]):
                    bad.append(f"{full['number']} {ch['name']}: amount - discounts != total {t}")
        # prepaid credit (e.g. a negative correction given back) lowers the total, never the lines
        if lines_total - D(full["totals"]["creditsTotal"]) != D(full["totals"]["total"]):
            bad.append(f"{full['number']}: lines {lines_total} - credits != total {full['totals']}")
    return out, details, bad, open_


def check(b: Billow, seed: int, wide: bool = False) -> None:
    w = make_world(seed, wide)
    build(b, w)
    log = drive(b, w)
    ref = expected(w)
    want = {k: sum((d.total for d in v), ZERO) for k, v in ref.items()}
    got, details, bad, open_ = billed(b, w.horizon)
    # Progressive billing (on by default, as OpenMeter) lets an invoice now bill part of a period's usage while the
    # period is in progress; the reference rates whole periods only, so a period still in progress at the world's end
    # that it owes nothing for yet is left out (its parts' sum with the rest is checked wherever the period ended).
    got = {k: v for k, v in got.items() if k in want or k not in open_}
    names = {s.id: f"{s.customer}/{s.plan.key}" for s in w.subs} | {"pending": "pending"}
    diffs = [f"{names.get(k[0], k[0])} {k[1]} {k[2]}: billed {got.get(k, ZERO)}, expected {want.get(k, ZERO)} "
             f"{ref.get(k)}" for k in sorted(set(want) | set(got)) if got.get(k, ZERO) != want.get(k, ZERO)]
    # A period billed in one line (no correction since): its detailed lines are the reference's, one by one (OpenMeter
    # also lists zero-amount ones, e.g. a tier's usage at no usage: left out here).
    diffs += [f"{names[k[0]]} {k[1]} {k[2]}: detailed lines {sorted(ls[0])}, expected {ref[k]}"
              for k, ls in details.items() if len(ls) == 1 and k in ref
              and sorted(x for x in ls[0] if x) != sorted(d.total for d in ref[k] if d.total)]
    story = "\n".join(log + [repr(p) for p in w.plans] + [f"add-on {a.key}: {c!r}" for a in w.addons for c in a.cards])
    assert not diffs and not bad, f"seed {seed}:\n" + "\n".join(diffs + bad) + "\n" + story
    rerun = scheduled_run(b)
    assert rerun["invoices"] == [], rerun


@pytest.fixture(params=["sqlite", "postgres", "sqlite+chdb"])
def store_billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    """The meta store on SQLite or PostgreSQL with usage in memory, or SQLite with usage in chdb (ClickHouse)."""
    if request.param == "sqlite+chdb":
        with harness(tmp_path, namespace, request.getfixturevalue("chdb_store")) as b:
            yield b
        return
    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


@pytest.mark.parametrize(("seed", "wide"), SEEDS, ids=[f"{s}{'w' if wide else ''}" for s, wide in SEEDS])
def test_random_plans_bill_what_openmeter_would(store_billow: Billow, seed: int, wide: bool) -> None:
    check(store_billow, seed, wide)

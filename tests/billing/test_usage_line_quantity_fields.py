"""A usage-based line's quantity fields as OpenMeter serves them (billing/httpdriver/invoiceline.go mapInvoiceLineToAPI;
the quantities from lineengine/quantitysnapshot.go and rating/service/mutator/discountusage.go):

- `quantity` is the usage the line bills after its rate card's usage discount (the discount's units go first to the
  usage of the period's earlier parts, what is left to the line's own);
- `meteredQuantity` is the usage metered in the line's period before any discount, served only when it differs;
- a later part of a progressively billed period has `preLinePeriodQuantity` (the earlier parts' usage, after the
  discount) and `meteredPreLinePeriodQuantity` (metered), each only when not zero;
- a progressive part whose usage bills nothing (all of it free) is a 0.00 line (OpenMeter keeps its split line), and
  the part after it starts at the split with that usage before it (before, Billow wrote no line and no usage to the
  mark: the later line was the whole period, 2200 metered, with no pre-line fields).

Before, Billow's lines had none of the metered fields and showed the metered usage as `quantity` even where a usage
discount made it bill less (a line of 1500 units with 1000 free said 1500 while billing 500). Amounts do not move:
each total is what it was. On the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import scheduled_run, subscribed_to_usage_cards

D = Decimal
UNIT = {"type": "unit", "amount": "0.01"}
CARDS = {  # feature -> its rate card's usage discount (units free each period)
    "tokens": "1000", "spare": "2000", "plain": None}


def _world(b: Billow) -> None:
    subscribed_to_usage_cards(b, {key: {"price": UNIT, **({"discounts": {"usage": {"quantity": free}}} if free else {})}
                                  for key, free in CARDS.items()})


QUANTITIES = ("quantity", "meteredQuantity", "preLinePeriodQuantity", "meteredPreLinePeriodQuantity")


def _fields(inv: dict[str, Any]) -> dict[str, tuple[dict[str, Decimal], Decimal]]:
    """line name -> (its quantity fields present, its total)"""
    return {ln["name"]: ({k: D(ln[k]) for k in QUANTITIES if k in ln}, D(ln["totals"]["total"])) for ln in inv["lines"]}


def _invoice(b: Billow, invoice_id: str) -> dict[str, Any]:
    return b.ok("GET", f"/api/v1/billing/invoices/{invoice_id}", query={"expand": "lines"})  # type: ignore[no-any-return]


def test_a_progressive_parts_quantities_before_and_after_the_usage_discount(billow: Billow) -> None:
    b = billow
    _world(b)
    b.usage(600, "2026-04-03T10:00:00Z")
    b.usage(900, "2026-04-10T10:00:00Z")
    b.usage(700, "2026-04-20T10:00:00Z")
    b.clock.set("2026-04-15T12:00:42Z")
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice",
                         {"customerId": b.ok("GET", "/api/v1/customers/acme")["id"], "progressiveBillingOverride": True})
    assert status == 201, out
    (first,) = out
    # 1500 metered up to the cut: 1000 of them free; the 2000 free cover it all: OpenMeter keeps that split line, 0.00
    # (before, Billow wrote no line and no usage to the mark, so the later line was the whole period, 2200 metered)
    assert _fields(first) == {
        "Tokens": ({"quantity": D(500), "meteredQuantity": D(1500)}, D("5.00")),
        "Spare": ({"quantity": D(0), "meteredQuantity": D(1500)}, D("0.00")),
        "Plain": ({"quantity": D(1500)}, D("15.00")),
    }
    spare = next(ln for ln in first["lines"] if ln["name"] == "Spare")
    assert (spare["period"]["to"], spare["children"]) == ("2026-04-15T12:00:00Z", [])  # no detailed line
    assert _fields(_invoice(b, first["id"])) == _fields(first)  # stored as served

    b.clock.set("2026-05-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    (rest,) = [i for i in b.ok("GET", "/api/v1/billing/invoices")["items"] if i["id"] != first["id"]]
    # the rest of April, [cut, May 1st): 700 metered after 1500 billed before it
    assert _fields(_invoice(b, rest["id"])) == {
        # the discount was used up by the first part: all 700 billed; 1500 before it, 500 of them billed
        "Tokens": ({"quantity": D(700), "preLinePeriodQuantity": D(500), "meteredPreLinePeriodQuantity": D(1500)},
                   D("7.00")),
        # its first part billed 0.00 of 1500 (all free): 700 more, 500 of them free; the usage before it is 1500
        # metered, 0 after the discount (left out, as OpenMeter serves a zero pre-line quantity)
        "Spare": ({"quantity": D(200), "meteredQuantity": D(700), "meteredPreLinePeriodQuantity": D(1500)}, D("2.00")),
        "Plain": ({"quantity": D(700), "preLinePeriodQuantity": D(1500), "meteredPreLinePeriodQuantity": D(1500)},
                  D("7.00")),
    }
    periods = {ln["name"]: ln["period"]["from"] for ln in _invoice(b, rest["id"])["lines"]}
    assert periods == {"Tokens": "2026-04-15T12:00:00Z", "Spare": "2026-04-15T12:00:00Z", "Plain": "2026-04-15T12:00:00Z"}


def test_a_whole_period_line_and_its_correction(billow: Billow) -> None:
    b = billow
    _world(b)
    b.usage(1500, "2026-04-03T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    (whole,) = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert _fields(_invoice(b, whole["id"])) == {  # not split: no pre-line fields
        "Tokens": ({"quantity": D(500), "meteredQuantity": D(1500)}, D("5.00")),
        "Plain": ({"quantity": D(1500)}, D("15.00")),
    }
    b.usage(800, "2026-04-20T10:00:00Z")  # late usage: a correction of the usage since
    b.clock.set("2026-05-02T00:10:00Z")
    assert not scheduled_run(b)["failures"]
    (late,) = [i for i in b.ok("GET", "/api/v1/billing/invoices")["items"] if i["id"] != whole["id"]]
    # corrections of the usage since; the spare card billed nothing of April before (its 1500 were all free): its
    # line is the first, 2300 metered, 2000 of them free
    assert _fields(_invoice(b, late["id"])) == {
        "Tokens": ({"quantity": D(800)}, D("8.00")),
        "Spare": ({"quantity": D(300), "meteredQuantity": D(2300)}, D("3.00")),
        "Plain": ({"quantity": D(800)}, D("8.00")),
    }


def test_one_off_and_simulated_lines_show_the_discounted_and_the_metered_quantity(billow: Billow) -> None:
    b = billow
    _world(b)
    cid = b.ok("GET", "/api/v1/customers/acme")["id"]
    period = {"from": "2026-04-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"}
    card = {"price": UNIT, "featureKey": "tokens", "discounts": {"usage": {"quantity": "1000"}}}
    b.usage(1500, "2026-04-01T10:00:00Z")
    b.clock.set("2026-04-02T00:10:00Z")
    b.ok("POST", f"/api/v1/billing/customers/{cid}/invoices/pending-lines", {"currency": "USD", "lines": [
        {"name": "One-off", "period": period, "invoiceAt": period["to"], "rateCard": card},
        {"name": "One-off plain", "period": period, "invoiceAt": period["to"], "rateCard": {**card, "discounts": None}},
        {"name": "Nothing used", "period": {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
         "invoiceAt": period["to"], "rateCard": {**card, "discounts": None}}]})
    status, (inv,) = b.call("POST", "/api/v1/billing/invoices/invoice",
                            {"customerId": cid, "progressiveBillingOverride": False})  # the one-off lines alone
    assert status == 201, inv
    assert _fields(inv) == {
        "One-off": ({"quantity": D(500), "meteredQuantity": D(1500)}, D("5.00")),
        "One-off plain": ({"quantity": D(1500)}, D("15.00")),
        "Nothing used": ({"quantity": D(0)}, D("0.00")),  # no usage: 0, not 1 (1 is a flat price's quantity)
    }
    # OpenMeter's simulation: the given quantity and preLinePeriodQuantity are metered; 1000 free go to the 600 before
    # the line first, the other 400 to its 1500
    sim = b.ok("POST", f"/api/v1/billing/customers/{cid}/invoices/simulate", {"currency": "USD", "lines": [
        {"name": "Sim", "period": period, "invoiceAt": period["to"], "rateCard": card, "quantity": "1500",
         "preLinePeriodQuantity": "600"},
        {"name": "Sim plain", "period": period, "invoiceAt": period["to"], "rateCard": {**card, "discounts": None},
         "quantity": "1500"}]})
    assert _fields(sim) == {
        "Sim": ({"quantity": D(1100), "meteredQuantity": D(1500), "meteredPreLinePeriodQuantity": D(600)},
                D("11.00")),
        "Sim plain": ({"quantity": D(1500)}, D("15.00")),
    }

"""`POST /api/v1/billing/invoices/invoice` with `filters.lineIds` under progressive billing, as OpenMeter's
gatherInScopeLines (billing/service/gatheringinvoicependinglines.go) with rating's ResolveBillablePeriod has it:

- a usage line whose price may be billed in parts (not a volume tiered price; a SUM, COUNT, MAX or UNIQUE_COUNT meter)
  is billable as soon as its period has started when progressive billing applies (profile, override or
  `progressiveBillingOverride`), up to `asOf`: it is split there (lineengine/splitlinegroup.go), the part up to
  `asOf` keeps the line's id and is invoiced at `asOf`, the rest stays pending as a new line with the line's invoiceAt;
- a flat price is billable when its invoiceAt has come, progressive or not; a volume tiered price when its period
  has ended; without progressive billing a usage line also needs its invoiceAt;
- the lines that are not billable are all named (ErrInvoiceLinesNotBillable), and nothing is invoiced.

Before, Billow refused any line whose invoiceAt was after `asOf`, progressive or not (a 400 at the line). The parts
add up to the line rated whole, digit for digit. On the in-memory twin and on chdb."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.billing.conftest import Billow
from tests.support.billing import PROFILE

D = Decimal
GRADUATED = {"type": "tiered", "mode": "graduated", "tiers": [
    {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
    {"unitPrice": {"type": "unit", "amount": "0.005"}}]}
VOLUME = {**GRADUATED, "mode": "volume"}
APRIL = {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
ACT = "/api/v1/billing/invoices/invoice"
QUANTITIES = ("quantity", "meteredQuantity", "preLinePeriodQuantity", "meteredPreLinePeriodQuantity")


def _world(b: Billow) -> tuple[str, dict[str, Any]]:
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    customer = b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                                  "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)  # progressiveBilling on (the default); the override turns it off
    b.clock.set("2026-04-01T00:00:00Z")
    b.usage(1501, "2026-04-03T10:00:00Z")
    b.usage(900, "2026-04-10T10:00:00Z")
    b.usage(700, "2026-04-20T10:00:00Z")
    b.clock.set("2026-04-15T12:00:42Z")
    added = b.ok("POST", f"/api/v1/billing/customers/{customer['id']}/invoices/pending-lines", {"currency": "USD", "lines": [
        {"name": "Graduated", "period": APRIL, "invoiceAt": APRIL["to"],
         "rateCard": {"price": GRADUATED, "featureKey": "tokens", "discounts": {"usage": {"quantity": "1000"}}}},
        {"name": "Volume", "period": APRIL, "invoiceAt": APRIL["to"], "rateCard": {"price": VOLUME, "featureKey": "tokens"}},
        {"name": "Fee", "period": APRIL, "invoiceAt": APRIL["to"], "rateCard": {"price": {"type": "flat", "amount": "10"}}}]})
    return customer["id"], added


def _fields(ln: dict[str, Any]) -> tuple[dict[str, Decimal], Decimal]:
    return {k: D(ln[k]) for k in QUANTITIES if k in ln}, D(ln["totals"]["total"])


def test_line_ids_under_progressive_billing_split_a_usage_line_at_as_of(billow: Billow) -> None:
    b = billow
    cid, added = _world(b)
    ids = {ln["name"]: ln["id"] for ln in added["lines"]}
    holder = added["invoice"]["id"]

    # without progressive billing a line whose invoiceAt is after asOf is not billable: named, nothing invoiced
    status, out = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": False,
                                       "filters": {"lineIds": [ids["Graduated"]]}})
    assert status == 400 and out["validationErrors"][0]["field"] == "filters.lineIds[0]", out
    assert ids["Graduated"] in out["detail"] and "invoiceAt" in out["detail"], out
    # with it, a volume price (never billed in parts) and a flat fee (its invoiceAt) still are not: both named
    status, out = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": True,
                                       "filters": {"lineIds": [ids["Graduated"], ids["Volume"], ids["Fee"]]}})
    assert status == 400, out
    assert [e["field"] for e in out["validationErrors"]] == ["filters.lineIds[1]", "filters.lineIds[2]"], out
    assert [i["id"] for i in b.ok("GET", "/api/v1/billing/invoices")["items"] if i["status"] != "gathering"] == []

    status, made = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": True,
                                        "filters": {"lineIds": [ids["Graduated"]]}})
    assert status == 201, made
    (first,) = made
    (part,) = first["lines"]
    # up to asOf's minute: 2401 metered, 1000 free: 1000 × 0.01 + 401 × 0.005 (2.005 -> 2.01)
    assert (part["id"], part["period"], part["invoiceAt"]) == (
        ids["Graduated"], {"from": APRIL["from"], "to": "2026-04-15T12:00:00Z"}, "2026-04-15T12:00:00Z")
    assert _fields(part) == ({"quantity": D(1401), "meteredQuantity": D(2401)}, D("12.01"))
    gathering = b.ok("GET", f"/api/v1/billing/invoices/{holder}", query={"expand": "lines"})
    rest = {ln["name"]: ln for ln in gathering["lines"]}
    assert sorted(rest) == ["Fee", "Graduated", "Volume"]
    later = rest["Graduated"]  # the rest of the line: a new pending line, the line's invoiceAt
    assert later["id"] not in ids.values()
    assert (later["period"], later["invoiceAt"]) == ({"from": "2026-04-15T12:00:00Z", "to": APRIL["to"]}, APRIL["to"])

    b.clock.set("2026-05-01T00:10:00Z")
    (second,) = b.ok("POST", ACT, {"customerId": cid, "progressiveBillingOverride": False})  # everything due: the rest, the volume line, the fee
    lines = {ln["name"]: ln for ln in second["lines"]}
    # 700 more after 2401 metered (1401 of them billed): 700 × 0.005; the whole line is 3101 metered, 2101 billed:
    # 10.00 + 1101 × 0.005 (5.505 -> 5.51) = 15.51 = 12.01 + 3.50
    assert lines["Graduated"]["id"] == later["id"]
    assert _fields(lines["Graduated"]) == ({"quantity": D(700), "preLinePeriodQuantity": D(1401),
                                            "meteredPreLinePeriodQuantity": D(2401)}, D("3.50"))
    assert D(part["totals"]["total"]) + D(lines["Graduated"]["totals"]["total"]) == D("15.51")
    assert _fields(lines["Volume"]) == ({"quantity": D(3101)}, D("15.51"))  # 3101 × 0.005, whole
    assert _fields(lines["Fee"])[1] == D(10)
    assert b.ok("GET", f"/api/v1/billing/invoices/{holder}", query={"expand": "lines"}).get("lines") in ([], None)


def test_progressive_billing_without_line_ids_splits_pending_usage_lines_too(billow: Billow) -> None:
    """OpenMeter's gatherInScopeLines is the same with no `lineIds`: every billable line, a usage line up to asOf."""
    b = billow
    cid, _ = _world(b)
    status, made = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": True})
    assert status == 201, made
    assert [(ln["name"], _fields(ln)[1]) for ln in made[0]["lines"]] == [("Graduated", D("12.01"))]
    # not progressive: nothing is billable yet (the rest's invoiceAt, the volume line's period, the fee's invoiceAt)
    status, out = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": False})
    assert status == 400 or out == [], out


def test_usage_that_falls_after_a_part_is_credited_so_the_parts_add_up_to_the_line_rated_whole(billow: Billow) -> None:
    """Negative usage in the span an earlier part billed (a correction) after the split: the rest credits what the
    part billed over, a tier's detailed line gone since whole, so the parts add up to the line rated whole on the
    final usage. Before, the rest was clamped at what the part had billed: 12.01 + 0.00 where the line is 7.01
    (usage 1701, 1000 free: 701 x 0.01) and 12.01 + 0.00 where it is 2.00 (usage 1200: 200 x 0.01)."""
    b = billow
    cid, added = _world(b)
    ids = {ln["name"]: ln["id"] for ln in added["lines"]}
    status, made = b.call("POST", ACT, {"customerId": cid, "progressiveBillingOverride": True,
                                        "filters": {"lineIds": [ids["Graduated"]]}})
    assert status == 201, made
    (part,) = made[0]["lines"]
    assert _fields(part) == ({"quantity": D(1401), "meteredQuantity": D(2401)}, D("12.01"))
    # 3101 metered in April; -1400 in the billed span: 1701, 701 billable after the 1000 free, all in tier 1
    b.usage(-1400, "2026-04-03T11:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    (second,) = b.ok("POST", ACT, {"customerId": cid, "progressiveBillingOverride": False})
    rest = {ln["name"]: ln for ln in second["lines"]}["Graduated"]
    assert _fields(rest) == ({"quantity": D(-700), "preLinePeriodQuantity": D(1401),
                              "meteredPreLinePeriodQuantity": D(2401)}, D("-5.00"))
    # tier 1 now 701 units where the part billed 1000 (-299 x 0.01); the tier-2 line the part billed (401 x 0.005 =
    # 2.01) is gone: credited whole, as it was billed
    assert sorted((D(ch["quantity"]), D(ch["perUnitAmount"]), D(ch["totals"]["total"])) for ch in rest["children"]) \
        == [(D(-401), D("0.005"), D("-2.01")), (D(-299), D("0.01"), D("-2.99"))]
    assert D(part["totals"]["total"]) + D(rest["totals"]["total"]) == D("7.01")  # 701 x 0.01, the line rated whole

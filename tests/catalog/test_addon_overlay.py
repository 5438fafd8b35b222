"""An add-on's rate cards as OpenMeter's catalog takes them (productcatalog/addon.go, planaddon.go, ratecard.go):
- a multiple-instance add-on publishes with flat prices only (ValidateAddonHasCompatiblePrices): its quantity
  multiplies a flat amount, while Billow rated a usage price once whatever the quantity (x3 billed as x1);
- a plan offers an add-on whose rate card shares a key with one of the plan's only when the two can be laid over each
  other (PlanAddon.Validate, RateCardWithOverlay): not both priced unless both are flat fees of one payment term, one
  feature, one cadence, not both with a percentage discount. Before, Billow offered a usage add-on card on the
  plan's own usage card (a rate card's key is its feature's), and billed that usage twice, once at each price.
On the in-memory twin (SQLite meta store)."""

from __future__ import annotations

from typing import Any

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, setup

UNIT = {"type": "unit", "amount": "1"}
_made = iter(range(1000))


def _addon(b: Billow, instance: str, cards: list[dict[str, Any]], publish: bool = True) -> tuple[int, Any]:
    draft = b.ok("POST", "/api/v1/addons", {"key": f"extra_{next(_made)}", "name": "Extra",
                                            "currency": "USD", "instanceType": instance, "rateCards": cards})
    return b.call("POST", f"/api/v1/addons/{draft['id']}/publish") if publish else (200, draft)


def _card(key: str, price: dict[str, Any], **more: Any) -> dict[str, Any]:
    usage = price["type"] != "flat"
    return {"type": "usage_based" if usage else "flat_fee", "key": key, "name": key, "billingCadence": "P1M",
            "price": price, **({"featureKey": key} if usage else {}), **more}


def _offer(b: Billow, plan: dict[str, Any], addon: dict[str, Any]) -> tuple[int, Any]:
    return b.call("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "default"})


def _fields(out: Any) -> list[str]:
    return [e["field"] for e in out.get("errors") or out.get("validationErrors") or []]


def test_a_multiple_instance_add_on_takes_flat_prices_only(billow: Billow) -> None:
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "tokens"})
    status, out = _addon(b, "multiple", [_card("calls", UNIT)])
    assert status == 400, out
    assert "rateCards[0].price.type" in _fields(out), out
    _, draft = _addon(b, "multiple", [_card("calls", {"type": "package", "amount": "5", "quantityPerPackage": "10"})],
                      publish=False)
    shown = b.ok("GET", f"/api/v1/addons/{draft['id']}")
    assert _fields(shown) == ["rateCards[0].price.type"], shown  # shown on the draft beforehand
    assert _addon(b, "single", [_card("calls", UNIT)])[0] == 200  # one instance: any price
    flat = _card("calls", {"type": "flat", "amount": "3", "paymentTerm": "in_arrears"})
    assert _addon(b, "multiple", [flat])[0] == 200  # a usage-based card with a flat price adds up


def test_a_plan_offers_an_add_on_card_on_its_own_key_only_when_they_add_up(billow: Billow) -> None:
    b = billow
    setup(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))  # base: flat 50 in advance; tokens: graduated
    _, usage = _addon(b, "single", [_card("tokens", UNIT)])
    status, out = _offer(b, plan, usage)
    assert status == 400 and _fields(out) == ["addonId"], out  # tokens would be billed at both prices
    _, arrears = _addon(b, "multiple", [_card("base", {"type": "flat", "amount": "10", "paymentTerm": "in_arrears"})])
    status, out = _offer(b, plan, arrears)
    assert status == 400 and _fields(out) == ["addonId"], out
    assert "payment term" in out["detail"], out
    _, discounted = _addon(b, "multiple", [_card("base", {"type": "flat", "amount": "10"},
                                                 discounts={"percentage": {"percentage": 5}})])
    assert _offer(b, plan, discounted)[0] == 201  # the plan's base fee has no percentage discount
    _, other = _addon(b, "multiple", [_card("seat", {"type": "flat", "amount": "10"})])
    assert _offer(b, plan, other)[0] == 201  # a key of its own: a rate card of its own


def test_a_plan_edited_to_clash_with_its_add_on_is_not_published(billow: Billow) -> None:
    b = billow
    setup(b)
    b.ok("POST", "/api/v1/features", {"key": "calls", "name": "Calls", "meterSlug": "tokens"})
    plan = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    _, usage = _addon(b, "single", [_card("calls", UNIT)])
    assert _offer(b, plan, usage)[0] == 201  # the plan has no calls card yet
    b.ok("PUT", f"/api/v1/plans/{plan['id']}", plan_body("team", "50", extra=[_card("calls", UNIT)]))
    shown = b.ok("GET", f"/api/v1/plans/{plan['id']}")
    assert [e["code"] for e in shown["validationErrors"] or []] == ["plan_has_incompatible_addon"], shown
    status, out = b.call("POST", f"/api/v1/plans/{plan['id']}/publish")
    assert status == 400, out

"""Plans, add-ons and subscriptions through the API: lifecycle, bad input, a mid-cycle upgrade priced to the
cent from real usage, entitlements that come and go with the subscription."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published, published_seats, setup


def fields(out: dict[str, Any]) -> list[str]:
    return [e["field"] for e in out.get("errors") or out.get("extensions", {}).get("errors") or []] or [out["detail"]]


def test_plan_versions_draft_publish_archive(billow: Billow) -> None:
    b = billow
    setup(b)
    body = plan_body("starter", "30", extra=[{"type": "flat_fee", "key": "sso", "name": "SSO", "featureKey": "sso",
                                              "billingCadence": "P1M", "price": None,
                                              "entitlementTemplate": {"type": "boolean"}}])
    draft = b.ok("POST", "/api/v1/plans", body)
    assert (draft["status"], draft["version"]) == ("draft", 1)
    assert draft["phases"][0]["rateCards"][1]["price"]["tiers"][0]["unitPrice"]["amount"] == "0.01"
    assert [e["field"] for e in draft["validationErrors"]] == ["phases[0].rateCards[2].featureKey"]
    status, out = b.call("POST", f"/api/v1/plans/{draft['id']}/publish")
    assert status == 400 and "phases[0].rateCards[2].featureKey" in out["detail"] and "sso" in out["detail"]
    b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
    b.clock.set("2026-01-01T00:00:10Z")
    v1 = b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    assert (v1["status"], v1["effectiveFrom"], v1["validationErrors"]) == ("active", "2026-01-01T00:00:10Z", None)
    status, out = b.call("PUT", f"/api/v1/plans/{v1['id']}", body)
    assert status == 409 and "only a draft" in out["detail"]
    v2 = b.ok("POST", "/api/v1/plans/starter/next")
    assert (v2["version"], v2["status"]) == (2, "draft")
    # one draft at a time: 400 naming the field (OpenMeter's GenericValidationError), the draft as conflictingEntityId
    status, out = b.call("POST", "/api/v1/plans/starter/next")
    assert (status, out["detail"].split(":")[0], out["conflictingEntityId"]) == (400, "planIdOrKey", v2["id"]), out
    status, out = b.call("POST", "/api/v1/plans", body)  # also when the key's next version comes from POST /plans
    assert (status, out["detail"].split(":")[0], out["conflictingEntityId"]) == (400, "key", v2["id"]), out
    b.ok("PUT", f"/api/v1/plans/{v2['id']}", plan_body("starter", "35"))
    b.clock.set("2026-01-02T00:00:00Z")
    b.ok("POST", f"/api/v1/plans/{v2['id']}/publish")
    assert b.ok("GET", f"/api/v1/plans/{v1['id']}")["status"] == "archived"
    assert b.ok("GET", "/api/v1/plans/starter")["version"] == 2  # by key: the version in effect
    listed = b.ok("GET", "/api/v1/plans", query={"key": "starter"})
    assert (listed["totalCount"], [p["status"] for p in listed["items"]]) == (2, ["archived", "active"])
    assert b.call("DELETE", f"/api/v1/plans/{v2['id']}")[0] == 409  # in effect: archive first
    b.ok("POST", f"/api/v1/plans/{v2['id']}/archive")
    assert b.call("DELETE", f"/api/v1/plans/{v2['id']}")[0] == 204
    assert [p["version"] for p in b.ok("GET", "/api/v1/plans")["items"]] == [1]


def test_a_version_archived_by_a_later_request_is_not_archived_again_by_an_earlier_one(billow: Billow) -> None:
    """Two archives at once: the one that began later (its `now` later) can write first, and the other then reads a
    version still active at its own `now` (its end is later). It answered 200 too and moved the end earlier (CI: two
    of 16 concurrent archives answered 200). Now a version whose end is written is archived: 409, the end kept."""
    b = billow
    setup(b)
    b.clock.set("2026-01-01T00:00:10Z")
    v1 = published(b, plan_body("racing", "10"))
    b.clock.set("2026-01-01T00:01:00Z")
    assert b.ok("POST", f"/api/v1/plans/{v1['id']}/archive")["effectiveTo"] == "2026-01-01T00:01:00Z"
    b.clock.set("2026-01-01T00:00:30Z")  # the request that began first, answered second
    status, out = b.call("POST", f"/api/v1/plans/{v1['id']}/archive")
    assert status == 409 and "already archived" in out["detail"], out
    assert b.ok("GET", f"/api/v1/plans/{v1['id']}")["effectiveTo"] == "2026-01-01T00:01:00Z"


def test_a_deleted_version_s_number_is_not_taken_again(billow: Billow) -> None:
    """A deleted draft keeps its version number (its row stays, unique per key): the key's next version comes after
    it, as OpenMeter counts versions with the deleted ones. Before, the next version counted the live ones only and
    met the deleted one's number: after deleting a draft, no next version of the key could ever be made (409)."""
    b = billow
    setup(b)
    body = plan_body("basic", "10")
    published(b, body)
    for version in (2, 3):
        draft = b.ok("POST", "/api/v1/plans/basic/next")
        assert draft["version"] == version
        assert b.call("DELETE", f"/api/v1/plans/{draft['id']}")[0] == 204
    assert b.ok("POST", "/api/v1/plans", body)["version"] == 4
    addon = {"key": "seats", "name": "Seats", "currency": "USD", "instanceType": "multiple", "rateCards": [
        {"type": "flat_fee", "key": "seat", "name": "Seat", "billingCadence": "P1M", "price": {"type": "flat", "amount": "10"}}]}
    first = b.ok("POST", "/api/v1/addons", addon)
    assert b.call("POST", "/api/v1/addons", addon)[0] == 400  # the key has a draft (version 1)
    assert b.call("DELETE", f"/api/v1/addons/{first['id']}")[0] == 204
    assert b.ok("POST", "/api/v1/addons", addon)["version"] == 2


def test_bad_catalog_input_names_the_field(billow: Billow) -> None:
    b = billow
    setup(b)
    good = plan_body("pro", "100")

    def refused(mutate: Any, expected: str) -> None:
        body = plan_body("pro", "100")
        mutate(body)
        status, out = b.call("POST", "/api/v1/plans", body)
        assert status == 400 and expected in out["detail"], (expected, status, out)

    card = "phases[0].rateCards[1]"
    refused(lambda p: p["phases"][0]["rateCards"][1]["price"]["tiers"].insert(1, {"upToAmount": "500", "unitPrice": {"type": "unit", "amount": "0.02"}}),
            f"{card}.price.tiers[1].upToAmount")  # overlaps the first tier
    refused(lambda p: p["phases"][0]["rateCards"][0]["price"].update(amount="-5"), "phases[0].rateCards[0].price.amount")
    refused(lambda p: p.update(currency="XYZ"), "currency")
    refused(lambda p: p.update(billingCadence="P1X"), "billingCadence")
    refused(lambda p: p["phases"][0]["rateCards"][1].update(billingCadence="P1X"), f"{card}.billingCadence")
    refused(lambda p: p["phases"][0]["rateCards"][1].update(key="other"), f"{card}.key")
    refused(lambda p: p["phases"][0]["rateCards"][0]["price"].update(type="unit"), "phases[0].rateCards[0].price.type")
    refused(lambda p: p["phases"].insert(0, {"key": "trial", "name": "Trial", "rateCards": []}), "phases[0].duration")
    refused(lambda p: p["phases"][0]["rateCards"].append(dict(p["phases"][0]["rateCards"][0])), "phases[0].rateCards[2].key")
    status, out = b.call("POST", "/api/v1/plans", {**good, "phases": []})
    assert status == 400 and out["detail"].startswith("phases")
    assert b.call("POST", "/api/v1/plans", [good])[0] == 400
    addon = {"key": "seats", "name": "Seats", "currency": "USD", "instanceType": "many", "rateCards": []}
    status, out = b.call("POST", "/api/v1/addons", addon)
    assert status == 400 and "instanceType" in out["detail"]


def test_mid_cycle_upgrade_with_usage_to_the_cent(billow: Billow) -> None:
    b = billow
    setup(b)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    published(b, plan_body("pro", "199"))
    status, out = b.call("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                           "timing": "2026-03-30T00:00:00Z"})
    assert status == 400 and "timing" in out["detail"] and "past" in out["detail"]  # a past start is refused
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    assert (sub["status"], sub["billingAnchor"], sub["currency"]) == ("scheduled", "2026-04-01T00:00:00Z", "USD")
    assert b.call("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme"})[0] == 409
    b.clock.set("2026-04-01T00:00:00Z")
    expanded = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")
    assert expanded["status"] == "active"
    ent_id = expanded["phases"][0]["items"][1]["included"]["entitlement"]["id"]
    assert b.value("customer_1", "tokens")["balance"] == 5000  # the template's grant
    b.usage(600, "2026-04-05T10:00:00Z")
    b.usage(900, "2026-04-20T10:00:00Z")  # after the upgrade below
    b.clock.set("2026-04-17T12:00:00Z")
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/change",
                         {"timing": "2026-04-01T00:00:00Z", "plan": {"key": "pro"}})
    assert status == 400 and "past" in out["detail"]
    changed = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": "immediate", "plan": {"key": "pro"}})
    old, new = changed["current"], changed["next"]
    assert (old["status"], old["activeTo"]) == ("inactive", "2026-04-17T12:00:00Z")
    assert (new["status"], new["activeFrom"], new["billingAnchor"]) == ("active", "2026-04-17T12:00:00Z", "2026-04-01T00:00:00Z")
    # The entitlement moves over with its balance rather than being re-created.
    assert new["phases"][0]["items"][1]["included"]["entitlement"]["id"] == ent_id
    b.clock.set("2026-04-30T23:00:00Z")
    basic = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/charges", query={"at": "2026-04-10T00:00:00Z"})
    pro = b.ok("GET", f"/api/v1/subscriptions/{new['id']}/charges", query={"at": "2026-04-20T00:00:00Z"})
    assert basic["period"] == pro["period"] == {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
    # By hand (April = 720 h): basic served 396 h: 49.99 x 396/720 = 27.4945 -> 27.49; 600 tokens x 0.01 = 6.00.
    # Pro served 324 h: 199 x 324/720 = 89.55; 900 tokens in tier 1 = 9.00.
    by_key = {(c["rateCardKey"]): Decimal(str(c["total"])) for c in basic["lines"]}
    assert by_key == {"base": Decimal("27.49"), "tokens": Decimal("6.00")}
    assert Decimal(str(basic["totals"]["total"])) == Decimal("33.49")
    assert {c["rateCardKey"]: Decimal(str(c["total"])) for c in pro["lines"]} == {"base": Decimal("89.55"), "tokens": Decimal("9.00")}
    assert Decimal(str(pro["totals"]["total"])) == Decimal("98.55")
    flat = next(c for c in pro["lines"] if c["rateCardKey"] == "base")
    assert flat["proration"] == {"served": "9/20", "value": "0.450000"} and flat["period"]["from"] == "2026-04-17T12:00:00Z"


def test_cancel_continue_and_entitlements_follow(billow: Billow) -> None:
    b = billow
    setup(b)
    published(b, plan_body("basic", "10"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerId": b.ok("GET", "/api/v1/customers/acme")["id"]})
    assert b.value("customer_1", "tokens")["hasAccess"] is True
    b.clock.set("2026-01-10T00:00:00Z")
    canceled = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "next_billing_cycle"})
    assert (canceled["status"], canceled["activeTo"]) == ("canceled", "2026-02-01T00:00:00Z")
    resumed = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/unschedule-cancelation")
    assert (resumed["status"], resumed["activeTo"]) == ("active", None)
    assert b.call("POST", f"/api/v1/subscriptions/{sub['id']}/unschedule-cancelation")[0] == 409
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "2025-12-01T00:00:00Z"})
    assert status == 400 and "timing" in out["detail"]
    ended = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "immediate"})
    assert ended["status"] == "inactive"
    assert b.call("GET", "/api/v1/subjects/customer_1/entitlements/tokens/value")[0] == 404  # gone with it
    assert b.call("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {})[0] == 409
    listed = b.ok("GET", "/api/v1/customers/acme/subscriptions")
    assert [s["status"] for s in listed["items"]] == ["inactive"]
    # A subscription canceled before it starts never runs, and leaves the customer free to subscribe.
    later = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                   "timing": "2026-03-01T00:00:00Z"})
    assert later["status"] == "scheduled"
    assert b.ok("POST", f"/api/v1/subscriptions/{later['id']}/cancel", {"timing": "immediate"})["status"] == "inactive"
    # The customer can subscribe again from the end of the last one.
    again = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    assert again["status"] == "active" and b.value("customer_1", "tokens")["hasAccess"] is True


def test_addons_on_a_plan_and_a_subscription(billow: Billow) -> None:
    b = billow
    setup(b)
    seats = published_seats(b)
    assert seats["status"] == "active"
    draft = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    status, out = b.call("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "nope"})
    assert status == 400 and "fromPlanPhase" in out["detail"]
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default", "maxQuantity": 10})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme"})
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                         {"addon": {"id": seats["id"]}, "quantity": 11, "timing": "immediate", "name": "Seats"})
    assert status == 400 and "at most 10" in out["detail"]
    added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                 {"addon": {"id": seats["id"]}, "quantity": 3, "timing": "immediate", "name": "Seats"})
    assert (added["quantity"], added["activeFrom"]) == (3, "2026-01-01T00:00:00Z")
    b.clock.set("2026-01-16T12:00:00Z")
    updated = b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}", {"quantity": 0, "timing": "immediate"})
    assert [s["quantity"] for s in updated["timeline"]] == [3, 0]
    owed = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/charges")
    seat_lines = [Decimal(str(c["total"])) for c in owed["lines"] if c["rateCardKey"] == "seat"]
    # 3 seats x $10 for 15.5 of 31 days = 15.00.
    assert seat_lines == [Decimal("15.00")]
    assert Decimal(str(owed["totals"]["total"])) == Decimal("65.00")


def test_next_from_an_archived_version_s_id_restores_that_version_as_the_next_draft(billow: Billow) -> None:
    """POST /api/v1/plans/{planIdOrKey}/next by a version's id copies that version (OpenMeter's NextPlan: its source
    is the version the id names), so a plan's earlier version can be restored as the next draft. It copied the
    latest version whatever the id: the "restored" draft held v2's prices. By key it copies the latest; a deleted
    version's id is a 404."""
    b = billow
    setup(b)
    b.clock.set("2026-01-01T00:00:00Z")
    v1 = published(b, plan_body("restorable", "10"))
    v2 = b.ok("POST", "/api/v1/plans/restorable/next")
    b.ok("PUT", f"/api/v1/plans/{v2['id']}", plan_body("restorable", "20"))
    b.clock.set("2026-01-02T00:00:00Z")
    b.ok("POST", f"/api/v1/plans/{v2['id']}/publish")

    def fee(plan: dict[str, Any]) -> str:
        return str(plan["phases"][0]["rateCards"][0]["price"]["amount"])

    v3 = b.ok("POST", f"/api/v1/plans/{v1['id']}/next")
    assert (v3["version"], v3["status"], fee(v3)) == (3, "draft", "10")
    b.ok("DELETE", f"/api/v1/plans/{v3['id']}")
    v4 = b.ok("POST", "/api/v1/plans/restorable/next")
    assert (v4["version"], fee(v4)) == (4, "20")
    b.ok("DELETE", f"/api/v1/plans/{v4['id']}")
    status, problem = b.call("POST", f"/api/v1/plans/{v3['id']}/next")
    assert status == 404 and v3["id"] in problem["detail"]

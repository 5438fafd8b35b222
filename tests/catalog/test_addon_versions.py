"""POST /api/v1/addons with the key of an existing add-on makes the key's next version, as OpenMeter's CreateAddon
does (openmeter/productcatalog/addon/service/addon.go: version = latest + 1, refused only while the key has a
draft). Billow answered 409 "exists" for any key with a live version, so an add-on could get no version 2 through
POST /addons. What referenced version 1 (a plan's add-on, a subscription's add-on) keeps version 1."""

from __future__ import annotations

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published_seats, setup


def _seats(amount: str) -> dict[str, object]:
    return {"key": "seats", "name": "Seats", "currency": "USD", "instanceType": "multiple",
            "rateCards": [{"type": "flat_fee", "key": "seat", "name": "Seat", "billingCadence": "P1M",
                           "price": {"type": "flat", "amount": amount}}]}


def test_posting_an_existing_add_on_key_makes_its_next_version(billow: Billow) -> None:
    b = billow
    setup(b)
    b.clock.set("2026-01-01T00:00:00Z")
    v1 = published_seats(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    b.ok("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": v1["id"], "fromPlanPhase": "default",
                                                          "maxQuantity": 10})
    b.ok("POST", f"/api/v1/plans/{plan['id']}/publish")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme"})
    item = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                {"addon": {"id": v1["id"]}, "quantity": 2, "timing": "immediate"})

    b.clock.set("2026-01-05T00:00:00Z")
    status, v2 = b.call("POST", "/api/v1/addons", _seats("12"))
    assert status == 201, v2
    assert (v2["key"], v2["version"], v2["status"], v2["effectiveFrom"]) == ("seats", 2, "draft", None)
    assert v2["id"] != v1["id"] and v2["rateCards"][0]["price"]["amount"] == "12"
    assert b.ok("GET", "/api/v1/addons/seats")["version"] == 1  # by key: the version in effect

    status, out = b.call("POST", "/api/v1/addons", _seats("13"))  # one draft at a time
    assert status == 400 and out["detail"].startswith("key: ") and "'seats'" in out["detail"], out
    assert [e["field"] for e in out["validationErrors"]] == ["key"] and out["conflictingEntityId"] == v2["id"]
    assert b.ok("GET", "/api/v1/addons", query={"key": "seats"})["totalCount"] == 2

    b.clock.set("2026-01-10T00:00:00Z")
    published = b.ok("POST", f"/api/v1/addons/{v2['id']}/publish")
    assert (published["status"], published["effectiveFrom"]) == ("active", "2026-01-10T00:00:00Z")
    old = b.ok("GET", f"/api/v1/addons/{v1['id']}")
    assert (old["status"], old["effectiveTo"]) == ("archived", "2026-01-10T00:00:00Z")  # publishing v2 ended v1
    assert b.ok("GET", "/api/v1/addons/seats")["version"] == 2
    listed = b.ok("GET", "/api/v1/addons", query={"key": "seats"})
    assert [(a["version"], a["status"]) for a in listed["items"]] == [(1, "archived"), (2, "active")]

    # What referenced version 1 keeps it: the plan's add-on (by its id or the add-on's key) and the subscription's.
    for ref in ("seats", v1["id"]):
        pa = b.ok("GET", f"/api/v1/plans/{plan['id']}/addons/{ref}")
        assert (pa["addon"]["id"], pa["addon"]["version"], pa["addon"]["status"]) == (v1["id"], 1, "archived")
    [on_sub] = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/addons")
    assert (on_sub["id"], on_sub["addon"]["id"], on_sub["addon"]["version"]) == (item["id"], v1["id"], 1)
    assert on_sub["rateCards"][0]["price"]["amount"] == "10"
    b.clock.set("2026-01-11T00:00:00Z")
    changed = b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{item['id']}", {"quantity": 3,
                                                                                      "timing": "immediate"})
    assert ([s["quantity"] for s in changed["timeline"]], changed["addon"]["version"]) == ([2, 3], 1)
    # The plan offers version 1, not the key: version 2 is not on offer to its subscriptions (OpenMeter: "addon
    # seats@2 is not linked to the plan"); it was taken, under version 1's maximum, when matched by key.
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                         {"addon": {"id": v2["id"]}, "quantity": 1, "timing": "immediate"})
    assert status == 400 and out["detail"].startswith("addon.id: ") and "version 2" in out["detail"], out

    b.clock.set("2026-01-12T00:00:00Z")
    v3 = b.ok("POST", "/api/v1/addons", _seats("14"))  # no draft again: the next one, after the published v2
    assert (v3["version"], v3["status"]) == (3, "draft")

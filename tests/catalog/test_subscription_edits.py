"""OpenMeter's remaining subscription and plan operations (issue 16): PATCH /subscriptions/{id} (edit: add and
remove items, add, remove and stretch phases, unschedule edits; billing and entitlements follow), /migrate,
/restore, and PUT /plans/{planId}/addons/{planAddonId}."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published, published_seats, setup

SUPPORT = {"type": "flat_fee", "key": "support", "name": "Support", "billingCadence": "P1M",
           "price": {"type": "flat", "amount": "62", "paymentTerm": "in_advance"}}


def _refused(b: Billow, method: str, path: str, body: Any, name: str, status: int = 400) -> None:
    got, out = b.call(method, path, body)
    assert got == status, (got, out)
    assert name in str(out), out


def _items(sub: dict[str, Any], phase: str = "default") -> dict[str, list[tuple[str, str | None]]]:
    (ph,) = [p for p in sub["phases"] if p["key"] == phase]
    return {k: [(v["activeFrom"], v["activeTo"]) for v in versions] for k, versions in ph["itemTimelines"].items()}


def _charges(b: Billow, sub_id: str, at: str) -> dict[tuple[str, str], Decimal]:
    owed = b.ok("GET", f"/api/v1/subscriptions/{sub_id}/charges", query={"at": at})
    out: dict[tuple[str, str], Decimal] = {}
    for ln in owed["lines"]:
        key = (ln["source"], ln["rateCardKey"])
        out[key] = out.get(key, Decimal(0)) + Decimal(str(ln["total"]))
    return out


def test_edit_adds_replaces_and_removes_items_and_billing_and_entitlements_follow(billow: Billow) -> None:
    b = billow
    setup(b)
    published(b, plan_body("basic", "31"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    path = f"/api/v1/subscriptions/{sub['id']}"
    b.usage(600, "2026-01-10T00:00:00Z")
    assert b.value("customer_1", "tokens")["hasAccess"] is True
    b.clock.set("2026-01-16T12:00:00Z")  # half of January (15.5 of 31 days)
    edited = b.ok("PATCH", path, {"customizations": [
        {"op": "add_item", "phaseKey": "default", "rateCard": SUPPORT},
        {"op": "remove_item", "phaseKey": "default", "itemKey": "tokens"}]})
    assert edited["id"] == sub["id"] and edited["status"] == "active"
    items = _items(b.ok("GET", path))
    assert items["support"] == [("2026-01-16T12:00:00Z", None)]
    assert items["tokens"] == [("2026-01-01T00:00:00Z", "2026-01-16T12:00:00Z")]
    assert items["base"] == [("2026-01-01T00:00:00Z", None)]
    assert b.call("GET", "/api/v1/subjects/customer_1/entitlements/tokens/value")[0] == 404  # went with its item
    b.usage(500, "2026-01-20T00:00:00Z")  # after the tokens item ended: not billed
    # Replace the base fee on Jan 24 (23 of 31 days at 31, then 8 days at 62): two versions, billed apart.
    b.clock.set("2026-01-24T00:00:00Z")
    b.ok("PATCH", path, {"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": {
        **SUPPORT, "key": "base", "name": "Base fee", "price": {"type": "flat", "amount": "62", "paymentTerm": "in_advance"}}}]})
    assert _items(b.ok("GET", path))["base"] == [("2026-01-01T00:00:00Z", "2026-01-24T00:00:00Z"),
                                                 ("2026-01-24T00:00:00Z", None)]
    assert _charges(b, sub["id"], "2026-01-25T00:00:00Z") == {
        ("phase:default", "base"): Decimal("23.00"), ("phase:default#1", "base"): Decimal("16.00"),
        ("phase:default", "support"): Decimal("31.00"),  # 62 x 15.5/31
        ("phase:default", "tokens"): Decimal("6.00")}  # 600 x 0.01; the 500 after its end are not counted
    # A removal scheduled for the next billing cycle, then unscheduled.
    b.ok("PATCH", path, {"timing": "next_billing_cycle", "customizations": [
        {"op": "remove_item", "phaseKey": "default", "itemKey": "support"}]})
    assert _items(b.ok("GET", path))["support"] == [("2026-01-16T12:00:00Z", "2026-02-01T00:00:00Z")]
    b.ok("PATCH", path, {"customizations": [{"op": "unschedule_edit"}]})
    assert _items(b.ok("GET", path))["support"] == [("2026-01-16T12:00:00Z", None)]
    # The past is never rewritten; bad operations name their field; a failing batch changes nothing.
    before = b.ok("GET", path)
    for body, name in [
        ({}, "customizations"),
        ({"customizations": [{"op": "bogus"}]}, "customizations[0].op"),
        ({"customizations": [{"op": "add_item", "phaseKey": "default"}]}, "customizations[0].rateCard"),
        ({"customizations": [{"op": "add_item", "phaseKey": "nope", "rateCard": SUPPORT}]}, "customizations[0].phaseKey"),
        ({"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": {**SUPPORT, "key": "x",
                                                                                      "billingCadence": "P1W"}}]},
         "customizations[0].rateCard.billingCadence"),
        ({"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": {
            "type": "usage_based", "key": "nope", "name": "Nope", "featureKey": "nope", "billingCadence": "P1M",
            "price": {"type": "unit", "amount": "1"}}}]}, "customizations[0].rateCard.featureKey"),
        ({"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": {**SUPPORT, "price": {
            "type": "flat", "amount": "1_000"}}}]}, "customizations[0].rateCard.price"),
        ({"customizations": [{"op": "remove_item", "phaseKey": "default", "itemKey": "tokens"}]},
         "customizations[0].itemKey"),  # already ended
        ({"customizations": [{"op": "remove_item", "phaseKey": "default", "itemKey": "base"},
                             {"op": "remove_phase", "phaseKey": "default", "shift": "next"}]},
         "customizations[1].phaseKey"),  # started: and the first operation is not kept either
        ({"customizations": [{"op": "stretch_phase", "phaseKey": "default", "extendBy": "P1D"}]}, "phaseKey"),
        ({"timing": "2025-01-01T00:00:00Z", "customizations": [{"op": "unschedule_edit"}]}, "timing"),
    ]:
        status = 409 if name == "phaseKey" else 400
        _refused(b, "PATCH", path, body, name, status)
    assert b.ok("GET", path) == before
    _refused(b, "PATCH", "/api/v1/subscriptions/01J0000000000000000000NONE", {"customizations": []}, "Not Found", 404)


def _phased(b: Billow) -> dict[str, Any]:
    def card(fee: str) -> list[dict[str, Any]]:
        return [{"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": fee, "paymentTerm": "in_advance"}}]
    published(b, {"key": "phased", "name": "Phased", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "trial", "name": "Trial", "duration": "P1M", "rateCards": card("1")},
        {"key": "intro", "name": "Intro", "duration": "P1M", "rateCards": card("2")},
        {"key": "default", "name": "Default", "rateCards": card("3")}]})
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "phased"}, "customerKey": "acme"})  # type: ignore[no-any-return]


def _phases(b: Billow, sub_id: str) -> list[tuple[str, str, str | None]]:
    return [(p["key"], p["activeFrom"], p["activeTo"]) for p in b.ok("GET", f"/api/v1/subscriptions/{sub_id}")["phases"]]


def test_edit_stretches_removes_and_adds_phases(billow: Billow) -> None:
    b = billow
    setup(b)
    sub = _phased(b)
    path = f"/api/v1/subscriptions/{sub['id']}"
    b.clock.set("2026-01-10T00:00:00Z")
    _refused(b, "PATCH", path, {"customizations": [{"op": "remove_phase", "phaseKey": "trial", "shift": "next"}]},
             "customizations[0].phaseKey")  # started
    _refused(b, "PATCH", path, {"customizations": [{"op": "remove_phase", "phaseKey": "intro", "shift": "up"}]},
             "customizations[0].shift")
    _refused(b, "PATCH", path, {"customizations": [{"op": "stretch_phase", "phaseKey": "trial", "extendBy": "soon"}]},
             "customizations[0].extendBy")
    _refused(b, "PATCH", path, {"customizations": [{"op": "add_phase", "phase": {
        "key": "promo", "name": "Promo", "startAfter": "P1D", "duration": "P1M"}}]}, "customizations[0].phase.startAfter")
    b.ok("PATCH", path, {"customizations": [{"op": "stretch_phase", "phaseKey": "trial", "extendBy": "P14D"}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-01T00:00:00Z", "2026-02-15T00:00:00Z"),
                                     ("intro", "2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z"),
                                     ("default", "2026-03-15T00:00:00Z", None)]
    b.ok("PATCH", path, {"customizations": [{"op": "remove_phase", "phaseKey": "intro", "shift": "next"}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-01T00:00:00Z", "2026-02-15T00:00:00Z"),
                                     ("default", "2026-02-15T00:00:00Z", None)]
    b.ok("PATCH", path, {"customizations": [
        {"op": "add_phase", "phase": {"key": "promo", "name": "Promo", "startAfter": "P1M", "duration": "P1M"}},
        {"op": "add_item", "phaseKey": "promo", "rateCard": SUPPORT}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
                                     ("promo", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
                                     ("default", "2026-03-01T00:00:00Z", None)]
    assert list(_items(b.ok("GET", path), "promo")) == ["support"]
    _refused(b, "PATCH", path, {"customizations": [{"op": "add_phase", "phase": {
        "key": "promo", "name": "Again", "startAfter": "P3M", "duration": "P1M"}}]}, "customizations[0].phase.key", 409)
    b.ok("PATCH", path, {"customizations": [{"op": "remove_phase", "phaseKey": "promo", "shift": "prev"}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z"),
                                     ("default", "2026-03-01T00:00:00Z", None)]
    # February is billed by the phase running then: the trial's base fee of 1.
    assert _charges(b, sub["id"], "2026-02-10T00:00:00Z") == {("phase:trial", "base"): Decimal("1.00")}


def test_migrate_moves_to_a_later_version_of_the_plan(billow: Billow) -> None:
    b = billow
    setup(b)
    published(b, plan_body("basic", "31"))
    custom = b.ok("POST", "/api/v1/subscriptions", {"customerKey": "acme", "customPlan": {
        "name": "Custom", "currency": "USD", "billingCadence": "P1M", "phases": [
            {"key": "default", "name": "Default", "rateCards": [SUPPORT]}]}})
    _refused(b, "POST", f"/api/v1/subscriptions/{custom['id']}/migrate", {}, "custom plan")
    b.ok("POST", f"/api/v1/subscriptions/{custom['id']}/cancel", {"timing": "immediate"})
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    path = f"/api/v1/subscriptions/{sub['id']}/migrate"
    _refused(b, "POST", path, {}, "targetVersion")  # no later version yet
    v2 = b.ok("POST", "/api/v1/plans/basic/next")
    b.ok("PUT", f"/api/v1/plans/{v2['id']}", plan_body("basic", "62"))
    b.clock.set("2026-01-10T00:00:00Z")
    b.ok("POST", f"/api/v1/plans/{v2['id']}/publish")
    for body, name in [({"targetVersion": 1}, "targetVersion"), ({"targetVersion": 9}, "targetVersion"),
                       ({"targetVersion": "2"}, "targetVersion"), ({"timing": "yesterday"}, "timing")]:
        _refused(b, "POST", path, body, name)
    b.clock.set("2026-01-16T12:00:00Z")
    out = b.ok("POST", path, {})
    assert out["current"]["id"] == sub["id"] and out["current"]["activeTo"] == "2026-01-16T12:00:00Z"
    assert out["next"]["plan"]["version"] == 2 and out["next"]["activeFrom"] == "2026-01-16T12:00:00Z"
    assert out["next"]["billingAnchor"] == sub["billingAnchor"]
    assert b.value("customer_1", "tokens")["hasAccess"] is True  # the entitlement moved over
    _refused(b, "POST", f"/api/v1/subscriptions/{out['next']['id']}/migrate", {"targetVersion": 2}, "targetVersion")


def test_restore_continues_a_canceled_subscription_and_drops_the_scheduled_next(billow: Billow) -> None:
    b = billow
    setup(b)
    published(b, plan_body("basic", "31"))
    published(b, plan_body("pro", "99"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    path = f"/api/v1/subscriptions/{sub['id']}/restore"
    _refused(b, "POST", path, None, "not canceled", 409)
    b.clock.set("2026-01-10T00:00:00Z")
    changed = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": "next_billing_cycle",
                                                                          "plan": {"key": "pro"}})
    assert changed["current"]["status"] == "canceled" and changed["next"]["status"] == "scheduled"
    restored = b.ok("POST", path)
    assert (restored["id"], restored["status"], restored["activeTo"]) == (sub["id"], "active", None)
    assert b.call("GET", f"/api/v1/subscriptions/{changed['next']['id']}")[0] == 404
    listed = b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]
    assert [(s["id"], s["status"]) for s in listed] == [(sub["id"], "active")]
    _refused(b, "POST", "/api/v1/subscriptions/01J0000000000000000000NONE/restore", None, "Not Found", 404)


def test_plan_addon_update(billow: Billow) -> None:
    b = billow
    setup(b)
    seats = published_seats(b)
    body = plan_body("team", "50")
    body["phases"].insert(0, {"key": "trial", "name": "Trial", "duration": "P1M", "rateCards": []})
    draft = b.ok("POST", "/api/v1/plans", body)
    pa = b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default"})
    path = f"/api/v1/plans/{draft['id']}/addons/{pa['id']}"
    got = b.ok("PUT", path, {"fromPlanPhase": "trial", "maxQuantity": 5, "metadata": {"team": "sales"}})
    assert (got["id"], got["fromPlanPhase"], got["maxQuantity"], got["metadata"]) == (pa["id"], "trial", 5, {"team": "sales"})
    assert got["addon"]["id"] == seats["id"]
    again = b.ok("GET", path)
    assert (again["fromPlanPhase"], again["maxQuantity"]) == ("trial", 5)
    for bad_body, name in [({}, "fromPlanPhase"), ({"fromPlanPhase": "nope"}, "fromPlanPhase"),
                           ({"fromPlanPhase": "trial", "maxQuantity": 0}, "maxQuantity"),
                           ({"fromPlanPhase": "trial", "metadata": {"a": 1}}, "metadata"), (["x"], "body")]:
        _refused(b, "PUT", path, bad_body, name)
    _refused(b, "PUT", f"/api/v1/plans/{draft['id']}/addons/01J0000000000000000000NONE", {"fromPlanPhase": "trial"},
             "Not Found", 404)
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    _refused(b, "PUT", path, {"fromPlanPhase": "default"}, "only a draft", 409)


def test_a_replaced_item_is_invoiced_version_by_version(billow: Billow) -> None:
    """The billing run bills each version of an edited item under its own key: April's base fee is 30 for 20 days
    and 60 for 10, so April owes 20 + 20 = 40 in all (billed 30 at the start, corrected later), May 60."""
    from tests.support.billing import PROFILE, invoices, scheduled_run

    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "30"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                 "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    b.clock.set("2026-04-21T00:00:00Z")
    b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}", {"customizations": [
        {"op": "add_item", "phaseKey": "default", "rateCard": {**SUPPORT, "key": "base", "name": "Base fee",
                                                                "price": {"type": "flat", "amount": "60",
                                                                          "paymentTerm": "in_advance"}}}]})
    b.clock.set("2026-04-21T00:10:00Z")
    scheduled_run(b)
    b.clock.set("2026-05-01T00:10:00Z")
    scheduled_run(b)
    assert scheduled_run(b)["invoices"] == []  # nothing more: re-runs bill nothing
    billed: dict[str, Decimal] = {}
    for inv in invoices(b):
        for ln in inv["lines"]:
            if ln["name"] == "Base fee":
                month = ln["period"]["from"][:7]
                billed[month] = billed.get(month, Decimal(0)) + Decimal(ln["totals"]["total"])
    assert billed == {"2026-04": Decimal("40.00"), "2026-05": Decimal("60.00")}


def test_any_edit_is_answered_without_a_server_error_and_leaves_a_sound_subscription(billow: Billow) -> None:
    """Property: random batches of edit operations (valid and not) on a three-phase subscription are answered with
    a 2xx or a problem+json 4xx, never a 5xx; after every accepted batch the phases still follow each other without
    gaps or overlaps and the subscription still renders and rates."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    b = billow
    setup(b)
    sub = _phased(b)
    path = f"/api/v1/subscriptions/{sub['id']}"
    b.clock.set("2026-01-10T00:00:00Z")
    junk = st.sampled_from([None, 5, "", "x", [], {}, "P1D", "bogus"])
    card = st.sampled_from([SUPPORT, {**SUPPORT, "key": "base"}, {**SUPPORT, "billingCadence": "P1W"}, {"type": "x"},
                            {**SUPPORT, "key": "extra", "price": None}])
    op = st.one_of(
        st.fixed_dictionaries({"op": st.just("add_item"), "phaseKey": st.sampled_from(["trial", "intro", "default", "no"]),
                               "rateCard": card}),
        st.fixed_dictionaries({"op": st.just("remove_item"), "phaseKey": st.sampled_from(["trial", "intro", "default"]),
                               "itemKey": st.sampled_from(["base", "support", "extra", "none"])}),
        st.fixed_dictionaries({"op": st.just("stretch_phase"), "phaseKey": st.sampled_from(["trial", "intro", "default"]),
                               "extendBy": st.sampled_from(["P1D", "P1M", "PT1H", "P-1D", "PT0S", "x", 3])}),
        st.fixed_dictionaries({"op": st.just("remove_phase"), "phaseKey": st.sampled_from(["trial", "intro", "default", "p2"]),
                               "shift": st.sampled_from(["next", "prev", "up"])}),
        st.fixed_dictionaries({"op": st.just("add_phase"), "phase": st.fixed_dictionaries({
            "key": st.sampled_from(["p2", "p3", "trial", "Bad Key"]), "name": st.sampled_from(["P", ""]),
            "startAfter": st.sampled_from(["P15D", "P1M", "P2M", "P1Y", "P1D", None, "x"]),
            "duration": st.sampled_from(["P1M", "P10D", None, "x"])})}),
        st.fixed_dictionaries({"op": st.sampled_from(["unschedule_edit", "bogus"])}),
        st.dictionaries(st.sampled_from(["op", "phaseKey", "itemKey", "rateCard", "phase", "shift", "extendBy"]), junk),
    )
    body = st.fixed_dictionaries({"customizations": st.lists(op, max_size=4)}, optional={
        "timing": st.sampled_from(["immediate", "next_billing_cycle", "2026-01-20T00:00:00Z", "2025-01-01T00:00:00Z", 7])})
    accepted = 0

    @given(body=body)
    @settings(max_examples=120, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    def edit(body: dict[str, Any]) -> None:
        nonlocal accepted
        status, out = b.call("PATCH", path, body)
        assert status < 500, (body, out)
        if status >= 400:
            assert out["status"] == status and out["detail"], out
            return
        accepted += 1
        phases = b.ok("GET", path)["phases"]
        for prev, nxt in zip(phases, phases[1:], strict=False):
            assert prev["activeTo"] == nxt["activeFrom"], phases
        assert all(p["activeTo"] is None or p["activeFrom"] < p["activeTo"] for p in phases), phases
        b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/charges", query={"at": "2026-02-20T00:00:00Z"})

    edit()
    assert accepted > 0

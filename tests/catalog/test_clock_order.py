"""A request takes its `now` when it begins; one that began later can write first. The earlier one then reads what
the later one wrote, stamped after its own `now`, and must not judge it as of that earlier instant (the resource
still running, not yet reset, ...) and write again. Each test plays the later request first (the clock forward),
then the earlier one (the clock set back): deterministic, no threads."""

from __future__ import annotations

from typing import Any

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, published, published_seats, setup

LATER, EARLIER = "2026-01-10T00:01:00Z", "2026-01-10T00:00:30Z"  # the later request's now; the earlier one's


def _subscribed(b: Billow) -> dict[str, Any]:
    setup(b)
    published(b, plan_body("basic", "10"))
    published(b, plan_body("pro", "20"))
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})  # type: ignore[no-any-return]


def _canceled_by_the_later(b: Billow, sub: dict[str, Any]) -> dict[str, Any]:
    b.clock.set(LATER)
    ended = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "immediate"})
    assert (ended["status"], ended["activeTo"]) == ("inactive", LATER)
    b.clock.set(EARLIER)  # the request that began first, answered second
    return ended  # type: ignore[no-any-return]


def _still(b: Billow, ended: dict[str, Any]) -> None:
    """The later cancel's answer holds: the subscription ended then, and the customer has no other."""
    b.clock.set(LATER)
    listed = b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]
    assert [(s["id"], s["activeTo"], s["status"]) for s in listed] == [(ended["id"], LATER, "inactive")]


def test_a_subscription_canceled_by_a_later_request_is_not_continued_by_an_earlier_one(billow: Billow) -> None:
    """Continue (unschedule-cancelation) read the subscription canceled at once by a request that began after it and
    wrote first: as of its own earlier `now` the end was still ahead ("canceled"), so it dropped the end: 200, the
    subscription running again after the cancel answered it ended. Now 409, the end kept."""
    b = billow
    ended = _canceled_by_the_later(b, _subscribed(b))
    status, out = b.call("POST", f"/api/v1/subscriptions/{ended['id']}/unschedule-cancelation")
    assert status == 409, out
    _still(b, ended)


def test_a_subscription_canceled_by_a_later_request_is_not_restored_by_an_earlier_one(billow: Billow) -> None:
    """Restore as continue, and before it deleted the customer's scheduled subscriptions (the next plan of a change at
    the next billing cycle): 409 now, the scheduled one kept."""
    b = billow
    sub = _subscribed(b)
    b.clock.set("2026-01-05T00:00:00Z")
    nxt = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change",
               {"timing": "next_billing_cycle", "plan": {"key": "pro"}})["next"]
    b.clock.set(LATER)
    ended = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "immediate"})
    b.clock.set(EARLIER)
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/restore")
    assert status == 409, out
    assert b.ok("GET", f"/api/v1/subscriptions/{nxt['id']}")["status"] == "scheduled"
    assert b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")["activeTo"] == ended["activeTo"] == LATER


def test_a_subscription_canceled_by_a_later_request_is_not_changed_by_an_earlier_one(billow: Billow) -> None:
    """A plan change read the subscription canceled at once by a later request: still running as of its `now`, it
    ended it at that earlier instant (the cancel's end moved earlier) and started the new plan: 200, the customer
    subscribed again after the cancel answered. Now 409, nothing written."""
    b = billow
    ended = _canceled_by_the_later(b, _subscribed(b))
    status, out = b.call("POST", f"/api/v1/subscriptions/{ended['id']}/change",
                         {"timing": "immediate", "plan": {"key": "pro"}})
    assert status == 409, out
    _still(b, ended)


def test_a_subscription_canceled_by_a_later_request_is_not_edited_by_an_earlier_one(billow: Billow) -> None:
    """An edit as of an instant before the later cancel's end rewrote an ended subscription's items: 409 now, as an
    edit after the cancel answers."""
    b = billow
    ended = _canceled_by_the_later(b, _subscribed(b))
    before = b.ok("GET", f"/api/v1/subscriptions/{ended['id']}")
    status, out = b.call("PATCH", f"/api/v1/subscriptions/{ended['id']}", {"customizations": [
        {"op": "remove_item", "phaseKey": "default", "itemKey": "tokens"}]})
    assert status == 409, out
    assert b.ok("GET", f"/api/v1/subscriptions/{ended['id']}") == before
    _still(b, ended)


def test_a_version_published_by_a_later_request_is_not_ended_before_its_start(billow: Billow) -> None:
    """An archive that began before the publish of the same version and wrote after it read the version not yet in
    force at its own `now` ("scheduled") and ended it there: 200 with an end before the start the publish answered.
    Now it is archived as of the publish: its end is not before its start."""
    b = billow
    setup(b)
    draft = b.ok("POST", "/api/v1/plans", plan_body("racing", "10"))
    b.clock.set(LATER)
    assert b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")["effectiveFrom"] == LATER
    b.clock.set(EARLIER)
    archived = b.ok("POST", f"/api/v1/plans/{draft['id']}/archive")
    assert (archived["effectiveFrom"], archived["effectiveTo"]) == (LATER, LATER)
    assert b.ok("GET", f"/api/v1/plans/{draft['id']}")["effectiveTo"] == LATER


def test_a_version_is_not_published_before_the_end_a_later_request_wrote_to_the_one_it_replaces(billow: Billow) -> None:
    """A publish of version 2 that began before the archive of version 1 and wrote after it made version 2 effective
    at its own earlier `now`: both versions in force between the two instants. Now version 2 starts where version 1
    ended."""
    b = billow
    setup(b)
    b.clock.set("2026-01-01T00:00:10Z")
    v1 = published(b, plan_body("racing", "10"))
    v2 = b.ok("POST", "/api/v1/plans/racing/next")
    b.clock.set(LATER)
    assert b.ok("POST", f"/api/v1/plans/{v1['id']}/archive")["effectiveTo"] == LATER
    b.clock.set(EARLIER)
    assert b.ok("POST", f"/api/v1/plans/{v2['id']}/publish")["effectiveFrom"] == LATER
    assert b.ok("GET", f"/api/v1/plans/{v1['id']}")["effectiveTo"] == LATER


def _seats_plan(b: Billow) -> dict[str, Any]:
    """Plan `team`, which offers add-on `seats` ($10 a seat a month), published; the add-on version."""
    setup(b)
    seats = published_seats(b)
    draft = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    return seats


def test_an_add_on_is_not_added_by_an_earlier_request_to_a_subscription_a_later_one_canceled(billow: Billow) -> None:
    """An add-on add read the subscription canceled at once by a later request and added the add-on from its own
    earlier `now`, before that end: 200 on an ended subscription, seats owed for the time between. Now 409."""
    b = billow
    seats = _seats_plan(b)
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme"})
    ended = _canceled_by_the_later(b, sub)
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                         {"addon": {"id": seats["id"]}, "quantity": 100, "timing": "immediate"})
    assert status == 409, out
    b.clock.set(LATER)
    assert b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/addons") == []
    _still(b, ended)


def test_an_add_on_quantity_set_by_an_earlier_request_answers_what_it_wrote(billow: Billow) -> None:
    """Two quantity changes at once, the later-begun first: the earlier one replaced the quantity the later one set
    from its instant (a change not yet started as of its own `now`), but answered as of that earlier `now`: the
    quantity before both (3), not the 0 it wrote. Now it answers as of the write it follows: 0, from that instant."""
    b = billow
    seats = _seats_plan(b)
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme"})
    added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                 {"addon": {"id": seats["id"]}, "quantity": 3, "timing": "immediate"})
    path = f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}"
    b.clock.set(LATER)
    assert b.ok("PATCH", path, {"quantity": 5, "timing": "immediate"})["quantity"] == 5
    b.clock.set(EARLIER)
    removed = b.ok("PATCH", path, {"quantity": 0, "timing": "immediate"})
    assert (removed["quantity"], removed["quantityAt"]) == (0, LATER)
    assert [(s["quantity"], s["activeFrom"]) for s in removed["timeline"]] == [(3, "2026-01-01T00:00:00Z"), (0, LATER)]

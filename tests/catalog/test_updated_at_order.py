"""An edit stamps `updatedAt`; a request takes its `now` when it begins, and one on a clock behind (another container)
or begun earlier can answer after an edit stamped later. Such an edit stamped its own, earlier `now`: `updatedAt`
moved backwards, and a client ordering or syncing by it (`orderBy=updatedAt`, "changed since") missed the change.
Now an edit stamps the later of its `now` and the `updatedAt` it replaces (timeutil.as_of). Each test edits with
the clock forward, then with it set back (as tests/catalog/test_clock_order.py), and reads the answer and a GET."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.catalog.conftest import Billow
from tests.conftest import t
from tests.support.billing import PROFILE, subscribed
from tests.support.catalog import plan_body, published_seats, setup

START, LATER, EARLIER = "2026-01-10T00:00:00Z", "2026-01-10T00:01:00Z", "2026-01-10T00:00:30Z"


def _edited_twice(b: Billow, path: str, body: Callable[[str], dict[str, Any]], later: str = LATER,
                  earlier: str = EARLIER) -> None:
    """PUT `path` with `body(name)`, the clock at `later`, then at `earlier`: both answers and a GET after hold
    `later`."""
    b.clock.set(later)
    assert b.ok("PUT", path, body("first"))["updatedAt"] == later
    b.clock.set(earlier)  # the request on a clock behind, answered second
    assert b.ok("PUT", path, body("second"))["updatedAt"] == later
    b.clock.set(later)
    assert b.ok("GET", path)["updatedAt"] == later


def test_a_meter_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    b.ok("POST", "/api/v1/meters", {"slug": "calls", "eventType": "call", "aggregation": "COUNT"})
    _edited_twice(b, "/api/v1/meters/calls", lambda name: {"name": name})


def test_a_billing_profile_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    profile = b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    body = {k: v for k, v in PROFILE.items() if k != "apps"}
    _edited_twice(b, f"/api/v1/billing/profiles/{profile['id']}", lambda name: {**body, "name": name})


def test_a_plan_and_an_add_on_draft_edit_on_a_clock_behind_keep_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    setup(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("basic", "10"))
    _edited_twice(b, f"/api/v1/plans/{plan['id']}", lambda name: {**plan_body("basic", "10"), "name": name})
    addon = b.ok("POST", "/api/v1/addons", {"key": "extra", "name": "Extra", "currency": "USD",
                                            "instanceType": "single", "rateCards": []})
    body = {k: addon[k] for k in ("key", "currency", "instanceType", "rateCards")}
    _edited_twice(b, f"/api/v1/addons/{addon['id']}", lambda name: {**body, "name": name},
                  later="2026-01-10T00:03:00Z", earlier="2026-01-10T00:02:00Z")


def test_a_plan_add_on_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    setup(b)
    seats = published_seats(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("basic", "10"))
    on = b.ok("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": seats["id"], "fromPlanPhase": "default"})
    path = f"/api/v1/plans/{plan['id']}/addons/{on['id']}"
    _edited_twice(b, path, lambda name: {"fromPlanPhase": "default", "metadata": {"name": name}})


def test_a_customer_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    setup(b)
    _edited_twice(b, "/api/v1/customers/acme", lambda name: {"key": "acme", "name": name,
                                                             "usageAttribution": {"subjectKeys": ["customer_1"]}})


def test_an_app_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    erp = b.ok("POST", "/api/v1/marketplace/listings/custom_invoicing/install",
               {"name": "ERP", "createBillingProfile": False})["app"]
    _edited_twice(b, f"/api/v1/apps/{erp['id']}", lambda name: {"type": "custom_invoicing", "name": name,
                                                                "enableDraftSyncHook": False,
                                                                "enableIssuingSyncHook": False})


def test_a_notification_channel_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    b.clock.set(START)
    body = {"type": "SLACK", "name": "ops", "url": "https://hooks.slack.com/services/T0/B0/x"}
    channel = b.ok("POST", "/api/v1/notification/channels", body)
    _edited_twice(b, f"/api/v1/notification/channels/{channel['id']}", lambda name: {**body, "name": name})


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_an_invoice_edit_on_a_clock_behind_keeps_updated_at(billow: Billow) -> None:
    b = billow
    subscribed(b, {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False}}})
    b.clock.set("2026-04-01T00:10:00Z")
    (inv,) = b.ok("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    _edited_twice(b, f"/api/v1/billing/invoices/{inv['id']}", lambda name: {"description": name},
                  later="2026-04-01T00:12:00Z", earlier="2026-04-01T00:11:00Z")


def test_a_grant_voided_on_a_clock_behind_its_creation_keeps_updated_at(billow: Billow) -> None:
    """DELETE /api/v1/grants/{id} stamps the void: never before the grant was made (its `updatedAt`)."""
    b = billow
    b.clock.set(START)
    setup(b)
    ent = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "tokens", "usagePeriod": {"interval": "MONTH", "anchor": START}})
    b.clock.set(LATER)
    grant = b.ok("POST", f"/api/v1/subjects/customer_1/entitlements/{ent['id']}/grants", {
        "amount": 10, "effectiveAt": START, "expiration": {"duration": "MONTH", "count": 1}})
    b.clock.set(EARLIER)
    b.ok("DELETE", f"/api/v1/grants/{grant['id']}")
    b.clock.set(LATER)
    (listed,) = b.ok("GET", f"/api/v1/subjects/customer_1/entitlements/{ent['id']}/grants")
    assert listed["voidedAt"] and listed["updatedAt"] == LATER, listed


def test_a_customer_update_begun_before_another_that_writes_first_keeps_updated_at(billow: Billow,
                                                                                    monkeypatch: Any) -> None:
    """Two updates of one customer at once (last writer wins): the one on a clock behind read the customer, then the
    other wrote (stamped later); its write must not stamp the customer before that. Here the other update runs
    between this one's read and its write (a hook on the store's write), deterministic."""
    from billow.services import directory

    b = billow
    b.clock.set(START)
    setup(b)
    meta = b.c.meta
    write = meta.put_customer
    ran: list[dict[str, Any]] = []

    def other_first(*args: Any, **kw: Any) -> None:
        if not ran:
            ran.append({})
            ran[0] = directory.update_customer(b.c.namespace, "acme", {
                "key": "acme", "name": "other", "usageAttribution": {"subjectKeys": ["customer_1"]}},
                meta=meta, now=t(LATER))
        write(*args, **kw)

    monkeypatch.setattr(meta, "put_customer", other_first)
    b.clock.set(EARLIER)
    mine = b.ok("PUT", "/api/v1/customers/acme", {"key": "acme", "name": "mine",
                                                   "usageAttribution": {"subjectKeys": ["customer_1"]}})
    assert ran[0]["updatedAt"] == LATER
    assert (mine["name"], mine["updatedAt"]) == ("mine", LATER)
    stored = b.ok("GET", "/api/v1/customers/acme")
    assert (stored["name"], stored["updatedAt"]) == ("mine", LATER)


def test_pending_lines_added_on_a_clock_behind_keep_the_gathering_invoice_s_updated_at(billow: Billow) -> None:
    """POST /api/v1/billing/customers/{c}/invoices/pending-lines puts the lines on the customer's gathering invoice
    and stamped it with the request's own `now`: a second add on a clock behind (another container) moved the
    gathering invoice's updatedAt back, although it now held more lines. Now it is stamped never before the
    updatedAt it replaces, as every other edit."""
    b = billow
    b.clock.set(START)
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    path = "/api/v1/billing/customers/acme/invoices/pending-lines"

    def add(name: str) -> dict[str, Any]:
        return b.ok("POST", path, {"currency": "USD", "lines": [{  # type: ignore[no-any-return]
            "name": name, "period": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
            "invoiceAt": "2026-01-02T00:00:00Z", "price": {"type": "flat", "amount": "5"}}]})

    b.clock.set(LATER)
    assert add("first")["invoice"]["updatedAt"] == LATER
    b.clock.set(EARLIER)  # the second add on a clock behind, answered second
    assert add("second")["invoice"]["updatedAt"] == LATER
    b.clock.set(LATER)
    (gathering,) = b.ok("GET", "/api/v1/billing/invoices", query={"statuses": "gathering"})["items"]
    assert gathering["updatedAt"] == LATER

"""`POST /api/v1/billing/invoices/invoice` for a customer the billing run skipped answers a 409 problem naming the
customer and why, never `201 []` (which says nothing was due): here a concurrent billing run (e.g. `billow serve`'s
scheduled one) billed the customer between this call's rating and its commit. Found from outside
(tests/e2e/test_billing_outside.py's probe saw `201 []` while the customer's invoice was made by the scheduler).

The race is made deterministic: the real scheduled run (functions/billing_run) runs, and commits, just before this
call's commit in the real store; nothing is mocked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.billing.conftest import Billow
from tests.support.billing import invoices, scheduled_run, subscribed


def test_a_customer_billed_by_a_concurrent_run_meanwhile_is_a_409_naming_it(billow: Billow,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    b = billow
    subscribed(b)
    customer = b.ok("GET", "/api/v1/customers/acme")
    b.clock.set("2026-04-01T00:10:00Z")
    store = b.c.billing_store()
    commit = store.commit_billing
    concurrent: list[dict[str, Any]] = []

    def commit_after_a_concurrent_run(*args: Any, **kwargs: Any) -> None:
        if not concurrent:  # this call has rated the customer; the scheduled run bills it first
            concurrent.append({})
            concurrent[0] = scheduled_run(b)
        commit(*args, **kwargs)

    monkeypatch.setattr(store, "commit_billing", commit_after_a_concurrent_run)
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    (theirs,) = concurrent[0]["invoices"]
    assert status == 409, (status, out)
    assert "acme" in out["detail"] and customer["id"] in out["detail"] and "concurrent run" in out["detail"]
    assert (out["customerId"], out["invoices"]) == (customer["id"], [])
    assert [(i["id"], i["totals"]["total"]) for i in invoices(b)] == [(theirs, "49.99")]  # billed once
    monkeypatch.undo()
    assert b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"}) == (201, [])  # nothing due


def test_a_customer_without_a_billing_profile_is_a_409_naming_it(billow: Billow) -> None:
    """No profile applies (none was made and the namespace's provisioned one is gone): the run skips the customer;
    the call says so instead of answering that nothing was due."""
    b = billow
    from tests.support.catalog import plan_body, published, setup

    setup(b)
    for p in b.ok("GET", "/api/v1/billing/profiles")["items"]:
        b.ok("DELETE", f"/api/v1/billing/profiles/{p['id']}")
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "10"))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    status, out = b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"})
    assert status == 409 and "acme" in out["detail"] and "no billing profile" in out["detail"], (status, out)


def test_a_concurrent_run_on_a_period_that_owes_nothing_is_no_conflict(billow: Billow,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs find April owing nothing (a usage-only plan, no usage) and both mark its points closed-by-nothing:
    this call lost that race, but it had nothing to invoice and neither did the other run, so it answers `201 []`
    (nothing due). Since empty points are marked (131a293) the lost race was a 409 'billed by a concurrent run'."""
    from tests.support.billing import PROFILE
    from tests.support.catalog import metered_plan, published, setup

    b = billow
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, metered_plan({"type": "unit", "amount": "1"}))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "metered"}, "customerKey": "acme",
                                           "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-05-01T00:10:00Z")
    store = b.c.billing_store()
    commit = store.commit_billing
    concurrent: list[dict[str, Any]] = []

    def commit_after_a_concurrent_run(*args: Any, **kwargs: Any) -> None:
        if not concurrent:
            concurrent.append({})
            concurrent[0] = scheduled_run(b)
        commit(*args, **kwargs)

    monkeypatch.setattr(store, "commit_billing", commit_after_a_concurrent_run)
    assert b.call("POST", "/api/v1/billing/invoices/invoice", {"customerId": "acme"}) == (201, [])
    assert concurrent[0]["invoices"] == [] and concurrent[0]["skipped"] == [] and invoices(b) == []

"""A draft invoice deleted before it is issued (DELETE /api/v1/billing/invoices/{id}) bills nothing, and nothing it
held is lost: what it billed of each subscription period is billed again by the next run, exactly once, as a first
charge (no correction), also when it is deleted after the period's correction window closed, and a correction made
after it stands. Found from outside (tests/e2e/test_billing_outside.py::test_a_deleted_draft_is_billed_again_once):
the draft's billing marks kept saying its periods were billed, so its charges were never billed again.

On the embedded harness (SQLite meta store) and on PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.sql_billing import SqlBillingStore
from tests.billing.conftest import Billow
from tests.billing.test_billing_run import pg_billow
from tests.support.billing import PROFILE, invoices, scheduled_run, subscribed

__all__ = ["pg_billow"]
MANUAL = {**PROFILE, "workflow": {"invoicing": {"autoAdvance": False, "dueAfter": "P14D"}}}


def _lines(inv: dict[str, Any]) -> dict[str, Decimal]:
    return {ln["name"]: Decimal(ln["totals"]["total"]) for ln in inv["lines"]}


def _corrections(inv: dict[str, Any]) -> list[str]:
    return [ch["name"] for ln in inv["lines"] for ch in ln["children"] if "(correction)" in ch["name"]]


def _made(b: Billow) -> dict[str, Any]:
    """One run, which makes exactly one invoice: that invoice."""
    (made,) = scheduled_run(b)["invoices"]
    return b.ok("GET", f"/api/v1/billing/invoices/{made}")


def _delete(b: Billow, inv: dict[str, Any]) -> None:
    assert b.call("DELETE", f"/api/v1/billing/invoices/{inv['id']}")[0] == 204
    assert b.call("GET", f"/api/v1/billing/invoices/{inv['id']}")[0] == 404


def _deleted_drafts_are_billed_again_once(b: Billow) -> None:
    subscribed(b, MANUAL)
    b.clock.set("2026-04-01T00:10:00Z")
    d1 = _made(b)
    assert (d1["status"], _lines(d1)) == ("draft", {"Base fee": Decimal("49.99")})
    _delete(b, d1)
    d2 = _made(b)  # April's fee again, as a first charge
    assert (_lines(d2), _corrections(d2)) == ({"Base fee": Decimal("49.99")}, [])
    assert scheduled_run(b)["invoices"] == []  # once

    b.usage(600, "2026-04-05T10:00:00Z")
    b.clock.set("2026-05-01T00:10:00Z")
    d3 = _made(b)  # April's usage, May's fee
    assert _lines(d3) == {"Tokens": Decimal("6.00"), "Base fee": Decimal("49.99")}
    b.usage(100, "2026-04-29T09:00:00Z")  # late: a correction on a draft of its own
    b.clock.set("2026-05-02T00:00:00Z")
    d4 = _made(b)
    assert _lines(d4) == {"Tokens": Decimal("1.00")}
    _delete(b, d3)  # its part of April's usage and May's fee is owed again; the correction d4 stands
    d5 = _made(b)
    assert _lines(d5) == {"Tokens": Decimal("6.00"), "Base fee": Decimal("49.99")}  # 700 tokens = 7.00, 1.00 billed
    assert scheduled_run(b)["invoices"] == []

    b.clock.set("2026-05-20T00:00:00Z")  # April's correction window (7 days after it) has closed
    assert scheduled_run(b)["invoices"] == []
    _delete(b, d5)
    d6 = _made(b)  # billed again all the same: May's fee as a first charge, April's usage beyond what d4 billed
    assert (_lines(d6), _corrections(d6)) == ({"Tokens": Decimal("6.00"), "Base fee": Decimal("49.99")},
                                              ["Tokens: usage price for tier 1 (correction)"])
    assert scheduled_run(b)["invoices"] == []
    for inv in (d2, d4, d6):
        assert b.ok("POST", f"/api/v1/billing/invoices/{inv['id']}/approve")["status"] == "paid"
    b.clock.set("2026-05-21T00:00:00Z")
    assert scheduled_run(b)["invoices"] == []
    billed: dict[str, Decimal] = {}
    for inv in invoices(b):  # the deleted drafts are not listed
        for name, total in _lines(inv).items():
            billed[name] = billed.get(name, Decimal(0)) + total
    assert [i["id"] for i in invoices(b)] == sorted([d2["id"], d4["id"], d6["id"]])
    assert billed == {"Base fee": Decimal("99.98"), "Tokens": Decimal("7.00")}  # April's and May's fee, 700 tokens


def test_deleted_drafts_are_billed_again_once(billow: Billow) -> None:
    _deleted_drafts_are_billed_again_once(billow)


def test_deleted_drafts_are_billed_again_once_on_postgres(pg_billow: Billow) -> None:
    _deleted_drafts_are_billed_again_once(pg_billow)


def test_a_deleted_draft_is_never_issued(billow: Billow) -> None:
    """A draft waiting for auto-approval that is deleted is not issued when its draft period ends (before, the run
    issued it: it was still a draft to the store, with deletedAt set)."""
    b = billow
    subscribed(b, {**PROFILE, "workflow": {"invoicing": {"draftPeriod": "P1D", "dueAfter": "P14D"}}})
    b.clock.set("2026-04-01T00:10:00Z")
    (d1,) = scheduled_run(b)["invoices"]
    assert b.ok("GET", f"/api/v1/billing/invoices/{d1}")["statusDetails"]["extendedStatus"] == "draft.waiting_auto_approval"
    assert b.call("DELETE", f"/api/v1/billing/invoices/{d1}")[0] == 204
    b.clock.set("2026-04-03T00:00:00Z")
    scheduled_run(b)  # bills April's fee again (on a draft that is issued at once: its draft period is over)
    stored = b.c.store(SqlBillingStore).get_invoice(b.c.settings.namespace, d1)
    assert (stored["status"], stored["issuedAt"], bool(stored["deletedAt"])) == ("draft", None, True)
    assert [(_lines(i), i["status"]) for i in invoices(b)] == [({"Base fee": Decimal("49.99")}, "draft")]


@pytest.mark.parametrize("status", ["paid"])
def test_only_a_draft_can_be_deleted(billow: Billow, status: str) -> None:
    b = billow
    subscribed(b)
    b.clock.set("2026-04-01T00:10:00Z")
    (inv,) = scheduled_run(b)["invoices"]
    assert b.ok("GET", f"/api/v1/billing/invoices/{inv}")["status"] == status
    code, out = b.call("DELETE", f"/api/v1/billing/invoices/{inv}")
    assert code == 409 and "available actions" in out["detail"]
    assert scheduled_run(b)["invoices"] == []

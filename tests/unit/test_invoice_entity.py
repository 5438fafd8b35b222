"""The typed Invoice (billow.domain.invoices.Invoice): one mapper to and from OpenMeter's JSON that gives back the
document byte for byte (key order included, also for documents written before the entity existed), and the
lifecycle state machine on the typed model (statuses, actions, immutability, issue and due dates, void)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from billow import jsonx
from billow.domain.invoices import Invoice
from billow.errors import Conflict
from tests.conftest import t

NOW = t("2026-05-01T00:00:00Z")


def stored(ext: str = "draft.ready_to_issue", failed: bool = False, **extra: Any) -> dict[str, Any]:
    """An invoice document in the order services/invoices.new_invoice wrote them before the typed entity."""
    status = ext.split(".", 1)[0]
    doc: dict[str, Any] = {
        "id": "01INV", "number": "ACME-0001", "type": "standard", "currency": "USD", "description": None,
        "metadata": None, "createdAt": "2026-04-01T00:00:00Z", "updatedAt": "2026-04-01T00:00:00Z", "deletedAt": None,
        "supplier": {"name": "Billow Inc."}, "customer": {"id": "01CUS", "key": "acme", "name": "Acme"},
        "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"},
        "lines": [{"id": "l1", "totals": {"amount": "49.99", "discountsTotal": "0"}}],
        "totals": {"amount": "49.99", "chargesTotal": "0", "discountsTotal": "0", "creditsTotal": "0",
                   "taxesInclusiveTotal": "0", "taxesExclusiveTotal": "0", "taxesTotal": "0", "total": "49.99"},
        "workflow": {"sourceBillingProfileId": "01PRO", "apps": {"tax": "sandbox", "invoicing": "stripe",
                                                                 "payment": "stripe"},
                     "workflow": {"invoicing": {"autoAdvance": True, "draftPeriod": "P1D", "dueAfter": "P14D"},
                                  "payment": {"collectionMethod": "charge_automatically"}}},
        "externalIds": {}, "validationIssues": [], "issuedAt": None, "dueAt": None, "draftUntil": None,
        "status": status, "statusDetails": {"extendedStatus": ext, "failed": failed,
                                            "immutable": status not in ("gathering", "draft"),
                                            "availableActions": {}},
    }
    doc.update(extra)
    return doc


def with_actions(doc: dict[str, Any], actions: dict[str, Any]) -> dict[str, Any]:
    doc["statusDetails"]["availableActions"] = actions
    return doc


@pytest.mark.parametrize("doc", [
    with_actions(stored(), {"advance": {"resultingState": "issued"}, "delete": {"resultingState": "deleted"},
                            "void": {"resultingState": "voided"}}),
    with_actions(stored("issuing.failed", True, validationIssues=[{"severity": "critical", "code": "app_sync_failed",
                                                                   "component": "stripe", "message": "down"}]),
                 {"retry": {"resultingState": "issued"}, "void": {"resultingState": "voided"}}),
    with_actions(stored("paid", issuedAt="2026-05-01T00:00:00Z", dueAt="2026-05-15T00:00:00Z",
                        externalIds={"invoicing": "in_1", "payment": "in_1"},
                        documents={"status": "ready", "html": "a.html", "pdf": "a.pdf"}), {}),
    with_actions(stored("voided", voidedAt="2026-05-02T00:00:00Z"), {}),
])
def test_the_mapper_gives_the_document_back_byte_for_byte(doc: dict[str, Any]) -> None:
    text = jsonx.dumps(doc)
    assert jsonx.dumps(Invoice.from_json(jsonx.loads(text)).to_json()) == text


def test_lifecycle_on_the_typed_model() -> None:
    inv = Invoice.from_json(stored())
    assert (inv.status, inv.extended_status, inv.invoicing_app, inv.payment_app, inv.customer_id) == \
        ("draft", "draft.ready_to_issue", "stripe", "stripe", "01CUS")
    assert inv.mutable and sorted(inv.available_actions()) == ["advance", "delete", "void"]
    with pytest.raises(Conflict, match="cannot approve invoice ACME-0001 in state draft.ready_to_issue"):
        inv.require("approve")
    inv.set_status("issuing.syncing")
    assert not inv.mutable and inv.to_json()["statusDetails"] == {
        "extendedStatus": "issuing.syncing", "failed": False, "immutable": True,
        "availableActions": {"void": {"resultingState": "voided"}}}
    with pytest.raises(Conflict, match="cannot be changed once it is being issued"):
        inv.require_mutable()
    inv.issued(NOW)  # stripe's payment app: payment processing, due after 14 days, documents pending
    doc = inv.to_json()
    assert (doc["status"], doc["issuedAt"], doc["dueAt"], doc["documents"]) == \
        ("payment_processing", "2026-05-01T00:00:00Z", "2026-05-15T00:00:00Z", {"status": "pending"})
    assert list(doc)[-3:] == ["status", "statusDetails", "documents"]  # new keys where the old code put them
    inv.void(NOW)
    doc = inv.to_json()
    assert (doc["status"], doc["voidedAt"], doc["updatedAt"]) == ("voided", "2026-05-01T00:00:00Z",
                                                                  "2026-05-01T00:00:00Z")
    assert list(doc)[-1] == "voidedAt"


def test_nothing_due_or_the_sandbox_is_paid_at_issue() -> None:
    free = stored(totals={**stored()["totals"], "total": "0"})
    inv = Invoice.from_json(free)
    inv.issued(NOW)
    assert inv.status == "paid" and inv.due == 0
    sandbox = copy.deepcopy(stored())
    sandbox["workflow"]["apps"]["payment"] = "sandbox"
    inv = Invoice.from_json(sandbox)
    inv.issued(NOW)
    assert inv.status == "paid"


def test_overdue_only_after_the_due_date() -> None:
    inv = Invoice.from_json(stored("payment_processing.pending", dueAt="2026-05-15T00:00:00Z"))
    assert not inv.overdue_at(t("2026-05-14T23:59:59Z"))
    assert inv.overdue_at(t("2026-05-15T00:00:00Z"))

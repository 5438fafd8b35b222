"""Issue 16: a custom invoicing app with `enableDraftSyncHook` holds its invoices in draft (`draft.syncing`) until
the user's system calls `POST /api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized`, as OpenMeter's
state machine does (draft.syncing advances only when CanDraftSyncAdvance: the draft-synced-at mark the call-back
sets); then the invoice goes on (here it is issued at once: the app's issuing hook is off)."""

from __future__ import annotations

import pytest

from tests.apps.conftest import Billow
from tests.apps.test_apps import subscribed_no_profile
from tests.support.billing import PROFILE, scheduled_run

LISTINGS = "/api/v1/marketplace/listings"


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_an_invoice_waits_in_draft_for_the_draft_sync_call_back(billow: Billow) -> None:
    b = billow
    erp = b.ok("POST", f"{LISTINGS}/custom_invoicing/install", {"name": "ERP", "createBillingProfile": False})["app"]
    erp = b.ok("PUT", f"/api/v1/apps/{erp['id']}", {"type": "custom_invoicing", "name": "ERP",
                                                    "enableDraftSyncHook": True, "enableIssuingSyncHook": False})
    assert erp["enableDraftSyncHook"] is True
    sandbox = next(a for a in b.ok("GET", "/api/v1/apps")["items"] if a["type"] == "sandbox")
    b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "apps": {"tax": sandbox["id"], "invoicing": erp["id"],
                                                                  "payment": erp["id"]}})
    subscribed_no_profile(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    (inv,) = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert (inv["status"], inv["statusDetails"]["extendedStatus"]) == ("draft", "draft.syncing"), inv["statusDetails"]
    assert "advance" not in inv["statusDetails"]["availableActions"]
    status, _ = b.call("POST", f"/api/v1/billing/invoices/{inv['id']}/advance")
    assert status in (400, 409)
    scheduled_run(b)  # another run does not move it either
    assert b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")["statusDetails"]["extendedStatus"] == "draft.syncing"
    b.ok("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/draft/synchronized", {"invoicing": {"invoiceId": "erp-7"}})
    synced = b.ok("GET", f"/api/v1/billing/invoices/{inv['id']}")
    assert synced["status"] in ("issued", "payment_processing") and synced["issuedAt"], synced["statusDetails"]
    assert synced["externalIds"]["invoicing"] == "erp-7"
    assert "openmeter.io/custominvoicing/draft-synced-at" in (synced["metadata"] or {})
    # a second call-back for an issued invoice changes nothing: it is not a draft any more
    assert b.call("POST", f"/api/v1/apps/custom-invoicing/{inv['id']}/draft/synchronized", {"invoicing": {}})[0] \
        in (400, 409)


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_a_deleted_draft_reaches_the_custom_invoicing_system_as_invoice_updated(billow: Billow) -> None:
    """OpenMeter's custom invoicing app does nothing itself when a draft is deleted ("this should happen via the
    notifications webhook"): the deletion's state changes publish invoice.updated events carrying the invoice, the last
    with status `deleted`. Billow sends the same event (one: the deleted invoice, status and extendedStatus `deleted`,
    deletedAt set, immutable, no action left), so the user's system, which got the draft to sync, hears it is gone.
    Before, DELETE sent nothing: the system kept a draft that no longer exists."""
    b = billow
    erp = b.ok("POST", f"{LISTINGS}/custom_invoicing/install", {"name": "ERP", "createBillingProfile": False})["app"]
    b.ok("PUT", f"/api/v1/apps/{erp['id']}", {"type": "custom_invoicing", "name": "ERP", "enableDraftSyncHook": True,
                                              "enableIssuingSyncHook": True})
    sandbox = next(a for a in b.ok("GET", "/api/v1/apps")["items"] if a["type"] == "sandbox")
    b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "apps": {"tax": sandbox["id"], "invoicing": erp["id"],
                                                                  "payment": erp["id"]}})
    hook = b.ok("POST", "/api/v1/notification/channels", {"type": "WEBHOOK", "name": "erp",
                                                           "url": "https://erp.example.com/openmeter"})
    rule = b.ok("POST", "/api/v1/notification/rules", {"type": "invoice.updated", "name": "to the ERP",
                                                        "channels": [hook["id"]]})
    subscribed_no_profile(b)
    b.clock.set("2026-04-01T00:10:00Z")
    scheduled_run(b)
    (draft,) = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert draft["statusDetails"]["extendedStatus"] == "draft.syncing"
    before = b.ok("GET", "/api/v1/notification/events", query={"rule": rule["id"]})["items"]
    b.clock.set("2026-04-01T09:30:00Z")
    assert b.call("DELETE", f"/api/v1/billing/invoices/{draft['id']}")[0] == 204
    events = b.ok("GET", "/api/v1/notification/events", query={"rule": rule["id"]})["items"]
    (deleted,) = [e for e in events if e["id"] not in {x["id"] for x in before}]
    assert deleted["type"] == "invoice.updated"
    sent = deleted["payload"]["data"]
    assert (sent["id"], sent["number"], sent["status"], sent["deletedAt"]) == \
        (draft["id"], draft["number"], "deleted", "2026-04-01T09:30:00Z")
    assert sent["statusDetails"] == {"extendedStatus": "deleted", "failed": False, "immutable": True,
                                     "availableActions": {}}
    assert sent["workflow"]["apps"]["invoicing"]["id"] == erp["id"]  # the custom invoicing app it was for
    # the call-backs the system may still send for it are refused: the invoice is gone
    assert b.call("POST", f"/api/v1/apps/custom-invoicing/{draft['id']}/draft/synchronized", {})[0] == 404

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

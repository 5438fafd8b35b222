"""Issue 16: `PUT /api/v1/billing/profiles/{id}` (OpenMeter's BillingProfileReplaceUpdateWithWorkflow: name,
description, metadata, supplier, default, workflow; no apps) never changes the profile's apps. OpenMeter decodes the
body into that type, so an `apps` sent along is ignored (billing/httpdriver/profile.go UpdateProfile): the rest of
the replace applies, the apps stay the ones the profile was created with."""

from __future__ import annotations

import pytest

from tests.apps.conftest import Billow
from tests.support.billing import PROFILE

LISTINGS = "/api/v1/marketplace/listings"


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_replacing_a_profile_keeps_its_apps(billow: Billow) -> None:
    b = billow
    sandbox = b.ok("POST", f"{LISTINGS}/sandbox/install", {"name": "Sandbox", "createBillingProfile": False})["app"]
    erp = b.ok("POST", f"{LISTINGS}/custom_invoicing/install", {"name": "ERP", "createBillingProfile": False})["app"]
    ids = {"tax": sandbox["id"], "invoicing": sandbox["id"], "payment": sandbox["id"]}
    profile = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "apps": ids})
    apps = profile["apps"]
    assert apps["invoicing"] == {"id": sandbox["id"], "type": "sandbox"}
    body = {k: v for k, v in PROFILE.items() if k != "apps"}
    replaced = b.ok("PUT", f"/api/v1/billing/profiles/{profile['id']}",
                    {**body, "name": "Renamed", "apps": {"tax": sandbox["id"], "invoicing": erp["id"],
                                                         "payment": erp["id"]}})
    assert replaced["name"] == "Renamed" and replaced["apps"] == apps
    again = b.ok("GET", f"/api/v1/billing/profiles/{profile['id']}")
    assert again["name"] == "Renamed" and again["apps"] == apps
    # without apps (OpenMeter's own body) it replaces too, apps unchanged
    assert b.ok("PUT", f"/api/v1/billing/profiles/{profile['id']}", {**body, "name": "Plain"})["apps"] == apps

"""A subject seen only in events is given no entitlement, as in OpenMeter (issue 16 item 3, checked against
OpenMeter's source): its v1 createEntitlement (openmeter/entitlement/driver/entitlement.go, CreateEntitlement ->
resolveCustomerFromSubject) looks the subject up in the subject store (subject/adapter/subject.go GetByIdOrKey:
404 "subject not found") and then its customer by usage attribution (customer/service/customer.go
GetCustomerByUsageAttribution: 404); ingest never creates subjects. Billow answers 404 naming the subject, and the
same key is entitled once it is a subject (or a customer's)."""

from __future__ import annotations

from tests.entitlements.conftest import Billow

BOOLEAN = {"type": "boolean", "featureKey": "flag"}


def test_a_subject_seen_only_in_events_gets_no_entitlement_until_it_is_a_subject(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "flag", "name": "Flag"})
    b.usage(5, "2026-01-01T00:00:00Z", subject="only_in_events")
    status, out = b.call("POST", "/api/v1/subjects/only_in_events/entitlements", BOOLEAN)
    assert status == 404 and "only_in_events" in out["detail"], (status, out)
    assert b.ok("GET", "/api/v1/entitlements") == []  # nothing was created
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["only_in_events"]}})
    made = b.ok("POST", "/api/v1/subjects/only_in_events/entitlements", BOOLEAN)
    assert made["subjectKey"] == "only_in_events" and made["featureKey"] == "flag"

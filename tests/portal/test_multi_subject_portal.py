"""A portal token for any subject of a customer with several subjects shows the customer's entitlements, valued
on the usage of all its subjects (issue 16 item 2), and still only that customer's."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tests.portal.conftest import Deployment


def test_every_subject_of_a_customer_sees_its_entitlements_counting_all_subjects(aws: Deployment) -> None:
    aws.admin("POST", "/api/v1/customers", {"name": "Acme Inc", "key": "acme_inc",
                                            "usageAttribution": {"subjectKeys": ["acme", "acme-eu"]}})
    aws.admin("POST", "/api/v1/customers", {"name": "Globex", "key": "globex_inc",
                                            "usageAttribution": {"subjectKeys": ["globex"]}})
    aws.admin("POST", "/api/v1/features", {"key": "ai", "name": "AI tokens", "meterSlug": "tokens"})
    ent = aws.admin("POST", "/api/v1/subjects/acme/entitlements",
                    {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}, "isSoftLimit": True})
    aws.admin("POST", "/api/v1/subjects/globex/entitlements",
              {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}})
    aws.clock.t += timedelta(minutes=1)
    for subject, tokens in (("acme", 3), ("acme-eu", 4), ("globex", 1000)):
        aws.gw.usage(aws.keys["admin"], subject, tokens, "2026-03-10T12:00:30Z")
    for subject in ("acme", "acme-eu"):
        (shown,) = aws.portal("/api/v1/portal/entitlements", aws.token(subject)["token"])[1]
        assert shown["id"] == ent["id"] and Decimal(str(shown["value"]["usage"])) == Decimal(7), subject

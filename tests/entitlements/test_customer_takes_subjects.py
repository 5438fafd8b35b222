"""A customer is one billable party: one live entitlement per feature, reached through each of its subjects
(usageAttribution.subjectKeys). A customer's create or update giving it a subject that has an entitlement of a
feature another of its subjects has one of too is refused (409 naming the feature, nothing written); before, it
answered 200 and the customer had two live entitlements of one feature, one request after another."""

from __future__ import annotations

from typing import Any

from tests.entitlements.conftest import Billow

ACCESS = {"type": "boolean", "featureKey": "ai_access"}


def _features(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "ai_access", "name": "AI access"})
    b.ok("POST", "/api/v1/features", {"key": "exports", "name": "Exports"})


def _customer(subjects: list[str]) -> dict[str, Any]:
    return {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": subjects}}


def _features_of(b: Billow, customer: str) -> list[str]:
    items = b.ok("GET", f"/api/v2/customers/{customer}/entitlements")["items"]
    return sorted(e["featureKey"] for e in items)


def test_an_update_taking_a_subject_with_an_entitlement_of_a_feature_the_customer_has_is_refused(billow: Billow) -> None:
    b = billow
    """customer_1 is the customer's (its entitlement of ai_access made through the customer, v2); customer_2, a
    subject of its own (/subjects), has one of ai_access too (v1). PUT /api/v1/customers/acme adding customer_2:
    409 naming ai_access and the taken subject's entitlement; the customer keeps its one subject and entitlement."""
    _features(b)
    b.ok("POST", "/api/v1/customers", _customer(["customer_1"]))
    mine = b.ok("POST", "/api/v2/customers/acme/entitlements", ACCESS)
    theirs = b.ok("POST", "/api/v1/subjects/customer_2/entitlements", ACCESS)
    status, out = b.call("PUT", "/api/v1/customers/acme", _customer(["customer_1", "customer_2"]))
    assert status == 409, out
    assert "ai_access" in out["detail"] and "usageAttribution.subjectKeys" in out["detail"], out
    assert out["conflictingEntityId"] == theirs["id"], out
    assert mine["id"] in out["detail"], out
    assert b.ok("GET", "/api/v1/customers/acme")["usageAttribution"]["subjectKeys"] == ["customer_1"]
    assert _features_of(b, "acme") == ["ai_access"]
    assert b.ok("GET", "/api/v1/subjects/customer_2/entitlements/ai_access/value")["hasAccess"] is True


def test_a_create_taking_two_subjects_with_entitlements_of_one_feature_is_refused(billow: Billow) -> None:
    b = billow
    """POST /api/v1/customers with two subjects of their own that each have an entitlement of ai_access: 409,
    no customer made (the keys stay free: a customer made with one of them afterwards is 201)."""
    _features(b)
    for subject in ("customer_1", "customer_2"):
        b.ok("POST", f"/api/v1/subjects/{subject}/entitlements", ACCESS)
    status, out = b.call("POST", "/api/v1/customers", _customer(["customer_1", "customer_2"]))
    assert status == 409, out
    assert "ai_access" in out["detail"], out
    assert b.ok("GET", "/api/v1/customers")["items"] == []
    b.ok("POST", "/api/v1/customers", _customer(["customer_1"]))
    assert _features_of(b, "acme") == ["ai_access"]


def test_taking_subjects_whose_entitlements_are_of_other_features_gives_the_customer_all_of_them(billow: Billow) -> None:
    b = billow
    """No feature twice: the update answers 200 and the customer has every entitlement of its subjects; an update
    that takes no subject (a rename) is not checked against anything."""
    _features(b)
    b.ok("POST", "/api/v1/customers", _customer(["customer_1"]))
    b.ok("POST", "/api/v2/customers/acme/entitlements", ACCESS)
    b.ok("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "exports"})
    b.ok("PUT", "/api/v1/customers/acme", _customer(["customer_1", "customer_2"]))
    assert _features_of(b, "acme") == ["ai_access", "exports"]
    b.ok("PUT", "/api/v1/customers/acme", {**_customer(["customer_1", "customer_2"]), "name": "Acme Inc"})


def test_a_subject_of_another_customer_is_refused_naming_that_customer(billow: Billow) -> None:
    b = billow
    _features(b)
    other = b.ok("POST", "/api/v1/customers", {"key": "other", "name": "Other",
                                               "usageAttribution": {"subjectKeys": ["customer_2"]}})
    b.ok("POST", "/api/v1/customers", _customer(["customer_1"]))
    status, out = b.call("PUT", "/api/v1/customers/acme", _customer(["customer_1", "customer_2"]))
    assert status == 409, out
    assert out["conflictingEntityId"] == other["id"] and "customer_2" in out["detail"], out

"""POST /api/v1/stripe/checkout/sessions with a customer to create (`customer` as POST /customers' body) runs the
check POST /customers runs where the customer is written (entitlements.customer_takes): a customer is one billable
party with one live entitlement per feature, so taking two subjects that each have one of a feature is refused, 409,
before anything is written here or at Stripe. On the embedded meta store (SQLite) and on PostgreSQL (the AWS one),
with the Stripe stand-in as Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps.conftest import Billow
from tests.entitlements.conftest import on_meta_store
from tests.stripe_standin.server import StandIn

CHECKOUT = "/api/v1/stripe/checkout/sessions"
ACCESS = {"type": "boolean", "featureKey": "ai_access"}


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    """This module's harness (tests/apps/conftest's `stripe` takes it): the meta store on SQLite or on a PostgreSQL
    database of the test's own."""
    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


def _acme(subjects: list[str]) -> dict[str, Any]:
    return {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": subjects}}


def _stripe_writes(standin: StandIn) -> list[str]:
    return [r["path"] for r in standin.posts("/v1/") if not r["path"].startswith("/v1/webhook_endpoints")]


def test_a_checkout_creating_a_customer_with_two_entitlements_of_one_feature_is_refused_before_stripe(
        billow: Billow, stripe: tuple[StandIn, str]) -> None:
    """customer_1 and customer_2 (subjects of their own) each have an entitlement of ai_access. A checkout creating
    customer acme with both: 409 problem+json naming usageAttribution.subjectKeys, the feature and both
    entitlements; no customer, no Stripe customer, no Checkout session. With customer_1 alone: 201, the customer
    made with its one entitlement and the session made at Stripe for it."""
    b, (standin, _) = billow, stripe
    b.ok("POST", "/api/v1/features", {"key": "ai_access", "name": "AI access"})
    first = b.ok("POST", "/api/v1/subjects/customer_1/entitlements", ACCESS)
    second = b.ok("POST", "/api/v1/subjects/customer_2/entitlements", ACCESS)
    app = b.ok("POST", "/api/v1/marketplace/listings/stripe/install/apikey", {"apiKey": standin.api_key})["app"]
    before = _stripe_writes(standin)

    status, out = b.call("POST", CHECKOUT, {"appId": app["id"], "customer": _acme(["customer_1", "customer_2"]),
                                            "options": {"successURL": "https://acme.test/ok"}})
    assert status == 409, out
    assert b.headers["Content-Type"] == "application/problem+json" and out["status"] == 409, (b.headers, out)
    assert out["detail"].startswith("usageAttribution.subjectKeys:") and "ai_access" in out["detail"], out
    assert first["id"] in out["detail"] and second["id"] in out["detail"], out
    assert out["conflictingEntityId"] in (first["id"], second["id"]), out
    assert b.ok("GET", "/api/v1/customers")["items"] == []
    assert b.call("GET", "/api/v1/customers/acme")[0] == 404
    assert _stripe_writes(standin) == before  # no Stripe customer, no session asked for
    assert (standin.customers, standin.sessions) == ({}, {})
    # each subject keeps its own entitlement
    for subject, ent in (("customer_1", first), ("customer_2", second)):
        (item,) = b.ok("GET", f"/api/v1/subjects/{subject}/entitlements")
        assert item["id"] == ent["id"]

    made = b.ok("POST", CHECKOUT, {"appId": app["id"], "customer": _acme(["customer_1"]),
                                   "options": {"successURL": "https://acme.test/ok"}})
    acme = b.ok("GET", "/api/v1/customers/acme")
    assert made["customerId"] == acme["id"] and acme["usageAttribution"]["subjectKeys"] == ["customer_1"]
    assert [e["id"] for e in b.ok("GET", "/api/v2/customers/acme/entitlements")["items"]] == [first["id"]]
    assert standin.sessions[made["sessionId"]]["metadata"]["billow_customer_id"] == acme["id"]
    assert standin.customers[made["stripeCustomerId"]]["metadata"]["billow_customer_id"] == acme["id"]
    assert b.ok("GET", "/api/v1/customers/acme/stripe")["stripeCustomerId"] == made["stripeCustomerId"]

"""Billing test helpers: the sandbox billing profile, customer `acme` subscribed to plan `basic` from
2026-04-01, the scheduled billing run as functions/billing_run receives it, the invoice list."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from functions.billing_run.handler import lambda_handler as billing_run
from tests.support.catalog import plan_body, published, setup

if TYPE_CHECKING:
    from tests.entitlements.conftest import Billow

PROFILE = {"name": "Default", "default": True, "supplier": {"name": "Billow Inc.", "addresses": [{"country": "DE"}]},
           "workflow": {"invoicing": {"dueAfter": "P14D"}}, "apps": {"tax": "sandbox", "invoicing": "sandbox",
                                                                     "payment": "sandbox"}}


def subscribed(b: Billow, profile: dict[str, Any] | None = None) -> dict[str, Any]:
    setup(b)
    b.ok("POST", "/api/v1/billing/profiles", profile or PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    published(b, plan_body("basic", "49.99"))
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",  # type: ignore[no-any-return]
                                                  "timing": "2026-04-01T00:00:00Z"})


def scheduled_run(b: Billow) -> dict[str, Any]:
    """What EventBridge Scheduler -> SQS -> functions/billing_run does."""
    body = json.dumps({"job": "billing_run", "namespace": b.c.settings.namespace, "scheduledTime": "x"})
    return billing_run({"Records": [{"body": body}]}, None)["runs"][0]  # type: ignore[no-any-return]


def invoices(b: Billow) -> list[dict[str, Any]]:
    return b.ok("GET", "/api/v1/billing/invoices")["items"]  # type: ignore[no-any-return]


def subscribed_to_usage_cards(b: Billow, cards: dict[str, dict[str, Any]]) -> None:
    """Customer `acme` (subject customer_1, USD) with the default billing profile, subscribed from 2026-04-01 to plan
    `usage`: one monthly usage rate card per feature key in `cards` (its name the key's title; the card's fields
    beside them: its price, its discounts), each feature on meter `tokens`."""
    for key in cards:
        b.ok("POST", "/api/v1/features", {"key": key, "name": key.title(), "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_1"]}})
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.clock.set("2026-03-31T00:00:00Z")
    rate_cards = [{"type": "usage_based", "key": key, "name": key.title(), "featureKey": key, "billingCadence": "P1M",
                   **card} for key, card in cards.items()]
    published(b, {"key": "usage", "name": "Usage", "currency": "USD", "billingCadence": "P1M",
                  "phases": [{"key": "default", "name": "Default", "rateCards": rate_cards}]})
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "usage"}, "customerKey": "acme",
                                           "timing": "2026-04-01T00:00:00Z"})

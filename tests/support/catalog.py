"""The catalog the catalog and billing tests build on: a `tokens` feature, customer `acme` (subject customer_1,
USD) and plans with a flat in-advance base fee and graduated tiered token usage."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.entitlements.conftest import Billow

TIERS = [{"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
         {"unitPrice": {"type": "unit", "amount": "0.005"}}]


def plan_body(key: str, fee: str, *, feature: str = "tokens", extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    cards: list[dict[str, Any]] = [
        {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": fee, "paymentTerm": "in_advance"}},
        {"type": "usage_based", "key": feature, "name": "Tokens", "featureKey": feature, "billingCadence": "P1M",
         "price": {"type": "tiered", "mode": "graduated", "tiers": copy.deepcopy(TIERS)},
         "entitlementTemplate": {"type": "metered", "isSoftLimit": True, "issueAfterReset": 5000}},
    ]
    return {"key": key, "name": key.title(), "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "Default", "rateCards": cards + (extra or [])}]}


def metered_plan(price: dict[str, Any], *, card_name: str = "Tokens") -> dict[str, Any]:
    """Plan `metered`: one monthly usage rate card `tokens` on feature `tokens` at `price`, nothing else."""
    return {"key": "metered", "name": "Metered", "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "p", "name": "P", "rateCards": [
                {"type": "usage_based", "key": "tokens", "name": card_name, "featureKey": "tokens",
                 "billingCadence": "P1M", "price": price}]}]}


def setup(b: Billow) -> None:
    b.ok("POST", "/api/v1/features", {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_1"]}})


def published(b: Billow, body: dict[str, Any]) -> dict[str, Any]:
    draft = b.ok("POST", "/api/v1/plans", body)
    return b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")  # type: ignore[no-any-return]


def published_seats(b: Billow) -> dict[str, Any]:
    """Add-on `seats` (multiple instances, a $10 flat fee a seat a month), published."""
    seats = b.ok("POST", "/api/v1/addons", {"key": "seats", "name": "Seats", "currency": "USD", "instanceType": "multiple",
                                            "rateCards": [{"type": "flat_fee", "key": "seat", "name": "Seat",
                                                           "billingCadence": "P1M",
                                                           "price": {"type": "flat", "amount": "10"}}]})
    return b.ok("POST", f"/api/v1/addons/{seats['id']}/publish")  # type: ignore[no-any-return]

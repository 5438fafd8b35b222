"""A subject holding its own entitlement of a feature (made through POST /api/v1/subjects/{id}/entitlements) may not
join a customer (PUT /api/v1/customers/{id}, usageAttribution.subjectKeys) one of whose subscriptions grants that
feature now or later: 409 naming usageAttribution.subjectKeys, the subscription as conflictingEntityId (as a new
entitlement of it is refused, subscriptions.refuse_granted), the customer unchanged. OpenMeter keeps one entitlement
per feature per customer and its subscription's (scheduled) one refuses another. It was 200, and when the item started
the sync left the subject's own alone: the subscription went without the feature. A subscription written while the
subject joins checks the customer's subjects as they are where it is written. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow.services import subscriptions
from tests.catalog.test_subscription_takes_held_feature import SSO, published_ramp
from tests.entitlements.conftest import Billow, on_meta_store
from tests.support.catalog import plan_body, published, setup

JOINED = {"key": "acme", "name": "Acme", "currency": "USD",
          "usageAttribution": {"subjectKeys": ["customer_1", "free"]}}


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        setup(b)
        b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
        b.ok("POST", "/api/v1/subjects", [{"key": "free"}])
        yield b


def _own_sso(b: Billow) -> dict[str, Any]:
    return b.ok("POST", "/api/v1/subjects/free/entitlements", {"type": "boolean", "featureKey": "sso"})


def _keys(b: Billow) -> list[str]:
    return list(b.ok("GET", "/api/v1/customers/acme")["usageAttribution"]["subjectKeys"])


@pytest.mark.parametrize("later", ["phase", "start"])
def test_a_subject_holding_a_feature_the_customers_subscription_grants_later_may_not_join(
        billow: Billow, later: str) -> None:
    b = billow
    if later == "phase":  # sso from the second phase (2026-02-01)
        published_ramp(b)
        sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "ramp"}, "customerKey": "acme"})
    else:  # a subscription starting later
        published(b, plan_body("pro", "10", extra=[SSO]))
        sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme",
                                                     "timing": "2026-02-01T00:00:00Z"})
    own = _own_sso(b)
    status, out = b.call("PUT", "/api/v1/customers/acme", JOINED)
    assert status == 409 and b.headers["Content-Type"] == "application/problem+json", (status, out)
    assert out["detail"].startswith("usageAttribution.subjectKeys: ") and "'sso'" in out["detail"], out
    assert own["id"] in out["detail"] and out["conflictingEntityId"] == sub["id"], out
    assert _keys(b) == ["customer_1"]
    # when sso comes due, the subscription has its own
    b.clock.set("2026-02-01T00:00:00Z")
    b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")
    (sso,) = [e for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements") if e["featureKey"] == "sso"]
    assert sso["metadata"] == {"subscriptionId": sub["id"]}


def test_a_subject_joins_once_its_own_is_deleted_or_when_no_subscription_grants_the_feature(billow: Billow) -> None:
    b = billow
    published(b, plan_body("basic", "10"))
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    _own_sso(b)
    b.ok("PUT", "/api/v1/customers/acme", JOINED)  # basic grants no sso: taken
    assert _keys(b) == ["customer_1", "free"]


@pytest.mark.parametrize("customer", ["acme", "solo"])
def test_a_subscription_written_while_the_subject_joins_sees_it(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, customer: str) -> None:
    """The subject (with its own sso) joins right after the subscription's first check, before its write
    (deterministically, as another request at once): the join sees no subscription yet and is taken; the
    subscription's check where it is written, under the customer's lock which the join takes too, reads the
    customer's subjects as they are then: 409 naming the subject's entitlement, nothing stored. For a customer that
    had no subject (solo) it was 201 (checked on the subjects read before the join: none), and the subscription went
    without sso; acme's (customer_1's party, read again) was seen before too."""
    b = billow
    body: dict[str, Any] = JOINED
    if customer == "solo":
        b.ok("POST", "/api/v1/customers", {"key": "solo", "name": "Solo", "currency": "USD"})
        body = {"key": "solo", "name": "Solo", "currency": "USD", "usageAttribution": {"subjectKeys": ["free"]}}
    published(b, plan_body("pro", "10", extra=[SSO]))
    own = _own_sso(b)
    real = subscriptions._check_entitlements
    joined: list[tuple[int, Any]] = []

    def then_joined(*args: Any, **kw: Any) -> None:
        real(*args, **kw)
        if not joined:
            joined.append(b.call("PUT", f"/api/v1/customers/{customer}", body))

    monkeypatch.setattr(subscriptions, "_check_entitlements", then_joined)
    status, out = b.call("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": customer,
                                                           "timing": "2026-02-01T00:00:00Z"})
    monkeypatch.undo()
    assert joined[0][0] == 200, joined
    assert status == 409 and out["conflictingEntityId"] == own["id"], (status, out)
    assert b.ok("GET", f"/api/v1/customers/{customer}/subscriptions")["items"] == []

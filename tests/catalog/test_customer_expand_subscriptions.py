"""GET /api/v1/customers/{id}?expand=subscriptions and GET /api/v1/customers, as OpenMeter's customer handlers answer
(customer/httpdriver: CustomerToAPI over the subscriptions active now): with expand=subscriptions the customer's
running subscriptions (OpenMeter's Subscription, as the customer's subscription list shows each) and currentSubscriptionId, the first; the list
shows currentSubscriptionId always, the subscriptions with expand; neither when none runs (a scheduled one is not
running yet). Billow took expand=subscriptions and showed neither. On SQLite and PostgreSQL meta stores."""

from __future__ import annotations

from typing import Any

from tests.entitlements.conftest import Billow
from tests.support.billing import subscribed

EXPAND = {"expand": "subscriptions"}


def _acme(b: Billow, query: dict[str, str] | None = None) -> dict[str, Any]:
    (acme,) = [c for c in b.ok("GET", "/api/v1/customers", query=query)["items"] if c["key"] == "acme"]
    return acme


def test_a_running_subscription_is_shown_with_expand(meta_billow: Billow) -> None:
    sub = subscribed(meta_billow)
    meta_billow.clock.set("2026-04-02T00:00:00Z")
    (shown,) = meta_billow.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]
    got = meta_billow.ok("GET", "/api/v1/customers/acme", query=EXPAND)
    assert got["currentSubscriptionId"] == sub["id"]
    assert got["subscriptions"] == [shown]
    assert got["subscriptions"][0]["status"] == "active"
    listed = _acme(meta_billow, EXPAND)
    assert listed["currentSubscriptionId"] == sub["id"] and listed["subscriptions"] == [shown]


def test_without_expand_get_shows_neither_and_the_list_the_current_id_only(meta_billow: Billow) -> None:
    sub = subscribed(meta_billow)
    meta_billow.clock.set("2026-04-02T00:00:00Z")
    got = meta_billow.ok("GET", "/api/v1/customers/acme")
    assert "subscriptions" not in got and "currentSubscriptionId" not in got
    listed = _acme(meta_billow)
    assert listed["currentSubscriptionId"] == sub["id"] and "subscriptions" not in listed


def test_a_scheduled_or_ended_subscription_is_not_shown(meta_billow: Billow) -> None:
    sub = subscribed(meta_billow)  # from 2026-04-01; the clock is at 2026-03-31
    for got in (meta_billow.ok("GET", "/api/v1/customers/acme", query=EXPAND), _acme(meta_billow, EXPAND)):
        assert "subscriptions" not in got and "currentSubscriptionId" not in got
    meta_billow.clock.set("2026-04-02T00:00:00Z")
    meta_billow.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "immediate"})
    meta_billow.clock.set("2026-04-03T00:00:00Z")
    for got in (meta_billow.ok("GET", "/api/v1/customers/acme", query=EXPAND), _acme(meta_billow, EXPAND)):
        assert "subscriptions" not in got and "currentSubscriptionId" not in got


def test_an_unknown_expand_is_a_400_naming_it(meta_billow: Billow) -> None:
    subscribed(meta_billow)
    for path in ("/api/v1/customers/acme", "/api/v1/customers"):
        status, out = meta_billow.call("GET", path, query={"expand": "invoices"})
        assert status == 400 and "expand" in str(out), (path, status, out)


def test_the_list_shows_each_customer_its_own_subscriptions_on_every_page(meta_billow: Billow) -> None:
    """Three customers, two subscribed: each listed customer carries its own subscription, the third none, also when
    the list is paged one customer a page (a page reads its own customers' subscriptions)."""
    b = meta_billow
    acme = subscribed(b)
    b.ok("POST", "/api/v1/customers", {"key": "bolt", "name": "Bolt", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_2"]}})
    b.ok("POST", "/api/v1/customers", {"key": "cove", "name": "Cove", "currency": "USD",
                                       "usageAttribution": {"subjectKeys": ["customer_3"]}})
    bolt = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "bolt",
                                                  "timing": "2026-04-01T00:00:00Z"})
    b.clock.set("2026-04-02T00:00:00Z")
    want = {"acme": [acme["id"]], "bolt": [bolt["id"]], "cove": None}
    listed = b.ok("GET", "/api/v1/customers", query=EXPAND)["items"]
    assert {c["key"]: c.get("currentSubscriptionId") and [s["id"] for s in c["subscriptions"]] for c in listed} == want
    paged = {}
    for page in (1, 2, 3):
        (c,) = b.ok("GET", "/api/v1/customers", query={**EXPAND, "page": str(page), "pageSize": "1"})["items"]
        paged[c["key"]] = c.get("currentSubscriptionId") and [s["id"] for s in c["subscriptions"]]
    assert paged == want

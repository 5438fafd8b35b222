"""A subscription holds at most one version of an add-on key, by OpenMeter's rules: its own duplicate check
compares add-on ids (workflow/service/addon.go AddAddon), but an add-on is bought only through the subscription's
plan, which links the version it offers (subscription/addon/service Create: GetPlanAddon by the plan's and the
add-on's id, else 400), and a published plan offers one version of a key (test_plan_addon_versions). A subscription
on a custom plan takes no add-on at all: "cannot add addon to a custom subscription", 400. Billow took any active
add-on on a custom-plan subscription (201), so one held seats v1 and, once v2 was published, v2 beside it: both
billed, GET .../addons listing two seats. Now 400 naming subscriptionId, nothing added. On SQLite and on
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.catalog.test_plan_addon_versions import _seats_v2
from tests.entitlements.conftest import Billow, on_meta_store
from tests.support.catalog import plan_body, published_seats, setup


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        setup(b)
        yield b


def _add(b: Billow, sub: dict[str, Any], addon: dict[str, Any]) -> tuple[int, Any]:
    return b.call("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                  {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"})


def test_a_custom_plan_subscription_takes_no_add_on(billow: Billow) -> None:
    b = billow
    v1 = published_seats(b)
    custom = plan_body("custom", "10")
    del custom["key"]
    sub = b.ok("POST", "/api/v1/subscriptions", {"customPlan": custom, "customerKey": "acme"})
    status, out = _add(b, sub, v1)
    assert status == 400 and b.headers["Content-Type"] == "application/problem+json", (status, out)
    assert out["detail"].startswith("subscriptionId: ") and "custom" in out["detail"], out
    v2 = _seats_v2(b)  # archives v1
    status, out = _add(b, sub, v2)
    assert status == 400 and out["detail"].startswith("subscriptionId: "), (status, out)
    assert b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/addons") == []


def test_a_plan_subscription_takes_only_the_version_its_plan_offers(billow: Billow) -> None:
    b = billow
    v1 = published_seats(b)
    draft = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": v1["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "team"}, "customerKey": "acme"})
    assert _add(b, sub, v1)[0] == 201
    status, out = _add(b, sub, v1)  # the same version again: OpenMeter's duplicate check, by id
    assert status == 409, (status, out)
    v2 = _seats_v2(b)
    status, out = _add(b, sub, v2)  # not the version the plan offers
    assert status == 400 and out["detail"].startswith("addon.id: "), (status, out)
    (held,) = b.ok("GET", f"/api/v1/subscriptions/{sub['id']}/addons")
    assert held["addon"]["id"] == v1["id"]

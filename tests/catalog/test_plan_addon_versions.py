"""A plan offers active add-on versions only, as OpenMeter's: assigning one that is not active (a draft, archived) is
a 400 naming addonId (planaddon/service/planaddon.go: HasAddonStatus(active)), and publishing a plan whose add-on
is no longer active (archived by its key's next version) is a 400 naming that add-on (plan/service/plan.go:
ErrPlanHasIncompatibleAddon), shown beforehand in the draft's validationErrors. So one plan never offers v1 and v2
of one add-on key at once. Before, both were assigned and the plan published offering both (and GET
/plans/{id}/addons/{key} answered one of them). On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, on_meta_store
from tests.support.catalog import plan_body, published_seats, setup


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        setup(b)
        yield b


def _seats_v2(b: Billow, publish: bool = True) -> dict[str, Any]:
    draft = b.ok("POST", "/api/v1/addons", {"key": "seats", "name": "Seats", "currency": "USD",
                                            "instanceType": "multiple",
                                            "rateCards": [{"type": "flat_fee", "key": "seat", "name": "Seat",
                                                           "billingCadence": "P1M",
                                                           "price": {"type": "flat", "amount": "12"}}]})
    return b.ok("POST", f"/api/v1/addons/{draft['id']}/publish") if publish else draft  # type: ignore[no-any-return]


def _offer(b: Billow, plan: dict[str, Any], addon: dict[str, Any]) -> tuple[int, Any]:
    return b.call("POST", f"/api/v1/plans/{plan['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "default"})


def test_a_plan_offering_two_versions_of_one_add_on_is_not_published(billow: Billow) -> None:
    b = billow
    v1 = published_seats(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    assert _offer(b, plan, v1)[0] == 201
    b.clock.set("2026-01-02T00:00:00Z")
    v2 = _seats_v2(b)  # archives v1
    assert _offer(b, plan, v2)[0] == 201  # as OpenMeter: another add-on id, active
    b.clock.set("2026-01-03T00:00:00Z")
    draft = b.ok("GET", f"/api/v1/plans/{plan['id']}")
    assert [e["field"] for e in draft["validationErrors"] or []] == ["addons[seats@1]"], draft["validationErrors"]
    status, out = b.call("POST", f"/api/v1/plans/{plan['id']}/publish")
    assert status == 400 and b.headers["Content-Type"] == "application/problem+json", (status, out)
    assert out["detail"].startswith("addons[seats@1]: ") and "archived" in out["detail"], out
    assert "also offers version(s) [2]" in out["detail"], out
    assert b.ok("GET", f"/api/v1/plans/{plan['id']}")["status"] == "draft"
    # without v1 it is published, offering v2
    (pa1,) = [pa for pa in b.ok("GET", f"/api/v1/plans/{plan['id']}/addons")["items"] if pa["addon"]["version"] == 1]
    b.ok("DELETE", f"/api/v1/plans/{plan['id']}/addons/{pa1['id']}")
    assert b.ok("POST", f"/api/v1/plans/{plan['id']}/publish")["status"] == "active"
    assert [pa["addon"]["version"] for pa in b.ok("GET", f"/api/v1/plans/{plan['id']}/addons")["items"]] == [2]


def test_only_an_active_add_on_is_offered(billow: Billow) -> None:
    b = billow
    v1 = published_seats(b)
    plan = b.ok("POST", "/api/v1/plans", plan_body("team", "50"))
    draft = _seats_v2(b, publish=False)
    status, out = _offer(b, plan, draft)
    assert status == 400 and out["detail"].startswith("addonId: ") and "draft" in out["detail"], out
    b.ok("POST", f"/api/v1/addons/{draft['id']}/publish")  # archives v1
    b.clock.set("2026-01-02T00:00:00Z")
    status, out = _offer(b, plan, v1)
    assert status == 400 and out["detail"].startswith("addonId: ") and "archived" in out["detail"], out
    assert b.ok("GET", f"/api/v1/plans/{plan['id']}/addons")["items"] == []

"""A customer holding two live entitlements of one feature: data written before a customer's subjects were checked
for them (entitlements.customer_takes; made here as PUT /api/v1/customers made it then, without that check). A check
by the feature's key answers the first created (createdAt, then id) every time, whatever the subjects are called,
and never adds the two up; the listing shows both; every write to either but deleting one by its id (the repair) is
409 naming both, where an override answered 201 and the checks then went on answering the other one. On SQLite and
on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow.services import directory
from tests.entitlements.conftest import Billow, on_meta_store

METERED = {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}}
GRANTED = {"zeta": 100, "alpha": 5}  # each subject's entitlement issues this much at each reset


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


def _two_of_one_feature(b: Billow) -> tuple[dict[str, Any], dict[str, Any]]:
    """zeta's entitlement of `ai` made first, then alpha's, at one instant (createdAt alike: the id decides), both
    subjects then given to customer acme without the check. The first and the second, as checks order them."""
    b.ok("POST", "/api/v1/subjects", [{"key": "zeta"}, {"key": "alpha"}])
    b.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
    made = [b.ok("POST", f"/api/v1/subjects/{s}/entitlements", {**METERED, "issueAfterReset": n})
            for s, n in GRANTED.items()]
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["zeta"]}})
    directory.update_customer(b.c.namespace, "acme", {"key": "acme", "name": "Acme",
                                                      "usageAttribution": {"subjectKeys": ["zeta", "alpha"]}},
                              meta=b.c.meta, now=b.clock.now())
    first, second = sorted(made, key=lambda e: (e["createdAt"], e["id"]))
    return first, second


def _answers(b: Billow) -> list[Any]:
    """What every check by the feature's key answers: its entitlement and balance, v2 and v1 through each subject
    (cached and not), and the customer's access."""
    return [b.ok("GET", "/api/v2/customers/acme/entitlements/ai")["id"],
            b.ok("GET", "/api/v2/customers/acme/entitlements/ai/value")["balance"],
            *(v["balance"] for s in ("zeta", "alpha") for v in (b.value(s, "ai"), b.fresh_value(s, "ai"))),
            b.ok("GET", "/api/v1/customers/acme/access")["entitlements"]["ai"]["balance"]]


def _listed(b: Billow) -> list[str]:
    return [e["id"] for e in b.ok("GET", "/api/v2/customers/acme/entitlements")["items"]]


def test_checks_by_the_feature_answer_the_first_created_every_time(billow: Billow) -> None:
    """Before, the one answering among two made at one instant was the one of the subject first by name (alpha's,
    made second) on both stores: the order by createdAt alone left the tie to the plan."""
    b = billow
    first, second = _two_of_one_feature(b)
    want = [first["id"], *[GRANTED[first["subjectKey"]]] * 6]
    for _ in range(3):
        assert _answers(b) == want
    assert _listed(b) == [first["id"], second["id"]]  # both there to be seen


def _grants(b: Billow) -> list[str]:
    return [g["id"] for g in b.ok("GET", "/api/v2/grants", query={"includeDeleted": "true"})["items"]]


def _refused(b: Billow, method: str, path: str, body: Any, field: str, ids: tuple[str, str], other: str) -> None:
    status, out = b.call(method, path, body)
    assert status == 409 and b.headers["Content-Type"] == "application/problem+json", (method, path, status, out)
    assert out["detail"].startswith(f"{field}: ") and all(i in out["detail"] for i in ids), out
    assert out["conflictingEntityId"] == other, out


def test_writes_to_either_are_refused_naming_both_until_one_is_deleted_by_id(billow: Billow) -> None:
    """An override (by key or id, v2 and v1), a grant, a reset or a delete by the feature's key: 409 naming both,
    nothing written. Before, an override by key answered 201 and replaced the first, and the checks then answered
    the second (its 5, not the override's 1000). Deleting the second by id is allowed; then an override by key is
    201 and the checks answer it."""
    b = billow
    first, second = _two_of_one_feature(b)
    b.clock.set("2026-01-02T00:00:00Z")
    ids, grants = (first["id"], second["id"]), _grants(b)
    v2 = "/api/v2/customers/acme/entitlements"
    override = {**METERED, "issueAfterReset": 1000}
    grant = {"amount": 50, "effectiveAt": "2026-01-02T00:00:00Z", "expiration": {"duration": "MONTH", "count": 1}}
    first_via, second_via = f"/api/v1/subjects/{first['subjectKey']}", f"/api/v1/subjects/{second['subjectKey']}"
    for method, path, body, field, other in [
        ("PUT", f"{v2}/ai/override", override, "entitlementIdOrFeatureKey", second["id"]),
        ("PUT", f"{v2}/{second['id']}/override", override, "entitlementIdOrFeatureKey", first["id"]),
        ("PUT", f"{second_via}/entitlements/ai/override", override, "entitlementIdOrFeatureKey", second["id"]),
        ("POST", f"{v2}/ai/grants", grant, "entitlementIdOrFeatureKey", second["id"]),
        ("POST", f"{first_via}/entitlements/{second['id']}/grants", grant, "entitlementIdOrFeatureKey", first["id"]),
        ("POST", f"{v2}/ai/reset", {}, "entitlementIdOrFeatureKey", second["id"]),
        ("POST", f"{first_via}/entitlements/{first['id']}/reset", {}, "entitlementId", second["id"]),
        ("DELETE", f"{v2}/ai", None, "entitlementIdOrFeatureKey", second["id"]),
    ]:
        _refused(b, method, path, body, field, ids, other)
    assert _listed(b) == list(ids) and _grants(b) == grants
    assert _answers(b)[1] == GRANTED[first["subjectKey"]]

    assert b.call("DELETE", f"{v2}/{second['id']}")[0] == 204
    made = b.ok("PUT", f"{v2}/ai/override", override)
    assert _listed(b) == [made["id"]]
    assert _answers(b) == [made["id"], *[1000] * 6]

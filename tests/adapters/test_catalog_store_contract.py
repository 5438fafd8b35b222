"""The catalog store against SQLite (embedded) and a real PostgreSQL (pg8000): versions unique per key, exact
decimal strings kept, deleted versions hidden, namespaces apart, subscriptions by customer."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from billow.adapters.sql_catalog import SqlCatalogStore
from billow.errors import Conflict
from billow.ids import new_id


@pytest.fixture
def store(meta_store: Any) -> SqlCatalogStore:
    s = SqlCatalogStore(meta_store.engine)
    s.migrate()
    return s


def ns() -> str:
    return "n" + uuid.uuid4().hex[:10]


def plan(key: str, version: int, **extra: Any) -> dict[str, Any]:
    return {"id": new_id(), "key": key, "version": version, "currency": "USD",
            "phases": [{"rateCards": [{"price": {"type": "unit", "amount": "0.000000000123456789"}}]}], **extra}


def test_versions_unique_per_key_and_ordered(store: SqlCatalogStore) -> None:
    n = ns()
    v2, v1 = plan("pro", 2), plan("pro", 1)
    store.put_versioned("plan", n, v2)
    store.put_versioned("plan", n, v1)
    store.put_versioned("plan", n, plan("basic", 1))
    with pytest.raises(Conflict):
        store.put_versioned("plan", n, plan("pro", 2))
    assert [(d["key"], d["version"]) for d in store.list_versioned("plan", n)] == [("basic", 1), ("pro", 1), ("pro", 2)]
    got = store.get_versioned("plan", n, v2["id"])
    assert got is not None and got["phases"][0]["rateCards"][0]["price"]["amount"] == "0.000000000123456789"
    assert store.list_versioned("plan", ns()) == [] and store.get_versioned("plan", ns(), v2["id"]) is None
    store.put_versioned("plan", n, {**v1, "deletedAt": "2026-01-01T00:00:00Z"})  # update in place, by id
    assert [d["version"] for d in store.list_versioned("plan", n, key="pro")] == [2]
    assert [d["version"] for d in store.list_versioned("plan", n, key="pro", include_deleted=True)] == [1, 2]
    assert store.list_versioned("addon", n) == []  # plans and add-ons are kept apart


def test_plan_addons_and_subscriptions(store: SqlCatalogStore) -> None:
    n = ns()
    pa = {"id": new_id(), "planId": "p1", "addon": {"id": "a1"}}
    store.put_plan_addon(n, pa)
    store.put_plan_addon(n, {**pa, "id": new_id(), "addon": {"id": "a2"}, "deletedAt": "2026-01-01T00:00:00Z"})
    assert [d["addon"]["id"] for d in store.list_plan_addons(n, "p1")] == ["a1"]
    seen: list[Any] = []

    def change(plan_doc: dict[str, Any] | None, live: list[dict[str, Any]]) -> dict[str, Any]:
        seen.append((plan_doc, [d["addon"]["id"] for d in live]))
        return {**live[0], "maxQuantity": 2}

    p1 = plan("pro", 1, id="p1")
    store.put_versioned("plan", n, p1)
    assert store.change_plan_addons(n, "p1", change)["maxQuantity"] == 2  # the plan and its live add-ons, as stored
    assert seen == [(p1, ["a1"])] and store.list_plan_addons(n, "p1")[0]["maxQuantity"] == 2

    def refuse(plan_doc: dict[str, Any] | None, live: list[dict[str, Any]]) -> dict[str, Any]:
        raise Conflict("no")

    with pytest.raises(Conflict):  # nothing written
        store.change_plan_addons(n, "p1", refuse)
    assert store.list_plan_addons(n, "p1")[0]["maxQuantity"] == 2
    s1 = {"id": new_id(), "customerId": "c1", "activeTo": None}
    s2 = {"id": new_id(), "customerId": "c2", "activeTo": None}
    store.put_subscription(n, s1)
    store.put_subscription(n, s2)
    store.put_subscription(n, {**s1, "activeTo": "2026-02-01T00:00:00Z"})
    assert [d["id"] for d in store.list_subscriptions(n, "c1")] == [s1["id"]]
    assert store.get_subscription(n, s1["id"])["activeTo"] == "2026-02-01T00:00:00Z"  # type: ignore[index]
    assert len(store.list_subscriptions(n)) == 2 and store.get_subscription(ns(), s1["id"]) is None

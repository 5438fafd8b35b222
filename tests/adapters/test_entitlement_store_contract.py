"""The entitlement store against SQLite (embedded) and a real PostgreSQL (pg8000): uniqueness, exact amounts,
snapshots that resets, grants and late usage invalidate, and the guard against saving a stale snapshot."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.sql_entitlements import SqlEntitlementStore
from billow.errors import Conflict
from billow.ids import new_id
from tests.conftest import t

NOW = t("2026-01-01T00:00:00Z")


@pytest.fixture
def store(meta_store: Any) -> SqlEntitlementStore:
    s = SqlEntitlementStore(meta_store.engine)
    s.migrate()
    return s


def ns() -> str:
    return "n" + uuid.uuid4().hex[:10]


def ent(subject: str = "s1", feature: str = "f") -> dict[str, Any]:
    return {"id": new_id(), "type": "metered", "subjectKey": subject, "featureKey": feature, "featureId": new_id()}


def test_feature_keys_unique_while_live(store: SqlEntitlementStore) -> None:
    n = ns()
    f = {"id": new_id(), "key": "tokens", "name": "Tokens", "meterSlug": "m"}
    store.put_feature(n, f, created_at=NOW)
    with pytest.raises(Conflict):
        store.put_feature(n, {**f, "id": new_id()}, created_at=NOW)
    store.put_feature(n, {**f, "archivedAt": "x"}, created_at=NOW, archived_at=NOW)
    store.put_feature(n, {**f, "id": new_id()}, created_at=NOW)  # the key is free again
    assert len(store.list_features(n, include_archived=True)) == 2
    assert [x["meterSlug"] for x in store.list_features(n, meter_slugs=["m"])] == ["m"]
    assert store.get_feature(ns(), "tokens") is None  # namespaces never mix


def test_one_live_entitlement_per_subject_and_feature(store: SqlEntitlementStore) -> None:
    n = ns()
    e = ent()
    store.put_entitlement(n, e, created_at=NOW)
    with pytest.raises(Conflict):
        store.put_entitlement(n, ent(), created_at=NOW)
    store.put_entitlement(n, ent(subject="s2"), created_at=NOW)
    replacement = ent()
    store.replace_entitlement(n, e["id"], replacement, at=NOW, old_doc={**e, "deletedAt": "x"})
    assert store.find_entitlement(n, ["s1"], "f")["id"] == replacement["id"]  # type: ignore[index]
    assert store.get_entitlement(n, e["id"]) is None
    assert store.get_entitlement(n, e["id"], include_deleted=True)["deletedAt"] == "x"  # type: ignore[index]


def test_grant_amounts_stay_exact(store: SqlEntitlementStore) -> None:
    n = ns()
    g = {"id": new_id(), "entitlementId": "E", "amount": Decimal("12345678901234567890.123456789012345678"),
         "effectiveAt": "2026-01-01T00:00:00Z"}
    store.put_grant(n, g, created_at=NOW)
    (got,) = store.list_grants(n, ["E"])
    assert Decimal(got["amount"]) == g["amount"]


def test_snapshots_resets_and_late_usage(store: SqlEntitlementStore) -> None:
    n, eid = ns(), new_id()
    for day in (1, 2, 3):
        assert store.save_snapshot(n, eid, "s1", t(f"2026-02-0{day}T00:00:00Z"), {"day": day}, computed_from=NOW)
    assert store.latest_snapshot(n, eid, t("2026-02-02T12:00:00Z")) == {"day": 2}
    store.add_reset(n, eid, t("2026-02-02T06:00:00Z"), retain_anchor=False, preserve_overage=None, now=NOW)
    assert store.latest_snapshot(n, eid, t("2026-03-01T00:00:00Z")) == {"day": 2}  # later ones dropped
    with pytest.raises(Conflict):
        store.add_reset(n, eid, t("2026-02-02T06:00:00Z"), retain_anchor=True, preserve_overage=None, now=NOW)
    store.usage_arrived_late(n, {"s1": t("2026-01-15T00:00:00Z")}, now=t("2026-02-05T00:00:00Z"))
    assert store.latest_snapshot(n, eid, t("2026-03-01T00:00:00Z")) is None
    # A computation that read usage before that late usage was seen must not save its snapshot...
    assert not store.save_snapshot(n, eid, "s1", t("2026-02-01T00:00:00Z"), {}, computed_from=t("2026-02-04T00:00:00Z"))
    # ...one that read it after may, and another subject is unaffected.
    assert store.save_snapshot(n, eid, "s1", t("2026-02-01T00:00:00Z"), {}, computed_from=t("2026-02-06T00:00:00Z"))
    assert store.save_snapshot(n, new_id(), "s2", t("2026-02-01T00:00:00Z"), {}, computed_from=NOW)
    assert [r["at"] for r in store.list_resets(n, eid)] == [t("2026-02-02T06:00:00Z")]


def test_ledger_rows_are_the_resets_latest_snapshot_and_grants_read_at_once(store: SqlEntitlementStore) -> None:
    """An uncached balance reads its entitlement's resets, snapshot and grants with one statement (`ledger_rows`):
    the same as the three reads, in their orders, and nothing of another entitlement or namespace."""
    n, eid, other = ns(), new_id(), new_id()
    assert store.ledger_rows(n, eid, t("2026-03-01T00:00:00Z")) == ([], None, [])
    # Grants first (each drops the snapshots from its effective time on): created out of id order at one instant, and
    # one earlier; another entitlement's and namespace's.
    ids = sorted(new_id() for _ in range(3))
    for gid, created in ((ids[2], NOW), (ids[0], NOW), (ids[1], t("2025-12-31T00:00:00Z"))):
        store.put_grant(n, {"id": gid, "entitlementId": eid, "amount": Decimal("1.5"),
                            "effectiveAt": "2026-01-01T00:00:00Z"}, created_at=created)
    store.put_grant(n, {"id": new_id(), "entitlementId": other, "amount": 1, "effectiveAt": "2026-01-01T00:00:00Z"},
                    created_at=NOW)
    store.put_grant("elsewhere", {"id": new_id(), "entitlementId": eid, "amount": 1,
                                  "effectiveAt": "2026-01-01T00:00:00Z"}, created_at=NOW)
    for day in (1, 3, 5):
        assert store.save_snapshot(n, eid, "s1", t(f"2026-02-0{day}T00:00:00Z"), {"day": day}, computed_from=NOW)
    store.save_snapshot(n, other, "s1", t("2026-02-04T00:00:00Z"), {"day": "other"}, computed_from=NOW)
    store.save_snapshot("elsewhere", eid, "s1", t("2026-02-04T12:00:00Z"), {"day": "elsewhere"}, computed_from=NOW)
    # Resets after the snapshots (each drops the later ones), out of order.
    for at, keep, preserve in (("2026-02-07T00:00:00Z", True, None), ("2026-02-06T00:00:00Z", False, True)):
        store.add_reset(n, eid, t(at), retain_anchor=keep, preserve_overage=preserve, now=NOW)
    store.add_reset(n, other, t("2026-02-06T12:00:00Z"), retain_anchor=False, preserve_overage=None, now=NOW)
    for not_after in ("2026-01-31T00:00:00Z", "2026-02-02T00:00:00Z", "2026-02-04T00:00:00Z", "2026-03-01T00:00:00Z"):
        resets, snapshot, grants = store.ledger_rows(n, eid, t(not_after))
        assert (resets, snapshot, grants) == (store.list_resets(n, eid), store.latest_snapshot(n, eid, t(not_after)),
                                              store.list_grants(n, [eid]))
        assert [r["at"] for r in resets] == [t("2026-02-06T00:00:00Z"), t("2026-02-07T00:00:00Z")]
        assert [(r["retainAnchor"], r["preserveOverage"]) for r in resets] == [(False, True), (True, None)]
        assert [g["id"] for g in grants] == [ids[1], ids[0], ids[2]]
        assert Decimal(grants[0]["amount"]) == Decimal("1.5")
    assert store.ledger_rows(n, eid, t("2026-01-31T00:00:00Z"))[1] is None
    assert store.ledger_rows(n, eid, t("2026-02-04T00:00:00Z"))[1] == {"day": 3}
    assert store.ledger_rows(n, eid, t("2026-03-01T00:00:00Z"))[1] == {"day": 5}  # (resets after it keep it)


def test_containers_saving_the_same_snapshot_at_once_all_succeed(pg_database: str) -> None:
    """Two containers (their own engines) checking one entitlement at once both save the snapshot at the same reset:
    each looks, finds none, inserts; the later insert met the primary key and its check answered 500. With
    snapshots at every hourly reset an hour old, that is any two checks of an hourly entitlement within a moment of
    each other after the hour turns. Every save succeeds (the snapshot is the same engine state) and one row stays."""
    import threading

    from billow.adapters.sql import SqlMetaStore

    metas = [SqlMetaStore(pg_database) for _ in range(2)]
    metas[0].migrate()
    stores = [SqlEntitlementStore(m.engine) for m in metas]
    stores[0].migrate()
    n, eid = ns(), new_id()
    errors: list[BaseException] = []
    try:
        for hour in range(12):
            at = t(f"2026-02-01T{hour:02d}:00:00Z")
            go = threading.Barrier(8)

            def save(store: SqlEntitlementStore, at: Any = at, go: threading.Barrier = go) -> None:
                go.wait()
                try:
                    assert store.save_snapshot(n, eid, "s1", at, {"h": at.hour}, computed_from=NOW)
                except BaseException as e:  # noqa: BLE001 (collected and asserted below)
                    errors.append(e)

            threads = [threading.Thread(target=save, args=(stores[i % 2],)) for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert stores[1].latest_snapshot(n, eid, at) == {"h": hour}
        assert not errors, errors[:3]
    finally:
        for m in metas:
            m.close()


def test_entitlements_of_more_subjects_than_a_statement_takes_parameters(store: SqlEntitlementStore) -> None:
    """A check of a customer with 70,000 subjects looks its entitlement up over all of them: on PostgreSQL (at most
    65,535 parameters a statement) that failed in the driver, a 500 on every check. One array parameter now."""
    n = ns()
    subjects = [f"s{i:05d}" for i in range(70_000)]
    e = ent(subject="s69999")
    store.put_entitlement(n, e, created_at=NOW)
    store.put_entitlement(n, ent(subject="s00001", feature="g"), created_at=NOW)
    assert store.find_entitlement(n, subjects, "f")["id"] == e["id"]  # type: ignore[index]
    assert store.find_entitlement(n, subjects[:-1], "f") is None
    assert [x["id"] for x in store.list_entitlements(n, subject_keys=subjects, feature_keys=["f"])] == [e["id"]]
    ids = [new_id() for _ in range(70_000)]
    assert store.list_grants(n, entitlement_ids=ids) == []

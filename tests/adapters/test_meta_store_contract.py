"""The SQL meta store against SQLite (embedded) and a real PostgreSQL (pg8000)."""

from __future__ import annotations

import time
import uuid

import pytest

from billow.domain.meters import Meter
from billow.errors import Conflict
from billow.ids import new_id
from tests.conftest import t

NOW = t("2026-01-01T00:00:00Z")


def meter(slug: str) -> Meter:
    return Meter(id=new_id(), slug=slug, aggregation="SUM", event_type="e", name=slug, description=None,
                 value_property="$.v", group_by={"g": "$.g"}, event_from=None, created_at=NOW, updated_at=NOW)


def test_meters_crud_and_unique_live_slug(meta_store, namespace: str) -> None:
    ns = namespace + uuid.uuid4().hex[:6]
    m = meter("tokens")
    meta_store.put_meter(ns, m)
    with pytest.raises(Conflict):
        meta_store.put_meter(ns, meter("tokens"))
    meta_store.put_meter(ns + "_other", meter("tokens"))  # slugs are per namespace
    got = meta_store.get_meter(ns, "tokens")
    assert got is not None and (got.id, got.group_by, got.created_at) == (m.id, {"g": "$.g"}, NOW)
    assert meta_store.get_meter(ns, m.id).slug == "tokens"
    meta_store.delete_meter(ns, m.id, NOW)
    assert meta_store.get_meter(ns, "tokens") is None
    assert [x.id for x in meta_store.list_meters(ns, include_deleted=True)] == [m.id]
    meta_store.put_meter(ns, meter("tokens"))  # a deleted slug can be reused
    assert len(meta_store.list_meters(ns)) == 1


def test_subjects_upsert(meta_store, namespace: str) -> None:
    ns = namespace + uuid.uuid4().hex[:6]
    a = meta_store.upsert_subject(ns, {"key": "acme", "displayName": "Acme"}, NOW)
    b = meta_store.upsert_subject(ns, {"key": "acme", "displayName": "Acme Inc", "metadata": {"tier": "pro"}}, NOW)
    assert a["id"] == b["id"] and b["displayName"] == "Acme Inc" and b["metadata"] == {"tier": "pro"}
    assert [s["key"] for s in meta_store.list_subjects(ns)] == ["acme"]
    assert meta_store.list_subjects(ns + "x") == []


def test_customer_subject_attribution_is_exclusive(meta_store, namespace: str) -> None:
    ns = namespace + uuid.uuid4().hex[:6]
    c1 = {"id": new_id(), "name": "A", "key": "a", "usageAttribution": {"subjectKeys": ["s1", "s2"]}, "createdAt": "2026-01-01T00:00:00Z"}
    meta_store.put_customer(ns, c1)
    with pytest.raises(Conflict):
        meta_store.put_customer(ns, {"id": new_id(), "name": "B", "usageAttribution": {"subjectKeys": ["s2"]},
                                     "createdAt": "2026-01-01T00:00:00Z"})
    assert meta_store.customers_for_subjects(ns, ["s1", "s2", "s3"]) == {"s1": c1["id"], "s2": c1["id"]}
    assert meta_store.get_customer(ns, "a")["id"] == c1["id"]
    assert meta_store.get_customer(ns + "x", "a") is None


def test_fellow_subjects_are_every_subject_of_the_owning_customers(meta_store, namespace: str) -> None:
    ns = namespace + uuid.uuid4().hex[:6]
    for cid, key, subjects in ((new_id(), "a", ["s2", "s1"]), (new_id(), "b", ["t1"]), (new_id(), "c", ["u1", "u2"])):
        meta_store.put_customer(ns, {"id": cid, "name": key, "key": key, "createdAt": "2026-01-01T00:00:00Z",
                                     "usageAttribution": {"subjectKeys": subjects}})
    assert meta_store.fellow_subjects(ns, ["s1"]) == ["s1", "s2"]
    assert meta_store.fellow_subjects(ns, ["s2", "t1", "nobody"]) == ["s1", "s2", "t1"]
    assert meta_store.fellow_subjects(ns, ["nobody"]) == meta_store.fellow_subjects(ns, []) == []
    assert meta_store.fellow_subjects(ns + "x", ["s1"]) == []  # per namespace


def test_containers_upserting_one_subject_at_once_all_succeed(pg_database: str) -> None:
    """POST /api/v1/subjects is an upsert: two containers upserting one key at once (a client's retry, two workers
    registering a user) both looked, both found none, both inserted, and the later met the live-key index: 45 of 80
    such upserts answered 500. Every one now succeeds and one live subject stays, holding one of the writes."""
    import threading
    from datetime import UTC, datetime

    from billow.adapters.sql import SqlMetaStore

    metas = [SqlMetaStore(pg_database) for _ in range(2)]
    metas[0].migrate()
    errors: list[BaseException] = []
    try:
        for _ in range(10):
            key = f"race-{uuid.uuid4().hex[:8]}"
            go = threading.Barrier(8)

            def upsert(n: int, key: str = key, go: threading.Barrier = go) -> None:
                go.wait()
                try:
                    metas[n % 2].upsert_subject("racens", {"key": key, "displayName": f"w{n}"}, datetime.now(UTC))
                except BaseException as e:  # noqa: BLE001 (collected and asserted below)
                    errors.append(e)

            threads = [threading.Thread(target=upsert, args=(n,)) for n in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            live = [s for s in metas[1].list_subjects("racens") if s["key"] == key]
            assert len(live) == 1 and live[0]["displayName"] in {f"w{n}" for n in range(8)}, live
        assert not errors, errors[:3]
    finally:
        for m in metas:
            m.close()


def test_fellow_subjects_of_a_customer_with_thousands_of_subjects_read_each_once(meta_store, namespace: str) -> None:
    """A customer's every subject asked at once (its entitlement check does so): the query ran a join of each
    subject asked with each of its customer's, n * n rows (a customer of 1,000 subjects: 25 s a check; 10,000:
    200 s). One row per subject now; 3,000 subjects took 30 s before."""
    ns = namespace + uuid.uuid4().hex[:6]
    subjects = [f"s{i:05d}" for i in range(3000)]
    meta_store.put_customer(ns, {"id": new_id(), "name": "big", "key": "big", "createdAt": "2026-01-01T00:00:00Z",
                                 "usageAttribution": {"subjectKeys": subjects}})
    started = time.monotonic()
    assert meta_store.fellow_subjects(ns, subjects) == subjects
    assert time.monotonic() - started < 3


def test_a_customer_with_more_subjects_than_a_statement_takes_parameters(meta_store, namespace: str) -> None:
    """PostgreSQL's protocol takes at most 65,535 parameters a statement: a customer's every subject bound one
    parameter each (its entitlement check asks for them all) failed in the driver (pg8000: struct.error), a 500 on
    every check of that customer. A list of keys is one array parameter there now; SQLite binds them as before."""
    ns = namespace + uuid.uuid4().hex[:6]
    subjects = [f"s{i:05d}" for i in range(70_000)]
    customer = new_id()
    meta_store.put_customer(ns, {"id": customer, "name": "big", "key": "big", "createdAt": "2026-01-01T00:00:00Z",
                                 "usageAttribution": {"subjectKeys": subjects}})
    assert meta_store.fellow_subjects(ns, subjects) == subjects
    assert meta_store.fellow_subjects(ns, ["s00007", "nobody"]) == subjects
    got = meta_store.customers_for_subjects(ns, [*subjects, "nobody"])
    assert len(got) == 70_000 and set(got.values()) == {customer} and "nobody" not in got
    assert meta_store.subjects_of_customers(ns, [customer, new_id()]) == dict.fromkeys(subjects, customer)


def test_a_customer_write_taking_subjects_runs_its_check_with_the_new_keys_under_their_locks(
        meta_store, namespace: str) -> None:
    """put_customer(taking=): called with the keys the customer did not have (none: not called), while the write
    holds those subjects' locks (adapters/sql.subject_lock, one statement for several on PostgreSQL); a refusal
    writes nothing."""
    import sqlalchemy as sa

    from billow.adapters.sql import _lock_key, subject_lock

    def held(key: str) -> bool:  # PostgreSQL: whether another connection finds the subject's lock taken
        with meta_store.engine.connect() as other:
            got = other.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                                {"k": _lock_key(subject_lock(namespace, key))}).scalar()
            if got:
                other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(subject_lock(namespace, key))})
            return not got

    calls: list[tuple[list[str], list[bool]]] = []

    def taking(taken: list[str]) -> None:
        pg = meta_store.engine.dialect.name == "postgresql"
        calls.append((taken, [held(k) for k in ("s1", "s2", "s3")] if pg else []))

    doc = {"id": new_id(), "name": "c", "createdAt": "2026-01-01T00:00:00Z",
           "usageAttribution": {"subjectKeys": ["s1"]}}
    meta_store.put_customer(namespace, doc, taking=taking)
    meta_store.put_customer(namespace, {**doc, "name": "renamed"}, live=True, taking=taking)  # takes none
    meta_store.put_customer(namespace, {**doc, "usageAttribution": {"subjectKeys": ["s1", "s2", "s3"]}}, live=True,
                            taking=taking)
    pg = meta_store.engine.dialect.name == "postgresql"
    assert calls == [(["s1"], [True, False, False] if pg else []),
                     (["s2", "s3"], [False, True, True] if pg else [])]
    assert not pg or not any(held(k) for k in ("s1", "s2", "s3"))  # released with the transaction

    def refuse(taken: list[str]) -> None:
        raise Conflict("no")

    with pytest.raises(Conflict):
        meta_store.put_customer(namespace, {**doc, "usageAttribution": {"subjectKeys": ["s4"]}}, live=True,
                                taking=refuse)
    assert meta_store.get_customer(namespace, doc["id"])["usageAttribution"]["subjectKeys"] == ["s1", "s2", "s3"]
    assert meta_store.customers_for_subjects(namespace, ["s1", "s2", "s3", "s4"]) == dict.fromkeys(
        ["s1", "s2", "s3"], doc["id"])


def test_a_customer_update_is_never_stamped_before_the_stored_one(meta_store, namespace: str) -> None:
    """An update that read the customer before another update wrote it (last writer wins), on a clock behind, keeps
    the stored updatedAt: its write (and the document it was given) carries the later one."""
    doc = {"id": new_id(), "name": "c", "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
    meta_store.put_customer(namespace, doc)
    meta_store.put_customer(namespace, {**doc, "name": "later", "updatedAt": "2026-01-01T00:01:00Z"}, live=True)
    behind = {**doc, "name": "behind", "updatedAt": "2026-01-01T00:00:30Z"}
    meta_store.put_customer(namespace, behind, live=True)
    assert behind["updatedAt"] == "2026-01-01T00:01:00Z"
    stored = meta_store.get_customer(namespace, doc["id"])
    assert (stored["name"], stored["updatedAt"]) == ("behind", "2026-01-01T00:01:00Z")
    ahead = {**doc, "name": "ahead", "updatedAt": "2026-01-01T00:02:00Z"}
    meta_store.put_customer(namespace, ahead, live=True)
    assert meta_store.get_customer(namespace, doc["id"])["updatedAt"] == "2026-01-01T00:02:00Z"

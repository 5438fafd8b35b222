"""The app store (adapters/sql_apps.py) and provisioning on SQLite and PostgreSQL: one sandbox app and one default
billing profile per namespace however many processes provision it at once; secrets kept out of the documents;
an app id names its namespace (the Stripe webhook's way in)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from billow.adapters.sql_apps import SqlAppStore
from billow.adapters.sql_billing import SqlBillingStore
from billow.domain.apps import new_app
from billow.ids import is_ulid, new_id
from billow.services import apps as svc

NOW = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_database"))


def test_store_contract(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        store = SqlAppStore(engine)
        store.migrate()
        doc = new_app(new_id(), "stripe", "Stripe", "2026-05-01T00:00:00Z", stripeAccountId="acct_1")
        assert store.add_app("ns_a", doc, {"apiKey": "sk_test_secret", "webhookSecret": "whsec_1"}) == doc
        assert store.get_app("ns_a", doc["id"]) == doc and store.get_app("ns_b", doc["id"]) is None
        assert "sk_test_secret" not in str(store.list_apps("ns_a"))
        assert store.app_secrets("ns_a", doc["id"]) == {"apiKey": "sk_test_secret", "webhookSecret": "whsec_1"}
        assert store.app_secrets("ns_b", doc["id"]) == {}
        assert store.namespace_of_app(doc["id"]) == "ns_a" and store.namespace_of_app(new_id()) is None
        store.put_app("ns_a", {**doc, "name": "Renamed"})  # secrets kept when not given
        assert store.app_secrets("ns_a", doc["id"])["apiKey"] == "sk_test_secret"
        store.put_app("ns_a", {**doc, "deletedAt": "2026-05-02T00:00:00Z"})
        assert store.list_apps("ns_a") == [] and len(store.list_apps("ns_a", include_deleted=True)) == 1
        store.put_customer_app("ns_a", "cust_1", doc["id"], {"stripeCustomerId": "cus_1"})
        store.put_customer_app("ns_a", "cust_1", doc["id"], {"stripeCustomerId": "cus_2"})  # replaced
        assert store.customer_apps("ns_a", "cust_1") == {doc["id"]: {"stripeCustomerId": "cus_2"}}
        assert store.customer_apps("ns_b", "cust_1") == {} and store.app_in_customer_data("ns_a", doc["id"])
        store.put_customer_app("ns_a", "cust_1", doc["id"], None)
        assert store.customer_apps("ns_a", "cust_1") == {}
    finally:
        engine.dispose()


def test_concurrent_provisioning_makes_one_sandbox_app_and_one_default_profile(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        SqlAppStore(engine).migrate()
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def provision() -> None:  # each thread its own store objects, as separate processes have
            try:
                start.wait()
                svc.provision("ns", apps=SqlAppStore(engine), billing=SqlBillingStore(engine), now=NOW)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=provision) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        (sandbox,) = SqlAppStore(engine).list_apps("ns")
        (profile,) = SqlBillingStore(engine).list_profiles("ns")
        assert sandbox["type"] == "sandbox" and is_ulid(sandbox["id"]) and is_ulid(profile["id"])
        ref = {"id": sandbox["id"], "type": "sandbox"}
        assert profile["default"] and profile["apps"] == {"tax": ref, "invoicing": ref, "payment": ref}
        assert svc.is_provisioned(profile)
        # Provisioning again changes nothing; another namespace gets its own.
        assert svc.provision("ns", apps=SqlAppStore(engine), billing=SqlBillingStore(engine), now=NOW) is None
        svc.provision("other", apps=SqlAppStore(engine), billing=SqlBillingStore(engine), now=NOW)
        (other,) = SqlAppStore(engine).list_apps("other")
        assert other["id"] != sandbox["id"] and len(SqlBillingStore(engine).list_profiles("other")) == 1
    finally:
        engine.dispose()


def test_the_provisioned_profile_yields_to_the_first_profile_the_user_creates(db_url: str) -> None:
    from billow.services.billing_profiles import create_profile

    engine = sa.create_engine(db_url)
    try:
        apps, billing = SqlAppStore(engine), SqlBillingStore(engine)
        apps.migrate()
        made = svc.provision("ns", apps=apps, billing=billing, now=NOW)
        assert made is not None and made["default"]
        mine = create_profile("ns", {"name": "Mine", "supplier": {"name": "Acme"}}, store=billing, now=NOW, apps=apps)
        assert mine["default"] and mine["apps"]["invoicing"] == made["apps"]["invoicing"]
        assert [p["name"] for p in billing.list_profiles("ns") if p["default"]] == ["Mine"]
        second = create_profile("ns", {"name": "Second", "supplier": {"name": "Acme"}}, store=billing, now=NOW,
                                apps=apps)
        assert not second["default"]  # only the first one the user makes
    finally:
        engine.dispose()

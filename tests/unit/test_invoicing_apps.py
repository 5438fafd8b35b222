"""Issuing goes through the profile's invoicing app (ports.InvoicingApp) and nothing else: the app's external ids
are recorded, an app that confirms later (custom invoicing) leaves the invoice issuing, a failing app leaves it
issuing, failed (retry), and a void reaches the app that issued it. SQLite billing store, a recording app."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from billow.adapters.sql_billing import SqlBillingStore
from billow.services import billing_profiles, invoices
from tests.conftest import t

NOW = t("2026-05-01T00:00:00Z")


class RecordingApp:
    def __init__(self, answer: dict[str, Any] | None | Exception) -> None:
        self.answer, self.calls = answer, []  # type: list[tuple[str, str]]

    def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("issue", invoice["id"]))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def void(self, invoice: dict[str, Any]) -> None:
        self.calls.append(("void", invoice["id"]))


class Apps:
    def __init__(self, app: RecordingApp) -> None:
        self.app, self.types, self.heard = app, [], []  # type: RecordingApp, list[str], list[str]

    def invoicing(self, app_type: str) -> RecordingApp:
        self.types.append(app_type)
        return self.app

    def issued(self, invoice: dict[str, Any]) -> None:
        self.heard.append("issued")

    def updated(self, invoice: dict[str, Any]) -> None:
        self.heard.append("updated")


@pytest.fixture
def store(tmp_path: Any) -> SqlBillingStore:
    s = SqlBillingStore(sa.create_engine(f"sqlite:///{tmp_path / 'meta.db'}"))
    s.migrate()
    return s


def draft(store: SqlBillingStore, invoicing: str) -> dict[str, Any]:
    profile = billing_profiles.create_profile("ns", {"name": "P", "supplier": {"name": "S"}, "apps": {
        "invoicing": invoicing, "payment": "custom_invoicing" if invoicing != "sandbox" else "sandbox"}},
        store=store, now=NOW)
    line = {"id": "l1", "name": "Fee", "currency": "USD", "period": {"from": "2026-04-01T00:00:00Z",
                                                                   "to": "2026-05-01T00:00:00Z"},
            "totals": {"amount": "10", "discountsTotal": "0"}}
    inv = invoices.new_invoice("ns", {"id": "c1", "key": "acme"}, profile, "USD", [line], number=1, now=NOW)
    store.put_invoice("ns", inv)
    return inv


def test_the_apps_external_ids_are_recorded_and_a_void_reaches_the_app(store: SqlBillingStore) -> None:
    apps = Apps(RecordingApp({"invoicing": "ext_1", "payment": "ext_1"}))
    inv = invoices.issue("ns", draft(store, "stripe"), store=store, apps=apps, now=NOW)
    assert (inv["status"], inv["externalIds"], apps.types, apps.heard) == \
        ("payment_processing", {"invoicing": "ext_1", "payment": "ext_1"}, ["stripe"], ["issued"])
    voided = invoices.act("ns", inv["id"], "void", store=store, apps=apps, now=NOW)
    assert voided["status"] == "voided" and apps.app.calls == [("issue", inv["id"]), ("void", inv["id"])]


def test_an_app_that_confirms_later_leaves_the_invoice_issuing(store: SqlBillingStore) -> None:
    apps = Apps(RecordingApp(None))
    inv = invoices.issue("ns", draft(store, "custom_invoicing"), store=store, apps=apps, now=NOW)
    assert inv["statusDetails"]["extendedStatus"] == "issuing.syncing" and apps.heard == []
    assert store.get_invoice("ns", inv["id"])["status"] == "issuing"  # type: ignore[index]


def test_a_failing_app_leaves_the_invoice_issuing_failed_for_retry(store: SqlBillingStore) -> None:
    apps = Apps(RecordingApp(RuntimeError("down")))
    inv = invoices.issue("ns", draft(store, "stripe"), store=store, apps=apps, now=NOW)
    assert (inv["statusDetails"]["extendedStatus"], inv["statusDetails"]["failed"]) == ("issuing.failed", True)
    assert inv["validationIssues"][0]["component"] == "stripe" and "retry" in inv["statusDetails"]["availableActions"]


def test_bootstrap_picks_the_invoicing_apps_and_billing_apps_take_no_container(tmp_path: Any) -> None:
    """The apps object is built from what it uses (namespace, stores, clock, the invoicing apps bootstrap chose
    from the settings), not from the whole container."""
    import inspect

    from billow.adapters.billing_apps import BillingApps, CustomInvoicing, SandboxInvoicing, StripeInvoicing
    from billow.bootstrap import Settings, build

    assert "c" not in inspect.signature(BillingApps).parameters
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), namespace="ns1",
                                  stripe_api_key="sk_test_1", stripe_api_base="http://127.0.0.1:9")))
    apps = c.billing_apps()
    assert not any(v is c for v in vars(apps).values())
    stripe = apps.invoicing("stripe")
    assert isinstance(stripe, StripeInvoicing) and (stripe.api_key, stripe.api_base) == ("sk_test_1",
                                                                                          "http://127.0.0.1:9")
    assert isinstance(apps.invoicing("custom_invoicing"), CustomInvoicing)
    assert isinstance(apps.invoicing("sandbox"), SandboxInvoicing)
    with c.acting_for("ns2"):
        assert c.billing_apps().namespace == "ns2"

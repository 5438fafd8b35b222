"""Writes that look, then insert, made by several Lambda containers at once on one PostgreSQL (as on Aurora).

Each test runs 8 threads over two stores on their own engines (two containers) against a PostgreSQL database of
the test's own (tests/conftest.py `pg_database`), started together at a barrier, for several rounds. (SQLite, the
threads of one `billow serve`: tests/e2e/test_concurrent_writes_embedded.py.) One test makes its interleaving on
purpose instead (a publish by the other container between a plan add-on write's look and its write). An upsert must
succeed for every writer and leave one row; a write whose conflict is the right answer must answer Conflict (409),
never a bare IntegrityError (500)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa

from billow.adapters.sql import SqlMetaStore
from billow.ids import new_id

NOW = datetime(2026, 6, 1, tzinfo=UTC)
THREADS = 8


@pytest.fixture
def metas(pg_database: str) -> Iterator[list[SqlMetaStore]]:
    """Two containers' meta stores (each its own engine) on one migrated PostgreSQL database."""
    stores = [SqlMetaStore(pg_database) for _ in range(2)]
    stores[0].migrate()
    try:
        yield stores
    finally:
        for m in stores:
            m.close()


@pytest.fixture
def engines(metas: list[SqlMetaStore]) -> list[sa.Engine]:
    return [m.engine for m in metas]


def at_once(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run the calls on threads of their own, released together; what they returned and what they raised."""
    go = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        go.wait()
        try:
            results.append(call())
        except BaseException as e:  # noqa: BLE001 (collected and asserted by the test)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, errors


def test_containers_setting_one_customer_s_app_data_at_once_all_succeed(engines: list[sa.Engine]) -> None:
    """PUT /customers/{c}/stripe (and /apps, and Checkout recording the Stripe customer it made) replaces the
    customer's data for an app: delete, then insert. Two containers doing it at once for one customer both found
    nothing left to delete and the later insert met the primary key: a 500 for a replace that should succeed.
    Every write now succeeds and the customer keeps one row, holding one of the writes."""
    from billow.adapters.sql_apps import SqlAppStore

    stores = [SqlAppStore(e) for e in engines]
    app_id, failed = new_id(), []
    for round_ in range(10):
        customer = new_id()
        if round_ % 2:  # a replace of data already there, as well as a first write
            stores[0].put_customer_app("ns", customer, app_id, {"stripeCustomerId": "cus_old"})
        _, errors = at_once([partial(stores[n % 2].put_customer_app, "ns", customer, app_id,
                                     {"stripeCustomerId": f"cus_{n}"}) for n in range(THREADS)])
        failed += errors
        data = stores[1].customer_apps("ns", customer)
        assert list(data) == [app_id] and data[app_id]["stripeCustomerId"] in {f"cus_{n}" for n in range(THREADS)}
    assert not failed, (len(failed), failed[:3])


def test_containers_setting_one_customer_s_billing_override_at_once_all_succeed(engines: list[sa.Engine]) -> None:
    """PUT /billing/customers/{c} replaces the customer's override (its billing profile and workflow): delete, then
    insert, so two containers at once met the primary key and one answered 500. Every write now succeeds and one
    override stays."""
    from billow.adapters.sql_billing import SqlBillingStore

    stores, failed = [SqlBillingStore(e) for e in engines], []
    for round_ in range(10):
        customer = new_id()
        if round_ % 2:
            stores[0].put_override("ns", customer, {"profileId": "old"})
        _, errors = at_once([partial(stores[n % 2].put_override, "ns", customer, {"profileId": f"p{n}"})
                             for n in range(THREADS)])
        failed += errors
        assert stores[1].list_overrides("ns")[customer]["profileId"] in {f"p{n}" for n in range(THREADS)}
    assert not failed, (len(failed), failed[:3])


def test_containers_overriding_one_entitlement_at_once_one_wins_the_others_conflict(engines: list[sa.Engine]) -> None:
    """PUT .../entitlements/{e}/override replaces the live entitlement with a new one. Two containers overriding it
    at once both ended the old one and both inserted a new live one: the later insert met the one-live-entitlement
    index and answered 500. Now exactly one override wins, every other answers Conflict (409: the entitlement it
    read was replaced meanwhile), and one entitlement is live, the winner's."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict

    stores = [SqlEntitlementStore(e) for e in engines]
    failed: list[BaseException] = []
    for _ in range(10):
        subject, feature_id = new_id(), new_id()
        old = {"id": new_id(), "type": "metered", "subjectKey": subject, "featureKey": "f", "featureId": feature_id}
        stores[0].put_entitlement("ns", old, created_at=NOW)
        news = [{**old, "id": new_id()} for _ in range(THREADS)]
        won, errors = at_once([partial(stores[n % 2].replace_entitlement, "ns", old["id"], news[n], at=NOW,
                                       old_doc={**old, "deletedAt": "x"}) for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        assert len(won) == 1 and len(errors) == THREADS - 1
        live = stores[1].list_entitlements("ns", subject_keys=[subject])
        assert len(live) == 1 and live[0]["id"] in {d["id"] for d in news}
    assert not failed, (len(failed), failed[:3])


def test_containers_adding_pending_lines_for_one_customer_at_once_keep_every_line(metas: list[SqlMetaStore]) -> None:
    """POST /billing/customers/{c}/invoices/pending-lines puts one-off lines on the customer's gathering invoice.
    Two containers adding lines at once: with no gathering invoice yet both made one, with the customer's one
    gathering number, and the later answered 500; with one there, both read its lines and wrote them back with
    their own, guarded by its status only, so one of the charges was lost although both answered 201. Every add
    now succeeds and the customer's one gathering invoice holds every line."""
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services.pending_lines import add_pending_lines

    billing = [SqlBillingStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]

    def body(name: str) -> dict[str, Any]:
        return {"currency": "USD", "lines": [{"name": name, "price": {"type": "flat", "amount": "10"},
                                              "period": {"from": "2026-06-01T00:00:00Z", "to": "2026-06-02T00:00:00Z"},
                                              "invoiceAt": "2026-06-02T00:00:00Z"}]}

    failed: list[BaseException] = []
    lost: list[str] = []  # lines whose add answered success but that are not on the gathering invoice
    for round_ in range(10):
        customer: dict[str, Any] = {"id": new_id(), "key": f"c{round_}", "name": "C", "usageAttribution": {"subjectKeys": []},
                    "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        if round_ % 2:  # lines added to a gathering invoice already there, as well as to a first one
            add_pending_lines("ns", customer["id"], body("first"), store=billing[0], meta=metas[0], ents=ents[0],
                              now=NOW)
        added, errors = at_once([partial(add_pending_lines, "ns", customer["id"], body(f"line {n}"),
                                         store=billing[n % 2], meta=metas[n % 2], ents=ents[n % 2], now=NOW)
                                 for n in range(THREADS)])
        failed += errors
        (holder,) = billing[1].list_invoices("ns", customer_ids=[customer["id"]], statuses=["gathering"])
        held = {ln["id"] for ln in holder["lines"]}
        lost += [ln["name"] for out in added for ln in out["lines"] if ln["id"] not in held]
    assert not failed and not lost, (len(failed), len(lost), failed[:3])


def test_containers_making_default_billing_profiles_at_once_leave_one_default(engines: list[sa.Engine]) -> None:
    """A namespace has one default billing profile: writing one with `default` unmarks the others in the same
    transaction. Two containers doing it at once (two POST /billing/profiles with default: true, or the first two
    profiles of a namespace) each unmarked the defaults it saw and neither saw the other's new one: both stayed
    default, and which one a customer is billed on depended on the read. Now one default stays, one of the writes."""
    from billow.adapters.sql_billing import SqlBillingStore

    stores = [SqlBillingStore(e) for e in engines]
    doubled = 0
    for round_ in range(10):
        namespace = f"profiles{round_}"
        if round_ % 2:  # a default there already, as well as none
            stores[0].put_profile(namespace, {"id": new_id(), "name": "old", "default": True})
        docs = [{"id": new_id(), "name": f"p{n}", "default": True} for n in range(THREADS)]
        _, errors = at_once([partial(stores[n % 2].put_profile, namespace, docs[n]) for n in range(THREADS)])
        assert not errors, errors[:3]
        defaults = [p["id"] for p in stores[1].list_profiles(namespace) if p["default"]]
        doubled += len(defaults) != 1
        assert set(defaults) <= {d["id"] for d in docs}
    assert doubled == 0, f"{doubled} of 10 namespaces kept more than one default profile"


def test_containers_subscribing_one_customer_at_once_make_one_subscription(metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/subscriptions refuses a second subscription for a customer in the same time (409). Two containers
    creating one at once (a client's retry after a timeout) each looked, found none and wrote its own: the customer
    had two running subscriptions and every billing run invoiced both. Now one is made; the others answer Conflict."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services.subscriptions import create

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    plan = {"name": "Base", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "default", "name": "Default", "rateCards": [
            {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]}]}
    doubled, failed = 0, []
    for round_ in range(10):
        customer: dict[str, Any] = {"id": new_id(), "key": f"s{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"s{round_}"]},
                                    "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        made, errors = at_once([partial(create, "ns", {"customPlan": plan, "customerId": customer["id"]},
                                        store=catalogs[n % 2], meta=metas[n % 2], ents=ents[n % 2], now=NOW)
                                for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        subs = catalogs[1].list_subscriptions("ns", customer["id"])
        doubled += len(subs) != 1
        assert len(made) == len(subs) and len(errors) == THREADS - len(made)
    assert not failed and doubled == 0, (f"{doubled} of 10 customers got several subscriptions", failed[:3])


def test_containers_deleting_a_customer_while_subscribing_it_leave_no_subscription_without_its_customer(
        metas: list[SqlMetaStore]) -> None:
    """DELETE /api/v1/customers/{c} refuses a customer with a running subscription (409) and POST /api/v1/subscriptions
    refuses a deleted customer (400): each checked the other's object, then wrote its own, so at once both succeeded
    and the subscription ran for nobody. Now the deletion's check and the new subscription's run under one lock per
    customer (`customer_lock`): of each pair, one is refused."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import BillowError
    from billow.services import directory
    from billow.services.subscriptions import check_customer_deletable, create

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    plan = {"name": "Base", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "default", "name": "Default", "rateCards": [
            {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]}]}
    orphaned = 0
    for round_ in range(10):
        customer: dict[str, Any] = {"id": new_id(), "key": f"o{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"o{round_}"]},
                                    "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)

        def delete(n: int, cid: str = customer["id"]) -> None:
            deletable = partial(check_customer_deletable, "ns", cid, store=catalogs[n % 2], now=NOW)
            deletable()
            directory.delete_customer("ns", cid, meta=metas[n % 2], now=NOW, check=deletable)

        calls: list[Callable[[], Any]] = [
            partial(create, "ns", {"customPlan": plan, "customerId": customer["id"]}, store=catalogs[0], meta=metas[0],
                    ents=ents[0], now=NOW), partial(delete, 1)]
        _, errors = at_once(calls)
        assert all(isinstance(e, BillowError) and e.status in (400, 409) for e in errors), errors
        live = [d for d in catalogs[1].list_subscriptions("ns", customer["id"]) if not d.get("deletedAt")]
        orphaned += bool(live) and metas[1].get_customer("ns", customer["id"]) is None
    assert orphaned == 0, f"{orphaned} of 10 customers deleted with a running subscription"


def test_containers_invoicing_one_customer_at_once_answer_409_not_500(metas: list[SqlMetaStore]) -> None:
    """POST /billing/invoices/invoice (invoice now) numbers the customer's invoice from its count of invoices. Two
    containers invoicing one customer at once (here each its own pending line) both took the next number; the later
    commit met the unique number and was reported as a bug ("an invoice number of this batch is another invoice's"),
    raised from the run: a 500. It is a concurrent run, as the lost race on the pending lines' holder is: the call
    is skipped and answers 409 (call again), and no line is lost or invoiced twice."""
    from billow.adapters.memory import InMemoryUsageStore
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services.apps import provision
    from billow.services.billing_run import RunResult, run
    from billow.services.pending_lines import add_pending_lines

    billing = [SqlBillingStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    usage = InMemoryUsageStore()
    provision("ns", apps=SqlAppStore(metas[0].engine), billing=billing[0], now=NOW)
    failed: list[BaseException] = []
    for round_ in range(6):
        customer: dict[str, Any] = {"id": new_id(), "key": f"i{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"i{round_}"]},
                                    "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        lines = add_pending_lines("ns", customer["id"], {"currency": "USD", "lines": [
            {"name": f"line {n}", "price": {"type": "flat", "amount": "10"}, "invoiceAt": "2026-05-02T00:00:00Z",
             "period": {"from": "2026-05-01T00:00:00Z", "to": "2026-05-02T00:00:00Z"}} for n in range(THREADS)]},
            store=billing[0], meta=metas[0], ents=ents[0], now=NOW)["lines"]
        results, errors = at_once([partial(run, "ns", store=billing[n % 2], catalog_store=catalogs[n % 2],
                                           meta=metas[n % 2], ents=ents[n % 2], usage=usage, now=NOW,
                                           customer_id=customer["id"], line_ids=[lines[n]["id"]])
                                   for n in range(THREADS)])
        failed += errors
        made = [inv for r in results if isinstance(r, RunResult) for inv in r.invoices]
        assert all(made_or_skipped for r in results for made_or_skipped in [r.invoices or r.skipped])
        invoiced = [ln["id"] for inv in made for ln in inv["lines"]]
        (holder,) = billing[1].list_invoices("ns", customer_ids=[customer["id"]], statuses=["gathering"])
        pending = [ln["id"] for ln in holder["lines"]]
        assert sorted(invoiced + pending) == sorted(ln["id"] for ln in lines)  # each line once: invoiced or pending
    assert not failed, (len(failed), failed[:3])


def test_containers_adding_add_ons_to_one_subscription_at_once_keep_every_add_on(metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/subscriptions/{s}/addons reads the subscription, appends the add-on and writes the document
    back. Two containers adding add-ons at once both read it without the other's and the later write dropped the
    earlier add-on, although both answered 201. Every add now lands on the subscription (the loser of a race
    reads again and adds to what the other wrote); an add-on added twice at once is there once, the other 409."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services import catalog
    from billow.services.subscriptions import add_addon, create

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    fee = {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
           "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
    plan = {"name": "Base", "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "Default", "rateCards": [fee]}]}
    addons = []
    for n in range(THREADS):
        a = catalog.create("ns", "addon", {"key": f"extra{n}", "name": f"Extra {n}", "currency": "USD",
                                           "instanceType": "single", "rateCards": [{**fee, "key": f"extra{n}"}]},
                           store=catalogs[0], now=NOW)
        addons.append(catalog.publish("ns", "addon", a["id"], store=catalogs[0], features=ents[0], now=NOW))
    # a plan offering them (a subscription buys add-ons its plan offers; a custom-plan one takes none)
    draft = catalog.create("ns", "plan", {**plan, "key": "base"}, store=catalogs[0], now=NOW)
    for a in addons:
        catalog.add_plan_addon("ns", draft["id"], {"addonId": a["id"], "fromPlanPhase": "default"},
                               store=catalogs[0], now=NOW)
    catalog.publish("ns", "plan", draft["id"], store=catalogs[0], features=ents[0], now=NOW)
    failed: list[BaseException] = []
    lost = twice = 0
    for round_ in range(6):
        customer: dict[str, Any] = {"id": new_id(), "key": f"a{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"a{round_}"]},
                                    "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        sub = create("ns", {"plan": {"key": "base"}, "customerId": customer["id"]}, store=catalogs[0],
                     meta=metas[0], ents=ents[0], now=NOW)
        same = round_ % 3 == 2  # every thread adding the one add-on, as well as each its own
        added, errors = at_once([partial(add_addon, "ns", sub["id"], {"addon": {"id": addons[0 if same else n]["id"]},
                                                                      "quantity": 1},
                                         store=catalogs[n % 2], meta=metas[n % 2], ents=ents[n % 2], now=NOW)
                                 for n in range(THREADS)])
        failed += [e for e in errors if not (same and isinstance(e, Conflict))]
        held = catalogs[1].get_subscription("ns", sub["id"])["addons"]  # type: ignore[index]
        lost += len({a["id"] for a in added} - {a["id"] for a in held})
        twice += same and len(held) != 1
    assert not failed and not lost and not twice, (len(failed), lost, twice, failed[:3])


def _one_line_draft(meta: SqlMetaStore, billing: Any, ents: Any, profile: dict[str, Any], key: str) -> dict[str, Any]:
    """A new customer `key` and its draft invoice of one flat 10.00 USD one-off line, stored."""
    from billow.services.invoices import new_invoice
    from billow.services.pending_lines import add_pending_lines

    customer: dict[str, Any] = {"id": new_id(), "key": key, "name": "C", "currency": "USD",
                                "usageAttribution": {"subjectKeys": []},
                                "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"}
    meta.put_customer("ns", customer)
    lines = add_pending_lines("ns", customer["id"], {"currency": "USD", "lines": [
        {"name": "line", "price": {"type": "flat", "amount": "10"}, "invoiceAt": "2026-05-02T00:00:00Z",
         "period": {"from": "2026-05-01T00:00:00Z", "to": "2026-05-02T00:00:00Z"}}]},
        store=billing, meta=meta, ents=ents, now=NOW)["lines"]
    draft = new_invoice("ns", customer, profile, "USD", lines, number=1, now=NOW)
    billing.put_invoice("ns", draft)
    return draft


def test_containers_editing_one_draft_invoice_at_once_keep_every_edit(metas: list[SqlMetaStore]) -> None:
    """PUT /billing/invoices/{i} edits a draft that keeps its status (its description, its metadata): read, edit,
    write back guarded by the status only. Two containers editing one draft at once (one its description, one its
    metadata) both answered 200 and the later write put back what the earlier changed. Now both edits land."""
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services.apps import provision
    from billow.services.invoices import update_invoice

    billing = [SqlBillingStore(m.engine) for m in metas]
    ents = SqlEntitlementStore(metas[0].engine)
    provision("ns", apps=SqlAppStore(metas[0].engine), billing=billing[0], now=NOW)
    (profile,) = [p for p in billing[0].list_profiles("ns") if p["default"]]
    profile["workflow"]["invoicing"]["autoAdvance"] = False  # a draft waiting for approval
    lost = 0
    failed: list[BaseException] = []
    for round_ in range(10):
        draft = _one_line_draft(metas[0], billing[0], ents, profile, f"d{round_}")
        edits = [{"description": f"d{n}"} if n % 2 else {"metadata": {"m": str(n)}} for n in range(THREADS)]
        _, errors = at_once([partial(update_invoice, "ns", draft["id"], edits[n], store=billing[n % 2], now=NOW)
                             for n in range(THREADS)])
        failed += errors
        stored = billing[1].get_invoice("ns", draft["id"])
        assert stored is not None and stored["status"] == "draft"
        lost += stored["description"] is None or stored["metadata"] is None
    assert not failed and not lost, (len(failed), f"{lost} of 10 drafts lost an edit", failed[:3])


def test_containers_updating_and_publishing_one_plan_draft_at_once_never_unpublish_it(
        metas: list[SqlMetaStore]) -> None:
    """PUT /api/v1/plans/{p} (update a draft) and POST /api/v1/plans/{p}/publish at once: both read the draft,
    the publish wrote it active and the update, landing later, wrote it back as a draft with its own fields, both
    answering 200: a plan published to the caller was a draft again (no subscription can start on it). Now the
    update either lands before the publish (which publishes the updated draft) or answers 409 (only a draft can be
    changed), one publish wins and the version stays published."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.domain import catalog as catalog_rules
    from billow.errors import Conflict
    from billow.services import catalog

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]

    def plan(name: str) -> dict[str, Any]:
        return {"name": name, "currency": "USD", "billingCadence": "P1M", "phases": [
            {"key": "default", "name": "Default", "rateCards": [
                {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]}]}

    failed: list[BaseException] = []
    unpublished = doubled = 0
    for round_ in range(10):
        draft = catalog.create("ns", "plan", {**plan("draft"), "key": f"p{round_}"}, store=catalogs[0], now=NOW)
        calls: list[Callable[[], Any]] = []
        for n in range(THREADS):
            if n % 2:
                calls.append(partial(catalog.update, "ns", "plan", draft["id"], plan(f"u{n}"), store=catalogs[n % 2],
                                     now=NOW))
            else:
                calls.append(partial(catalog.publish, "ns", "plan", draft["id"], store=catalogs[n % 2],
                                     features=ents[n % 2], now=NOW))
        done, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, Conflict)]
        stored = catalogs[1].get_versioned("plan", "ns", draft["id"])
        assert stored is not None
        published = [d for d in done if d.get("effectiveFrom")]
        updated = [d["name"] for d in done if not d.get("effectiveFrom")]
        doubled += len(published) != 1  # one publish wins, the others find it published (409)
        unpublished += catalog_rules.status(stored, NOW) != "active"
        assert stored["name"] in ({*updated, published[0]["name"]} if published else {"draft", *updated})
    assert not failed and not unpublished and not doubled, (
        len(failed), f"{unpublished} of 10 published plans were drafts again, {doubled} published more than once",
        failed[:3])


def _flat_plan(name: str) -> dict[str, Any]:
    return {"name": name, "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "default", "name": "Default", "rateCards": [
            {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]}]}


def test_containers_making_one_plan_or_add_on_key_s_draft_at_once_make_one(metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/plans (a new key, or the next version of a published one), POST /api/v1/plans/{key}/next and
    POST /api/v1/addons (a new key, or the next version of a published one) look at the key's versions, then insert
    the next. Several containers doing it at once for one key all find the same latest version: one draft is made,
    every other call answers the key's draft (400 naming the field, as OpenMeter; or Conflict 409, were two inserts
    of one version to meet), never a 500, and the key has one version more."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict, ValidationFailed
    from billow.services import catalog

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = SqlEntitlementStore(metas[0].engine)
    failed: list[BaseException] = []
    doubled = 0
    for round_ in range(9):
        key, how = f"k{round_}", ("create", "next", "addon")[round_ % 3]
        kind = "addon" if how == "addon" else "plan"
        if how == "next":  # a published version 1 to make the next of
            v1 = catalog.create("ns", "plan", {**_flat_plan("v1"), "key": key}, store=catalogs[0], now=NOW)
            catalog.publish("ns", "plan", v1["id"], store=catalogs[0], features=ents, now=NOW)
        elif how in ("create", "addon") and round_ % 2:  # a published version 1 as well as none
            fee = _flat_plan("")["phases"][0]["rateCards"][0]
            body = {**_flat_plan("v1"), "key": key} if how == "create" else {
                "key": key, "name": "v1", "currency": "USD", "instanceType": "single", "rateCards": [fee]}
            v1 = catalog.create("ns", kind, body, store=catalogs[0], now=NOW)
            catalog.publish("ns", kind, v1["id"], store=catalogs[0], features=ents, now=NOW)
        calls: list[Callable[[], Any]] = []
        for n in range(THREADS):
            store = catalogs[n % 2]
            if how == "next":
                calls.append(partial(catalog.next_version, "ns", "plan", key, store=store, now=NOW))
            elif how == "create":
                calls.append(partial(catalog.create, "ns", "plan", {**_flat_plan(f"p{n}"), "key": key},
                                     store=store, now=NOW))
            else:
                fee = _flat_plan("")["phases"][0]["rateCards"][0]
                calls.append(partial(catalog.create, "ns", "addon", {
                    "key": key, "name": f"a{n}", "currency": "USD", "instanceType": "single", "rateCards": [fee]},
                    store=store, now=NOW))
        made, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, Conflict) and not (
            isinstance(e, ValidationFailed) and "already has a draft" in str(e))]
        versions = catalogs[1].list_versioned(kind, "ns", key=key)
        drafts = [v for v in versions if not v.get("effectiveFrom")]
        doubled += len(made) != 1
        assert len(drafts) <= 1 and [d["id"] for d in drafts] == [m["id"] for m in made][:1], (how, versions)
    assert not failed and not doubled, (len(failed), f"{doubled} of 9 keys made no draft or several", failed[:3])


def test_containers_changing_one_plan_s_add_ons_at_once_keep_one_answer(metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/plans/{p}/addons looks at the plan's add-ons, then inserts its own; PUT and DELETE
    .../addons/{a} read the plan add-on, then write it back. Several containers adding one add-on to a draft at once
    each found it missing and all inserted it: the plan offered the add-on twice. An edit racing a removal wrote the
    removed add-on back live, although the removal answered 204. Now one add wins and the others answer Conflict
    (409), and a removal that answered 204 stays removed (an edit after it is a 404)."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict, NotFound
    from billow.services import catalog

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = SqlEntitlementStore(metas[0].engine)
    fee = _flat_plan("")["phases"][0]["rateCards"][0]
    addon = catalog.create("ns", "addon", {"key": "extra", "name": "Extra", "currency": "USD",
                                           "instanceType": "multiple", "rateCards": [{**fee, "key": "extra"}]},
                           store=catalogs[0], now=NOW)
    catalog.publish("ns", "addon", addon["id"], store=catalogs[0], features=ents, now=NOW)
    failed: list[BaseException] = []
    twice = revived = 0
    for round_ in range(10):
        plan = catalog.create("ns", "plan", {**_flat_plan("p"), "key": f"pa{round_}"}, store=catalogs[0], now=NOW)
        body = {"addonId": addon["id"], "fromPlanPhase": "default"}
        if round_ % 2 == 0:  # adds of one add-on at once
            added, errors = at_once([partial(catalog.add_plan_addon, "ns", plan["id"], body, store=catalogs[n % 2],
                                             now=NOW) for n in range(THREADS)])
            failed += [e for e in errors if not isinstance(e, Conflict)]
            live = catalogs[1].list_plan_addons("ns", plan["id"])
            twice += len(live) != 1 or len(added) != 1
        else:  # edits of it racing its removal
            catalog.add_plan_addon("ns", plan["id"], body, store=catalogs[0], now=NOW)
            calls: list[Callable[[], Any]] = [
                partial(catalog.update_plan_addon, "ns", plan["id"], addon["id"],
                        {"fromPlanPhase": "default", "maxQuantity": n + 1}, store=catalogs[n % 2], now=NOW)
                if n % 2 else
                partial(catalog.remove_plan_addon, "ns", plan["id"], addon["id"], store=catalogs[n % 2], now=NOW)
                for n in range(THREADS)]
            done, errors = at_once(calls)
            failed += [e for e in errors if not isinstance(e, NotFound | Conflict)]
            removed = sum(d is None for d in done)
            revived += bool(removed) and bool(catalogs[1].list_plan_addons("ns", plan["id"]))
    assert not failed and not twice and not revived, (
        len(failed), f"{twice} of 5 plans got the add-on several times (or none), {revived} of 5 removals undone",
        failed[:3])


def test_a_plan_add_on_change_meeting_the_plan_s_publish_is_refused(metas: list[SqlMetaStore]) -> None:
    """A plan add-on is added, changed or removed only on a draft plan: the service looks at the plan, then writes.
    A publish by another container landing between the two (here: right after the look) let the write through, and
    a published plan's add-ons changed under the subscriptions made from it. Now the write answers Conflict (409)
    and the published plan's add-ons stay as they were published."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services import catalog

    publish_next: list[Callable[[], Any]] = []

    class PublishedMeanwhile(SqlCatalogStore):
        """This container's store; another container publishes the plan after this one read the plan, while it
        looks up the add-on or the plan's add-ons (the next step of each plan add-on write)."""

        def get_versioned(self, kind: str, namespace: str, id_: str) -> dict[str, Any] | None:
            if kind == "addon" and publish_next:
                publish_next.pop()()
            return super().get_versioned(kind, namespace, id_)

        def list_plan_addons(self, namespace: str, plan_id: str) -> list[dict[str, Any]]:
            if publish_next:
                publish_next.pop()()
            return super().list_plan_addons(namespace, plan_id)

    slow, other = PublishedMeanwhile(metas[0].engine), SqlCatalogStore(metas[1].engine)
    ents = SqlEntitlementStore(metas[1].engine)
    fee = _flat_plan("")["phases"][0]["rateCards"][0]
    addons = []
    for key in ("first", "second"):
        a = catalog.create("ns", "addon", {"key": key, "name": key, "currency": "USD", "instanceType": "multiple",
                                           "rateCards": [{**fee, "key": key}]}, store=other, now=NOW)
        addons.append(catalog.publish("ns", "addon", a["id"], store=other, features=ents, now=NOW))
    let_through = []
    for how in ("add", "update", "remove"):
        plan = catalog.create("ns", "plan", {**_flat_plan("p"), "key": f"pub_{how}"}, store=other, now=NOW)
        catalog.add_plan_addon("ns", plan["id"], {"addonId": addons[0]["id"], "fromPlanPhase": "default"},
                               store=other, now=NOW)
        published_with = other.list_plan_addons("ns", plan["id"])
        publish_next.append(partial(catalog.publish, "ns", "plan", plan["id"], store=other, features=ents, now=NOW))
        try:
            if how == "add":
                catalog.add_plan_addon("ns", plan["id"], {"addonId": addons[1]["id"], "fromPlanPhase": "default"},
                                       store=slow, now=NOW)
            elif how == "update":
                catalog.update_plan_addon("ns", plan["id"], addons[0]["id"], {"fromPlanPhase": "default",
                                                                              "maxQuantity": 3}, store=slow, now=NOW)
            else:
                catalog.remove_plan_addon("ns", plan["id"], addons[0]["id"], store=slow, now=NOW)
        except Conflict:
            pass
        else:
            let_through.append(how)
        assert not publish_next and other.get_versioned("plan", "ns", plan["id"])["effectiveFrom"]  # type: ignore[index]
        if other.list_plan_addons("ns", plan["id"]) != published_with:
            let_through.append(f"{how} changed the published plan")
    assert not let_through, let_through


def test_containers_retrying_one_failed_issuing_at_once_issue_it_once(metas: list[SqlMetaStore]) -> None:
    """POST /billing/invoices/{i}/retry (and advance, approve) of an invoice whose invoicing app failed: the retry
    moved it from issuing back to a draft ready to issue, unguarded, then issued it. Several containers retrying at
    once each wrote it back to a draft, one after the other's issuing: the invoicing app was asked to issue it several
    times, the invoice.created notification was handed over as often, and a paid invoice went back to a draft for a
    while. Now one retry issues it, once, and every other answers Conflict (409: it was retried meanwhile)."""
    import time

    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services.apps import provision
    from billow.services.invoices import act, issue

    class InvoicingSystem:
        """The invoicing app's outside system, down for the first issuing, then taking a moment per invoice."""

        keeps_customer_credit = False

        def __init__(self) -> None:
            self.issued: list[str] = []
            self.down = True

        def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
            if self.down:
                self.down = False
                raise ConnectionError("down")
            time.sleep(0.02)
            self.issued.append(invoice["id"])
            return {}

        def void(self, invoice: dict[str, Any]) -> None:
            raise AssertionError("not voided here")

    class Apps:  # ports.BillingApps: the system above, and the invoice notifications handed over
        def __init__(self, system: InvoicingSystem) -> None:
            self.system, self.notified = system, []  # type: InvoicingSystem, list[str]

        def invoicing(self, app: str) -> InvoicingSystem:
            return self.system

        def issued(self, invoice: dict[str, Any]) -> None:
            self.notified.append(invoice["id"])

        def updated(self, invoice: dict[str, Any]) -> None:
            self.notified.append(invoice["id"])

    billing = [SqlBillingStore(m.engine) for m in metas]
    ents = SqlEntitlementStore(metas[0].engine)
    provision("ns", apps=SqlAppStore(metas[0].engine), billing=billing[0], now=NOW)
    (profile,) = [p for p in billing[0].list_profiles("ns") if p["default"]]
    failed: list[BaseException] = []
    twice = not_one = 0
    for round_ in range(10):
        draft = _one_line_draft(metas[0], billing[0], ents, profile, f"r{round_}")
        system = InvoicingSystem()
        apps = Apps(system)
        assert issue("ns", draft, store=billing[0], apps=apps, now=NOW)["statusDetails"]["failed"]
        done, errors = at_once([partial(act, "ns", draft["id"], "retry", store=billing[n % 2], apps=apps, now=NOW)
                                for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        twice += len(system.issued) != 1 or len(apps.notified) != 1
        not_one += len(done) != 1
        stored = billing[1].get_invoice("ns", draft["id"])
        assert stored is not None and stored["status"] == "paid", stored["statusDetails"]
    assert not failed and not twice and not not_one, (
        len(failed), f"{twice} of 10 invoices issued or notified more than once, {not_one} retried by several",
        failed[:3])


def test_containers_editing_and_approving_one_draft_at_once_issue_every_edit(metas: list[SqlMetaStore]) -> None:
    """PUT /billing/invoices/{i} (its description) and POST .../approve of one draft at once: the approval read the
    draft, the edit wrote its description, and the approval moved the draft it had read to issuing, guarded by the
    status only: the invoice was issued without the edit, although the edit answered 200. Now the approval moves
    only the draft as it read it (else 409, approve again), and an edit after it is 409 (immutable); every edit that
    answered 200 is on the invoice, issued or still a draft."""
    from billow.adapters.billing_apps import SandboxInvoicing
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services.apps import provision
    from billow.services.invoices import act, update_invoice

    class Apps:  # ports.BillingApps with the sandbox invoicing app, notifications heard by no rule
        def invoicing(self, app: str) -> SandboxInvoicing:
            return SandboxInvoicing()

        def issued(self, invoice: dict[str, Any]) -> None:
            pass

        def updated(self, invoice: dict[str, Any]) -> None:
            pass

    billing = [SqlBillingStore(m.engine) for m in metas]
    ents = SqlEntitlementStore(metas[0].engine)
    provision("ns", apps=SqlAppStore(metas[0].engine), billing=billing[0], now=NOW)
    (profile,) = [p for p in billing[0].list_profiles("ns") if p["default"]]
    profile["workflow"]["invoicing"]["autoAdvance"] = False  # a draft waiting for approval
    failed: list[BaseException] = []
    lost = 0
    for round_ in range(10):
        draft = _one_line_draft(metas[0], billing[0], ents, profile, f"e{round_}")
        done, errors = at_once([
            partial(update_invoice, "ns", draft["id"], {"description": f"d{n}"}, store=billing[n % 2], now=NOW)
            if n % 2 else partial(act, "ns", draft["id"], "approve", store=billing[n % 2], apps=Apps(), now=NOW)
            for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        stored = billing[1].get_invoice("ns", draft["id"])
        approved = [d for d in done if d["status"] != "draft"]  # at most one; none if every approval met an edit
        assert stored is not None and len(approved) <= 1 and stored["status"] == ("paid" if approved else "draft")
        edited = [d["description"] for d in done if d["status"] == "draft"]
        lost += bool(edited) and stored["description"] not in edited
    assert not failed and not lost, (len(failed), f"{lost} of 10 invoices issued without an edit", failed[:3])


def test_containers_opening_checkout_for_one_customer_at_once_make_one_stripe_customer(
        metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/stripe/checkout/sessions for a customer with no Stripe customer yet makes one in Stripe and
    records it as the customer's Stripe app data. Several containers opening Checkout for one customer at once (a
    double click) each found none recorded and asked Stripe for one: one Stripe customer per Billow customer only if
    Stripe takes the requests as one (the Idempotency-Key derived from the customer's id). Against the Stripe
    stand-in (which keeps keys as Stripe does): one Stripe customer, every session on it, and it recorded."""
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.stripe_app import StripeApp
    from billow.services.apps import checkout_session, install_with_api_key
    from tests.stripe_standin.server import StandIn

    standin = StandIn().start()
    try:
        apps = [SqlAppStore(m.engine) for m in metas]

        def stripe(key: str) -> StripeApp:
            return StripeApp(key, standin.url, timeout=5)

        app = install_with_api_key("ns", "stripe", {"apiKey": standin.api_key}, apps=apps[0],
                                   billing=SqlBillingStore(metas[0].engine), stripe=stripe,
                                   webhook_url=lambda id_: f"http://127.0.0.1:9/{id_}", now=NOW)["app"]
        failed: list[BaseException] = []
        several = 0
        for round_ in range(5):
            customer: dict[str, Any] = {"id": new_id(), "key": f"co{round_}", "name": "Co", "primaryEmail": "ap@co.test",
                                        "usageAttribution": {"subjectKeys": []},
                                        "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"}
            metas[0].put_customer("ns", customer)
            body = {"customer": {"id": customer["id"]}, "options": {"successURL": "https://co.test/ok"}}
            done, errors = at_once([partial(checkout_session, "ns", body, apps=apps[n % 2], meta=metas[n % 2],
                                            stripe=stripe, now=NOW) for n in range(THREADS)])
            failed += errors
            made = [c["id"] for c in standin.customers.values()
                    if c["metadata"].get("billow_customer_id") == customer["id"]]
            several += len(made) != 1
            recorded = apps[1].customer_apps("ns", customer["id"])[app["id"]]["stripeCustomerId"]
            assert {d["stripeCustomerId"] for d in done} <= {recorded} and recorded in made
        assert not failed and not several, (len(failed), f"{several} of 5 customers got several Stripe customers",
                                            failed[:3])
    finally:
        standin.stop()


def test_containers_creating_one_entitlement_at_once_name_the_winner(metas: list[SqlMetaStore]) -> None:
    """POST /api/v2/customers/{c}/entitlements (and v1's POST /subjects/{s}/entitlements) looks for the customer's
    live entitlement of the feature (409 naming it in `conflictingEntityId`, as OpenMeter's), then inserts. Several
    containers creating one at once all found none: the one-live-entitlement index let one in and the others answered
    409 without `conflictingEntityId`, so a client could not tell which entitlement is in the way. Now every loser's
    409 names the winner, as the sequential call does."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services import entitlements, entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    create_feature("ns", {"key": "seats", "name": "Seats"}, store=ents[0], meta=metas[0], now=NOW)
    failed: list[BaseException] = []
    unnamed = 0
    for round_ in range(10):
        customer: dict[str, Any] = {"id": new_id(), "key": f"en{round_}", "name": "C",
                                    "usageAttribution": {"subjectKeys": [f"en{round_}"]},
                                    "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        body = {"type": "boolean", "featureKey": "seats"}
        if round_ % 2:  # v2 by customer
            calls = [partial(entitlements_v2.create, "ns", customer["key"], body, store=ents[n % 2],
                             meta=metas[n % 2], now=NOW) for n in range(THREADS)]
        else:  # v1 by subject
            calls = [partial(entitlements.create_entitlement, "ns", f"en{round_}", body, store=ents[n % 2],
                             meta=metas[n % 2], now=NOW) for n in range(THREADS)]
        made, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, Conflict)]
        assert len(made) == 1, (len(made), errors[:3])
        unnamed += sum(e.extensions.get("conflictingEntityId") != made[0]["id"] for e in errors
                       if isinstance(e, Conflict))
    assert not failed and not unnamed, (len(failed), f"{unnamed} of 70 losers' 409s did not name the winner",
                                        failed[:3])


def test_containers_changing_one_subscription_s_plan_at_once_make_one_change(metas: list[SqlMetaStore]) -> None:
    """POST /api/v1/subscriptions/{s}/change ends the subscription at the change and writes the next one on the new
    plan. Several containers changing one subscription at once each read it running and each wrote its end and its
    own next subscription: the customer had several subscriptions from the change on, each billed. The end is written
    only as read: one change wins, the others answer Conflict (409: reload and change again) and write no next one."""
    from datetime import timedelta

    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services.subscriptions import change, create

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    later = NOW + timedelta(days=10)
    failed: list[BaseException] = []
    several = 0
    for round_ in range(6):
        customer: dict[str, Any] = {"id": new_id(), "key": f"ch{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"ch{round_}"]},
                                    "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        sub = create("ns", {"customPlan": _flat_plan("old"), "customerId": customer["id"]}, store=catalogs[0],
                     meta=metas[0], ents=ents[0], now=NOW)
        changed, errors = at_once([partial(change, "ns", sub["id"], {"timing": "immediate",
                                                                     "customPlan": _flat_plan(f"new {n}")},
                                           store=catalogs[n % 2], meta=metas[n % 2], ents=ents[n % 2], now=later)
                                   for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        subs = catalogs[1].list_subscriptions("ns", customer["id"])
        several += len(changed) != 1 or len(subs) != 2
        if len(changed) == 1:
            assert {s["id"] for s in subs} == {sub["id"], changed[0]["next"]["id"]}
    assert not failed and not several, (len(failed), f"{several} of 6 subscriptions changed more than once",
                                        failed[:3])


def test_containers_creating_one_entitlement_through_two_subjects_of_a_customer_make_one(
        metas: list[SqlMetaStore]) -> None:
    """A customer with several subjects is one billable party: POST /subjects/{s}/entitlements refuses a second
    entitlement of a feature through any of its subjects (409 naming the first). Creates through two subjects of one
    customer at once each found none; the one-live-entitlement index is per subject, so both went in and the party
    had two entitlements of the feature, each with its own balance. Now one is made and the others answer 409
    naming it."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict
    from billow.services import entitlements
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    create_feature("ns", {"key": "seats", "name": "Seats"}, store=ents[0], meta=metas[0], now=NOW)
    failed: list[BaseException] = []
    several = unnamed = 0
    for round_ in range(10):
        subjects = [f"pa{round_}", f"pb{round_}"]
        metas[0].put_customer("ns", {"id": new_id(), "key": f"party{round_}", "name": "C",
                                     "usageAttribution": {"subjectKeys": subjects},
                                     "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:00:00Z"})
        made, errors = at_once([partial(entitlements.create_entitlement, "ns", subjects[n % 2],
                                        {"type": "boolean", "featureKey": "seats"}, store=ents[n % 2],
                                        meta=metas[n % 2], now=NOW) for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict)]
        live = ents[1].list_entitlements("ns", subject_keys=subjects)
        several += len(live) != 1 or len(made) != 1
        unnamed += sum(e.extensions.get("conflictingEntityId") != live[0]["id"] for e in errors
                       if isinstance(e, Conflict))
    assert not failed and not several and not unnamed, (
        len(failed), f"{several} of 10 customers got several entitlements of the feature, {unnamed} 409s unnamed",
        failed[:3])


def test_containers_editing_one_meter_at_once_keep_every_edit(metas: list[SqlMetaStore]) -> None:
    """PUT /api/v1/meters/{m} changes the fields given (name, description, metadata, groupBy) and keeps the others as
    read, then writes the whole meter back. Two containers editing one meter at once (one its name, one its
    description) both answered 200 and the later write put back the field the other changed; an edit racing a
    DELETE wrote the meter back live although the delete answered 204. Now every edit lands (the loser of a race
    reads again) and a deleted meter stays deleted (an edit after it is a 404)."""
    from billow.errors import NotFound
    from billow.services.meters import build_meter, delete_meter, update_meter

    failed: list[BaseException] = []
    lost = revived = 0
    for round_ in range(10):
        meter = build_meter({"slug": f"m{round_}", "eventType": "e", "aggregation": "COUNT"}, NOW)
        metas[0].put_meter("ns", meter)
        if round_ % 2 == 0:  # edits of two fields
            calls = [partial(update_meter, "ns", meter.slug, {"name": f"n{n}"} if n % 2 else {"description": f"d{n}"},
                             meta=metas[n % 2], now=NOW) for n in range(THREADS)]
        else:  # edits racing deletes
            calls = [partial(update_meter, "ns", meter.slug, {"name": f"n{n}"}, meta=metas[n % 2], now=NOW) if n % 2
                     else partial(delete_meter, "ns", meter.slug, meta=metas[n % 2], now=NOW) for n in range(THREADS)]
        done, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, NotFound)]
        stored = metas[1].get_meter("ns", meter.id)
        if round_ % 2 == 0:
            lost += stored is None or not stored.name.startswith("n") or not (stored.description or "").startswith("d")
        else:
            revived += any(d is None for d in done) and stored is not None
    assert not failed and not lost and not revived, (
        len(failed), f"{lost} of 5 meters lost an edit, {revived} of 5 deleted meters live again", failed[:3])


def test_containers_deleting_and_publishing_one_plan_draft_at_once_never_delete_it_published(
        metas: list[SqlMetaStore]) -> None:
    """DELETE /api/v1/plans/{p} of a draft and POST .../publish at once: the delete read the draft, the publish made
    it active (and ended the version it replaces), and the delete, landing later, wrote the draft it had read back
    deleted: both answered success and the plan had no version in effect. Now the delete writes only the version
    as it read it (else reads again: a published version is 409, archive it first), so one of the two wins."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import Conflict, NotFound
    from billow.services import catalog

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    failed: list[BaseException] = []
    both = 0
    for round_ in range(10):
        v1 = catalog.create("ns", "plan", {**_flat_plan("v1"), "key": f"dp{round_}"}, store=catalogs[0], now=NOW)
        catalog.publish("ns", "plan", v1["id"], store=catalogs[0], features=ents[0], now=NOW)
        draft = catalog.next_version("ns", "plan", v1["id"], store=catalogs[0], now=NOW)
        done, errors = at_once([
            partial(catalog.publish, "ns", "plan", draft["id"], store=catalogs[n % 2], features=ents[n % 2], now=NOW)
            if n % 2 else partial(catalog.delete, "ns", "plan", draft["id"], store=catalogs[n % 2], now=NOW)
            for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, Conflict | NotFound)]
        published, deleted = [d for d in done if d is not None], [d for d in done if d is None]
        stored = catalogs[1].get_versioned("plan", "ns", draft["id"])
        assert stored is not None
        both += bool(published and deleted) or bool(published) == bool(stored["deletedAt"])
    assert not failed and not both, (len(failed), f"{both} of 10 drafts both published and deleted", failed[:3])


def test_containers_updating_and_deleting_one_customer_at_once_keep_it_deleted(metas: list[SqlMetaStore]) -> None:
    """PUT /api/v1/customers/{c} replaces a live customer: it read the customer, then wrote the new one by id. A DELETE
    landing between the two was undone: the update wrote the customer back live (its subjects attributed to it
    again) although the delete answered 204. Now the update writes only a customer still live (else 404), so a
    customer whose delete answered 204 stays deleted."""
    from billow.errors import NotFound
    from billow.services import directory

    failed: list[BaseException] = []
    revived = 0
    for round_ in range(10):
        customer = directory.create_customer("ns", {"key": f"cu{round_}", "name": "C",
                                                    "usageAttribution": {"subjectKeys": [f"cu{round_}"]}},
                                             meta=metas[0], now=NOW)
        done, errors = at_once([
            partial(directory.update_customer, "ns", customer["id"],
                    {"key": f"cu{round_}", "name": f"n{n}", "usageAttribution": {"subjectKeys": [f"cu{round_}"]}},
                    meta=metas[n % 2], now=NOW) if n % 2 else
            partial(directory.delete_customer, "ns", customer["id"], meta=metas[n % 2], now=NOW)
            for n in range(THREADS)])
        failed += [e for e in errors if not isinstance(e, NotFound)]
        deleted = any(d is None for d in done)
        revived += deleted and (metas[1].get_customer("ns", customer["id"]) is not None
                                or bool(metas[1].customers_for_subjects("ns", [f"cu{round_}"])))
    assert not failed and not revived, (len(failed), f"{revived} of 10 deleted customers live again", failed[:3])


def test_containers_editing_one_billing_profile_at_once_keep_every_edit(metas: list[SqlMetaStore]) -> None:
    """PUT /api/v1/billing/profiles/{p} replaces the profile read, then writes it back. Two containers editing one
    profile at once (one its name with `default: false`, one making it the default) both answered 200 and the later
    write put back what the other changed: the namespace's new default was not the default (none was). An edit
    racing its DELETE wrote the profile back live although the delete answered 204. Now every edit lands or is
    refused as the profile stored then says (the loser of a race reads again: `default: false` on the profile another
    edit made the default is OpenMeter's ErrDefaultProfileCannotBeUnset, a 400, never a write putting it back to
    non-default) and a deleted profile stays deleted (an edit after it is a 400, OpenMeter's
    ErrProfileAlreadyDeleted)."""
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.errors import Conflict, ValidationFailed
    from billow.services.billing_profiles import create_profile, delete_profile, update_profile

    stores = [SqlBillingStore(m.engine) for m in metas]
    # A PUT replaces the profile (OpenMeter's BillingProfileReplaceUpdateWithWorkflow: name, supplier, workflow and
    # default required; `default: false` on the default profile is a 400).
    whole = {"supplier": {"name": "S"}, "workflow": {}, "default": False}
    failed: list[BaseException] = []
    lost = revived = 0
    for round_ in range(10):
        namespace = f"bp{round_}"
        create_profile(namespace, {"name": "first", "supplier": {"name": "S"}}, store=stores[0], now=NOW)  # default
        profile = create_profile(namespace, {"name": "p", "supplier": {"name": "S"}}, store=stores[0], now=NOW)
        if round_ % 2 == 0:  # its name, and making it the default
            calls = [partial(update_profile, namespace, profile["id"],
                             {**whole, "name": f"n{n}"} if n % 2 else {**whole, "name": f"n{n}", "default": True},
                             store=stores[n % 2], now=NOW) for n in range(THREADS)]
        else:  # edits racing deletes
            calls = [partial(update_profile, namespace, profile["id"], {**whole, "name": f"n{n}"}, store=stores[n % 2],
                             now=NOW)
                     if n % 2 else partial(delete_profile, namespace, profile["id"], store=stores[n % 2], now=NOW)
                     for n in range(THREADS)]
        done, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, ValidationFailed | Conflict)]
        stored = stores[1].get_profile(namespace, profile["id"])
        assert stored is not None
        if round_ % 2 == 0:
            # every name edit that was answered 200 wrote a non-default profile: it landed before the default one
            renamed = sum(1 for d in done if d.get("default") is False)
            lost += renamed + sum(isinstance(e, ValidationFailed) for e in errors) != THREADS // 2
            lost += not stored["name"].startswith("n") or not stored["default"]
            lost += [p["id"] for p in stores[1].list_profiles(namespace) if p["default"]] != [profile["id"]]
        else:
            revived += any(d is None for d in done) and not stored["deletedAt"]
    assert not failed and not lost and not revived, (
        len(failed), f"{lost} lost edits over 5 profiles, {revived} of 5 deleted profiles live again", failed[:3])


def test_containers_updating_and_deleting_one_notification_channel_or_rule_at_once_keep_it_deleted(
        metas: list[SqlMetaStore]) -> None:
    """PUT /api/v1/notification/channels/{c} (and .../rules/{r}) replaces a live channel (rule): it read it, then
    wrote the new one by id. A DELETE landing between the two was undone: the update wrote it back live (a deleted
    rule's events sent again) although the delete answered 204. Now the update writes only one still live (else
    404), so one whose delete answered 204 stays deleted."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_notifications import SqlNotificationStore
    from billow.errors import NotFound
    from billow.services import notifications as notes

    stores = [SqlNotificationStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    hook = {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/billow"}
    keep = notes.create_channel("ns", hook, store=stores[0], now=NOW)  # the rules' channel
    failed: list[BaseException] = []
    revived = 0
    for round_ in range(10):
        if round_ % 2 == 0:  # a channel
            doc = notes.create_channel("ns", hook, store=stores[0], now=NOW)
            calls = [partial(notes.update_channel, "ns", doc["id"], {**hook, "name": f"n{n}"}, store=stores[n % 2],
                             now=NOW) if n % 2 else
                     partial(notes.delete_channel, "ns", doc["id"], store=stores[n % 2], now=NOW)
                     for n in range(THREADS)]
        else:  # a rule
            rule = {"type": "invoice.created", "name": "r", "channels": [keep["id"]]}
            doc = notes.create_rule("ns", rule, store=stores[0], features=ents[0], now=NOW)
            calls = [partial(notes.update_rule, "ns", doc["id"], {**rule, "name": f"n{n}"}, store=stores[n % 2],
                             features=ents[n % 2], now=NOW) if n % 2 else
                     partial(notes.delete_rule, "ns", doc["id"], store=stores[n % 2], now=NOW)
                     for n in range(THREADS)]
        done, errors = at_once(calls)
        failed += [e for e in errors if not isinstance(e, NotFound)]
        stored = (stores[1].get_channel if round_ % 2 == 0 else stores[1].get_rule)("ns", doc["id"])
        assert stored is not None
        revived += any(d is None for d in done) and not stored.get("deletedAt")
    assert not failed and not revived, (len(failed), f"{revived} of 10 deleted channels or rules live again",
                                        failed[:3])


def test_one_notification_rule_or_channel_deleted_by_containers_at_once_answers_success_once(
        metas: list[SqlMetaStore]) -> None:
    """A deleted rule (channel) is a 404 to the next deletion; 8 deletions at once each found it live and wrote its
    deletion: 7 or 8 answered 204 (each writing its own deletedAt). Now a deletion writes only a live one: one 204,
    the rest 404."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_notifications import SqlNotificationStore
    from billow.errors import NotFound
    from billow.services import notifications as notes

    stores = [SqlNotificationStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    hook = {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/billow"}
    done = []
    for _ in range(5):
        ch = notes.create_channel("ns", hook, store=stores[0], now=NOW)
        rule = notes.create_rule("ns", {"type": "invoice.created", "name": "r", "channels": [ch["id"]]},
                                 store=stores[0], features=ents[0], now=NOW)
        rules_done, rule_errors = at_once([partial(notes.delete_rule, "ns", rule["id"], store=stores[n % 2], now=NOW)
                                           for n in range(THREADS)])
        channels_done, channel_errors = at_once([partial(notes.delete_channel, "ns", ch["id"], store=stores[n % 2],
                                                         now=NOW) for n in range(THREADS)])
        assert all(isinstance(e, NotFound) for e in rule_errors + channel_errors), (rule_errors + channel_errors)[:3]
        done.append((len(rules_done), len(channels_done)))
    assert done == [(1, 1)] * 5, f"(rule, channel) deletions answering success: {done}"

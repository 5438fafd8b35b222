"""Two writes to two resources, each checking the other's, made by two Lambda containers at once on one PostgreSQL
(as on Aurora): a removal that refuses while something uses the resource, and a create (or update) that refuses a
removed one. Each checked the other's object, then wrote its own, so at once both succeeded: a state no order of
the two requests makes. (One resource's read-modify-writes: tests/adapters/test_writes_across_containers.py, whose
two-engines fixture and barrier this file shares; the threads of one `billow serve` on SQLite:
tests/e2e/test_concurrent_writes_embedded.py.)

Each test runs the pair many rounds, the two calls on two engines (two containers), released together at a barrier,
and asserts that of each pair one is refused with a 4xx problem (never both answered success, never a 500)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from billow.adapters.sql import SqlMetaStore
from billow.errors import BillowError
from billow.ids import new_id
from tests.adapters.test_writes_across_containers import at_once, metas  # noqa: F401 (the fixture)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ROUNDS = 20


def _refusals(errors: list[BaseException]) -> list[BaseException]:
    """The errors that are not a 4xx problem (a 500, a driver error): none may be."""
    return [e for e in errors if not (isinstance(e, BillowError) and 400 <= e.status < 500)]


def test_a_channel_deleted_while_a_rule_is_made_or_changed_to_use_it_never_leaves_a_live_rule_on_it(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """DELETE /api/v1/notification/channels/{c} refuses a channel a live rule names (409), and a rule's create or
    update refuses a deleted channel (400, `channels[i]`): each looked at the other's object, then wrote its own, so
    at once both succeeded and a live rule named a deleted channel (its events delivered nowhere). Now the channel's
    deletion and a rule's write naming it take one lock per channel (`adapters/sql.channel_use_lock`), and each
    checks the other under it: one of the two is refused."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_notifications import SqlNotificationStore
    from billow.services import notifications as notes

    stores = [SqlNotificationStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    hook = {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/billow"}
    keep = notes.create_channel("ns", hook, store=stores[0], now=NOW)
    bad: list[BaseException] = []
    dangling = 0
    for round_ in range(ROUNDS):
        doc = notes.create_channel("ns", hook, store=stores[0], now=NOW)
        rule = {"type": "invoice.created", "name": "r", "channels": [keep["id"], doc["id"]]}
        if round_ % 2:  # an update of a rule on another channel, to name this one too
            old = notes.create_rule("ns", {**rule, "channels": [keep["id"]]}, store=stores[0], features=ents[0],
                                    now=NOW)
            write: Callable[[], Any] = partial(notes.update_rule, "ns", old["id"], rule, store=stores[0],
                                               features=ents[0], now=NOW)
        else:
            write = partial(notes.create_rule, "ns", rule, store=stores[0], features=ents[0], now=NOW)
        _, errors = at_once([write, partial(notes.delete_channel, "ns", doc["id"], store=stores[1], now=NOW)])
        bad += _refusals(errors)
        channel = stores[1].get_channel("ns", doc["id"])
        assert channel is not None
        live_on_it = [r["id"] for r in stores[1].list_rules("ns") if not r.get("deletedAt")
                      and any(c["id"] == doc["id"] for c in r["channels"])]
        dangling += bool(channel.get("deletedAt")) and bool(live_on_it)
    assert not bad and dangling == 0, (f"{dangling} of {ROUNDS} deleted channels named by a live rule", bad[:3])


def test_a_feature_archived_while_an_entitlement_is_made_on_it_never_gets_one_after_the_archive(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """DELETE /api/v1/features/{f} archives the feature, from when on a new entitlement of it is refused (400,
    `featureKey`). An entitlement create looked at the feature, found it live, then wrote: an archive landing in
    between answered 204, and the entitlement appeared on the archived feature after that answer (the container that
    archived it, reading the feature's entitlements right after, did not see it; a moment later it was there). An
    entitlement made before the archive stays (the archive ends nothing); one written after it must not be. Now the
    archive and an entitlement's write take one lock per feature (`adapters/sql.feature_use_lock`) and the write
    checks the feature is still live under it: either the entitlement is there when the archive answers, or it is
    refused."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2
    from billow.services.features import archive_feature, create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):  # 1 to 4 of 20 rounds went wrong before: twice as many rounds
        key = f"seats_{round_}"
        feature = create_feature("ns", {"key": key, "name": key}, store=ents[0], meta=metas[0], now=NOW)
        subject = f"s{round_}"
        metas[0].put_customer("ns", {"id": f"c{round_:024d}", "key": subject, "name": subject,
                                     "usageAttribution": {"subjectKeys": [subject]},
                                     "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"})
        body = {"type": "boolean", "featureKey": key}
        make: Callable[[], Any] = (
            partial(entitlements_v2.create, "ns", subject, body, store=ents[0], meta=metas[0], now=NOW) if round_ % 2
            else partial(ents_service.create_entitlement, "ns", subject, body, store=ents[0], meta=metas[0], now=NOW))
        seen_at_archive: list[set[str]] = []

        def archive(feature_id: str = feature["id"], key: str = key, seen_at_archive: list[set[str]] = seen_at_archive
                    ) -> None:
            archive_feature("ns", feature_id, store=ents[1], now=NOW)
            seen_at_archive.append({e["id"] for e in ents[1].list_entitlements("ns", feature_keys=[key])})

        _, errors = at_once([make, archive])
        bad += _refusals(errors)
        after = {e["id"] for e in ents[1].list_entitlements("ns", feature_keys=[key])}
        late += bool(seen_at_archive) and bool(after - seen_at_archive[0])
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} features got an entitlement after their archive answered",
                                   bad[:3])


def test_an_app_uninstalled_while_a_billing_profile_is_made_on_it_never_leaves_the_profile_on_a_removed_app(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """DELETE /api/v1/apps/{a} refuses an app a billing profile uses (409), and a new profile refuses an app that is
    not installed (400, `apps.invoicing`): each looked at the other's object, then wrote its own, so at once both
    succeeded and a live profile invoiced through an uninstalled app. Now the uninstall and a profile's write naming
    the app take one lock per app (`adapters/sql.app_use_lock`) and each checks the other under it."""
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.domain import apps as rules
    from billow.services import apps as apps_service
    from billow.services.billing_profiles import create_profile

    apps = [SqlAppStore(m.engine) for m in metas]
    billing = [SqlBillingStore(m.engine) for m in metas]

    def no_stripe(key: str) -> Any:
        raise AssertionError("no Stripe app here")

    bad: list[BaseException] = []
    dangling = 0
    for round_ in range(ROUNDS):
        app = rules.new_app(new_id(), "custom_invoicing", f"CI {round_}", "2026-06-01T00:00:00Z",
                            enableDraftSyncHook=False, enableIssuingSyncHook=False)
        apps[0].add_app("ns", app)
        body = {"name": f"p{round_}", "supplier": {"name": "Acme"},
                "apps": {"tax": "sandbox", "invoicing": app["id"], "payment": "sandbox"}}
        _, errors = at_once([
            partial(create_profile, "ns", body, store=billing[0], apps=apps[0], now=NOW),
            partial(apps_service.uninstall_app, "ns", app["id"], apps=apps[1], billing=billing[1], stripe=no_stripe,
                    now=NOW)])
        bad += _refusals(errors)
        stored = apps[1].get_app("ns", app["id"])
        assert stored is not None
        users = [p["id"] for p in billing[1].list_profiles("ns")
                 if any(isinstance(a, dict) and a.get("id") == app["id"] for a in (p.get("apps") or {}).values())]
        dangling += bool(stored.get("deletedAt")) and bool(users)
    assert not bad and dangling == 0, (f"{dangling} of {ROUNDS} uninstalled apps used by a live profile", bad[:3])


def test_a_stripe_app_whose_uninstall_is_refused_under_the_lock_keeps_its_webhook_at_stripe(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """An uninstall of a Stripe app removed its webhook endpoint from Stripe before its check under the app's lock
    (above): when a profile made at once naming the app won that lock, the uninstall answered 409 and the app stayed
    installed with no webhook at Stripe, so its payment events no longer came. Now the endpoint is removed only once
    the uninstall is written: a refused uninstall leaves it, an accepted one removes it."""
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.stripe_app import StripeUnavailable
    from billow.domain import apps as rules
    from billow.services import apps as apps_service
    from billow.services.billing_profiles import create_profile

    apps = [SqlAppStore(m.engine) for m in metas]
    billing = [SqlBillingStore(m.engine) for m in metas]
    removed: list[str] = []

    class Account:
        def delete_webhook_endpoint(self, endpoint_id: str) -> None:
            removed.append(endpoint_id)

    unhooked = refused = 0
    for round_ in range(ROUNDS):
        app = rules.new_app(new_id(), "stripe", f"Stripe {round_}", "2026-06-01T00:00:00Z",
                            stripeWebhookId=f"we_{round_}", livemode=False)
        apps[0].add_app("ns", app, {"apiKey": "sk_test_x", "webhookSecret": "whsec_x"})
        body = {"name": f"s{round_}", "supplier": {"name": "Acme"},
                "apps": {"tax": app["id"], "invoicing": app["id"], "payment": app["id"]}}
        _, errors = at_once([
            partial(create_profile, "ns", body, store=billing[0], apps=apps[0], now=NOW),
            partial(apps_service.uninstall_app, "ns", app["id"], apps=apps[1], billing=billing[1],
                    stripe=lambda key: Account(), now=NOW)])
        assert not _refusals(errors), errors[:3]
        stored = apps[1].get_app("ns", app["id"])
        assert stored is not None
        installed = not stored.get("deletedAt")
        refused += installed
        unhooked += installed and f"we_{round_}" in removed
        assert installed or f"we_{round_}" in removed  # an uninstall that was written removed the endpoint
    assert unhooked == 0, f"{unhooked} of {refused} Stripe apps left installed without their webhook endpoint"

    class Down:
        def delete_webhook_endpoint(self, endpoint_id: str) -> None:
            raise StripeUnavailable("Stripe unavailable while deleting webhook endpoint: timeout; retrying is safe")

    # Stripe failing once the uninstall is written: uninstalled all the same (its webhook path answers 404), the
    # endpoint left at Stripe, no error to the caller (a retry would find the app gone).
    app = rules.new_app(new_id(), "stripe", "Stripe down", "2026-06-01T00:00:00Z", stripeWebhookId="we_down")
    apps[0].add_app("ns", app, {"apiKey": "sk_test_x", "webhookSecret": "whsec_x"})
    apps_service.uninstall_app("ns", app["id"], apps=apps[1], billing=billing[1], stripe=lambda key: Down(), now=NOW)
    gone = apps[1].get_app("ns", app["id"])
    assert gone is not None and gone.get("deletedAt") and apps[1].app_secrets("ns", app["id"]) == {}


_BASE_PLAN = {"name": "Base", "currency": "USD", "billingCadence": "P1M", "phases": [
    {"key": "default", "name": "Default", "rateCards": [
        {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}]}]}


def _canceled_at(end: str, key: str, meta: SqlMetaStore, catalog: Any, ents: Any) -> tuple[dict[str, Any], ...]:
    """A new customer (`key`) on _BASE_PLAN from NOW, its subscription canceled at `end`: (customer, the subscription
    as made, as canceled)."""
    from billow.services import subscriptions as subs_service

    customer: dict[str, Any] = {"id": new_id(), "key": key, "name": "C", "currency": "USD",
                                "usageAttribution": {"subjectKeys": [key]},
                                "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
    meta.put_customer("ns", customer)
    first = subs_service.create("ns", {"customPlan": _BASE_PLAN, "customerId": customer["id"]}, store=catalog,
                                meta=meta, ents=ents, now=NOW)
    canceled = subs_service.cancel("ns", first["id"], {"timing": end}, store=catalog, meta=meta, ents=ents, now=NOW)
    return customer, first, canceled


def test_a_cancelation_unscheduled_while_the_next_subscription_is_made_never_leaves_two_running(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subscriptions/{s}/unschedule-cancelation refuses when another subscription starts where the
    canceled one ends (409), and a new subscription refuses a time another one of the customer runs in (409): each
    looked at the other's, then wrote its own, so at once both succeeded: the continued subscription ran on without an
    end beside the new one, the customer billed twice for the same time. Now the unschedule's write takes the
    customer's subscription lock a new subscription takes (`adapters/sql.customer_lock`) and checks under it."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import subscriptions as subs_service

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    plan = _BASE_PLAN
    end = "2026-07-01T00:00:00Z"
    bad: list[BaseException] = []
    doubled = 0
    for round_ in range(ROUNDS):
        customer, first, _ = _canceled_at(end, f"u{round_}", metas[0], catalogs[0], ents[0])
        _, errors = at_once([
            partial(subs_service.create, "ns", {"customPlan": plan, "customerId": customer["id"], "timing": end},
                    store=catalogs[0], meta=metas[0], ents=ents[0], now=NOW),
            partial(subs_service.unschedule_cancelation, "ns", first["id"], store=catalogs[1], meta=metas[1],
                    ents=ents[1], now=NOW)])
        bad += _refusals(errors)
        stored = catalogs[1].list_subscriptions("ns", customer["id"])
        doubled += len(stored) == 2 and not next(d for d in stored if d["id"] == first["id"]).get("activeTo")
    assert not bad and doubled == 0, (f"{doubled} of {ROUNDS} customers with two subscriptions running at once",
                                      bad[:3])


def test_a_plan_change_meeting_the_next_subscription_never_leaves_two_running(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subscriptions/{s}/change ends the subscription at `timing` and starts the new plan there. It
    wrote the next subscription without looking at the customer's others, so a subscription already scheduled there
    (made before the change, or at once with it by another container) and the change's both ran from then on, both
    billed; and the end and the next one were two writes. Now the change writes both in one transaction under the
    customer's lock a new subscription takes (`add_subscription(..., ending=)`), checking the others there: of a
    change and a create at once, one is refused (409), and a refused change leaves the subscription as it was."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import subscriptions as subs_service

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    plan = _BASE_PLAN
    end = "2026-07-01T00:00:00Z"
    bad: list[BaseException] = []
    doubled = torn = 0
    for round_ in range(ROUNDS):
        customer, first, before = _canceled_at(end, f"x{round_}", metas[0], catalogs[0], ents[0])
        new = partial(subs_service.create, "ns", {"customPlan": plan, "customerId": customer["id"], "timing": end},
                      store=catalogs[0], meta=metas[0], ents=ents[0], now=NOW)
        changed = partial(subs_service.change, "ns", first["id"], {"timing": end, "customPlan": plan},
                          store=catalogs[1], meta=metas[1], ents=ents[1], now=NOW)
        if round_ % 4 == 3:  # one after the other: the change was not refused either
            errors = []
            for call in (new, changed):
                try:
                    call()
                except BillowError as e:
                    errors.append(e)
        else:
            _, errors = at_once([new, changed])
        bad += _refusals(errors)
        stored = catalogs[1].list_subscriptions("ns", customer["id"])
        doubled += sum(1 for d in stored if d["activeFrom"] == end) > 1
        if len(stored) == 2:  # the change refused: the subscription as it was
            now_first = next(d for d in stored if d["id"] == first["id"])
            torn += now_first["activeTo"] != before["activeTo"] or now_first["updatedAt"] != before["updatedAt"]
    assert not bad and doubled == 0 and torn == 0, (
        f"{doubled} of {ROUNDS} customers with two subscriptions from {end}, {torn} refused changes half written",
        bad[:3])


def test_a_feature_archived_while_a_plan_on_it_is_published_never_sees_the_publish_after_it(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """Publishing a plan (or add-on) refuses a rate card on an archived feature (400, `...featureKey`). The publish
    looked at the features, found them live, then wrote: an archive answering 204 in between saw the plan still a
    draft, and the plan went live on the archived feature after that answer. A plan published before the archive
    stays (the archive ends nothing); one published after it must not be. Now the publish takes the lock of each of
    its features the archive takes (`adapters/sql.feature_use_lock`) and checks them under it."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.domain.catalog import status
    from billow.services import catalog
    from billow.services.features import archive_feature, create_feature

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"pub_{round_}"
        feature = create_feature("ns", {"key": key, "name": key}, store=ents[0], meta=metas[0], now=NOW)
        kind = "addon" if round_ % 2 else "plan"
        card = {"type": "flat_fee", "key": key, "featureKey": key, "name": "Fee", "billingCadence": "P1M",
                "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
        body = ({"key": key, "name": key, "currency": "USD", "instanceType": "single", "rateCards": [card]}
                if kind == "addon" else
                {"key": key, "name": key, "currency": "USD", "billingCadence": "P1M",
                 "phases": [{"key": "default", "name": "Default", "rateCards": [card]}]})
        draft = catalog.create("ns", kind, body, store=catalogs[0], now=NOW)
        seen: list[str] = []

        def archive(feature_id: str = feature["id"], draft_id: str = draft["id"], kind: str = kind,
                    seen: list[str] = seen) -> None:
            archive_feature("ns", feature_id, store=ents[1], now=NOW)
            doc = catalogs[1].get_versioned(kind, "ns", draft_id)
            assert doc is not None
            seen.append(status(doc, NOW))

        _, errors = at_once([partial(catalog.publish, "ns", kind, draft["id"], store=catalogs[0], features=ents[0],
                                     now=NOW), archive])
        bad += _refusals(errors)
        after = catalogs[1].get_versioned(kind, "ns", draft["id"])
        assert after is not None
        late += seen == ["draft"] and status(after, NOW) != "draft"
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} plans and add-ons published after their feature's archive "
                                   "answered", bad[:3])


def test_an_entitlement_deleted_while_a_grant_is_made_on_it_never_gets_one_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A grant needs a live entitlement (404 on a deleted one). A grant create looked at the entitlement, found it
    live, then wrote: a deletion answering 204 in between did not see the grant (the deleting container, listing the
    entitlement's grants right after, found none), and a moment later the ended entitlement had a new grant. Now a
    grant's write and the entitlement's deletion take one lock per entitlement (`adapters/sql.entitlement_lock`)
    and the grant checks the entitlement under it: there when the deletion answers, or refused (404)."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    metas[0].put_meter("ns", _meter("grant_tok"))
    create_feature("ns", {"key": "grant_feat", "name": "g", "meterSlug": "grant_tok"}, store=ents[0], meta=metas[0],
                   now=NOW)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        subject = f"g{round_}"
        metas[0].upsert_subject("ns", {"key": subject}, NOW)
        ent = ents_service.create_entitlement("ns", subject, {"type": "metered", "featureKey": "grant_feat",
                                                              "usagePeriod": {"interval": "MONTH"}},
                                              store=ents[0], meta=metas[0], now=NOW)
        seen: list[set[str]] = []

        def delete(ent_id: str = ent["id"], subject: str = subject, seen: list[set[str]] = seen) -> None:
            ents_service.delete_entitlement("ns", subject, ent_id, store=ents[1], meta=metas[1], now=NOW)
            seen.append({g["id"] for g in ents[1].list_grants("ns", [ent_id])})

        grant = partial(ents_service.create_grant, "ns", subject, ent["id"],
                        {"amount": 10, "effectiveAt": "2026-06-01T00:00:00Z", "expiration": {"duration": "MONTH",
                                                                                             "count": 1}},
                        store=ents[0], meta=metas[0], now=NOW)
        _, errors = at_once([grant, delete])
        bad += _refusals(errors)
        after = {g["id"] for g in ents[1].list_grants("ns", [ent["id"]])}
        late += bool(seen) and bool(after - seen[0])
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements got a grant after their deletion answered",
                                   bad[:3])


def test_an_entitlement_deleted_as_it_is_made_never_gets_its_initial_grants_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A metered entitlement made with grants (v1 `issueAfterReset`, v2 `grants[]`) wrote the entitlement, then its
    grants in a transaction of their own, without the lock a deletion takes: a deletion landing between the two (the
    deleting container found the entitlement as soon as it was there) answered 204 and listed no grant, and a moment
    later the ended entitlement had one. Now the entitlement and the grants it issues are one transaction: when the
    deletion finds the entitlement, its grants are there too."""
    import time

    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    metas[0].put_meter("ns", _meter("issue_tok"))
    create_feature("ns", {"key": "issue_feat", "name": "i", "meterSlug": "issue_tok"}, store=ents[0], meta=metas[0],
                   now=NOW)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"i{round_}"
        metas[0].put_customer("ns", {"id": new_id(), "key": key, "name": "C", "usageAttribution": {"subjectKeys": [key]},
                                     "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"})
        body: dict[str, Any] = {"type": "metered", "featureKey": "issue_feat", "usagePeriod": {"interval": "MONTH"}}
        if round_ % 2:
            make: Callable[[], Any] = partial(ents_service.create_entitlement, "ns", key, {**body, "issueAfterReset": 5},
                                              store=ents[0], meta=metas[0], now=NOW)
        else:
            make = partial(entitlements_v2.create, "ns", key, {**body, "grants": [
                {"amount": 10, "effectiveAt": "2026-06-01T00:00:00Z"}, {"amount": 3, "effectiveAt": "2026-06-01T00:00:00Z"}]},
                store=ents[0], meta=metas[0], now=NOW)
        seen: list[tuple[str, set[str]]] = []

        def delete(key: str = key, seen: list[tuple[str, set[str]]] = seen) -> None:
            until = time.monotonic() + 5
            while (ent := ents[1].find_entitlement("ns", [key], "issue_feat")) is None and time.monotonic() < until:
                pass  # deleted as soon as it is there
            assert ent is not None
            ents_service.delete_entitlement("ns", key, ent["id"], store=ents[1], meta=metas[1], now=NOW)
            seen.append((ent["id"], {g["id"] for g in ents[1].list_grants("ns", [ent["id"]])}))

        _, errors = at_once([make, delete])
        bad += _refusals(errors)
        if seen:
            ent_id, at_deletion = seen[0]
            late += bool({g["id"] for g in ents[1].list_grants("ns", [ent_id])} - at_deletion)
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements got their initial grants after their "
                                   "deletion answered", bad[:3])


def test_an_entitlement_deleted_while_it_is_reset_never_gets_the_reset_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A reset (POST /api/v1/subjects/{s}/entitlements/{e}/reset, v2 the same through the customer) needs a live
    entitlement (404 on a deleted one). The reset looked at the entitlement, found it live, then wrote: a deletion
    answering 204 in between listed no reset, and a moment later the ended entitlement had one. Now a reset's write
    and the deletion take the entitlement's lock (`adapters/sql.entitlement_lock`) and the reset checks the
    entitlement under it: there when the deletion answers, or refused (404)."""
    from datetime import timedelta

    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    metas[0].put_meter("ns", _meter("reset_tok"))
    create_feature("ns", {"key": "reset_feat", "name": "r", "meterSlug": "reset_tok"}, store=ents[0], meta=metas[0],
                   now=NOW)
    later = NOW + timedelta(hours=1)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        subject = f"r{round_}"
        metas[0].upsert_subject("ns", {"key": subject}, NOW)
        ent = ents_service.create_entitlement("ns", subject, {"type": "metered", "featureKey": "reset_feat",
                                                              "usagePeriod": {"interval": "MONTH"}},
                                              store=ents[0], meta=metas[0], now=NOW)
        seen: list[int] = []

        def delete(ent_id: str = ent["id"], subject: str = subject, seen: list[int] = seen) -> None:
            ents_service.delete_entitlement("ns", subject, ent_id, store=ents[1], meta=metas[1], now=later)
            seen.append(len(ents[1].list_resets("ns", ent_id)))

        reset = partial(ents_service.reset, "ns", subject, ent["id"], {}, store=ents[0], meta=metas[0], now=later)
        _, errors = at_once([reset, delete])
        bad += _refusals(errors)
        late += bool(seen) and len(ents[1].list_resets("ns", ent["id"])) > seen[0]
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements got a reset after their deletion answered",
                                   bad[:3])


def _meter(slug: str) -> Any:
    from billow.domain.meters import Meter

    return Meter(id=new_id(), slug=slug, aggregation="SUM", event_type=slug, name=slug, description=None,
                 value_property="$.v", group_by={}, event_from=None, created_at=NOW, updated_at=NOW)


def _new_customer(meta: SqlMetaStore, key: str) -> dict[str, Any]:
    """A customer (`key`) of the one subject `key`, stored through `meta`."""
    customer: dict[str, Any] = {"id": new_id(), "key": key, "name": "C", "usageAttribution": {"subjectKeys": [key]},
                                "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
    meta.put_customer("ns", customer)
    return customer


def _entitlement_ids(ents: Any, key: str) -> set[str]:
    return {e["id"] for e in ents.list_entitlements("ns", subject_keys=[key])}


def _grant_ids(ents: Any, entitlement_id: str) -> set[str]:
    return {g["id"] for g in ents.list_grants("ns", [entitlement_id])}


def _reset_count(ents: Any, entitlement_id: str) -> int:
    return len(ents.list_resets("ns", entitlement_id))


def _lands_after_deletion(write: Callable[[], Any], customer: dict[str, Any], meta: SqlMetaStore, catalog: Any,
                          children: Callable[[], Any], now: datetime = NOW) -> tuple[list[BaseException], bool]:
    """`write` at once with the customer's deletion by the other container (`meta`, `catalog`): the refusals, and
    whether `children()` (read by the deleting side right after its deletion answered) changed afterwards, that is
    whether the write landed after the deletion answered."""
    from billow.services import directory
    from billow.services.subscriptions import check_customer_deletable

    deletable = partial(check_customer_deletable, "ns", customer["id"], store=catalog, now=now)
    return lands_after(write, partial(directory.delete_customer, "ns", customer["id"], meta=meta, now=now,
                                      check=deletable), children)


def lands_after(write: Callable[[], Any], other: Callable[[], Any],
                children: Callable[[], Any]) -> tuple[list[BaseException], bool]:
    """`write` at once with `other` (by the other container): the refusals, and whether `children()` (read by the
    other side right after `other` answered) changed afterwards, that is whether `write` landed after that answer."""
    seen: list[Any] = []

    def side() -> None:
        other()
        seen.append(children())

    _, errors = at_once([write, side])
    return _refusals(errors), bool(seen) and children() != seen[0]


def test_a_customer_deleted_while_an_entitlement_is_made_for_it_never_gets_one_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v2/customers/{c}/entitlements needs a live customer (404). The create looked at the customer, found
    it, then wrote: a deletion answering 204 in between did not see the entitlement (the deleting container, listing
    the customer's subject's entitlements right after, found none), and a moment later the deleted customer had a
    new live entitlement. Now the create also takes the customer's lock its deletion takes (`customer_lock`) and
    checks the customer under it: there when the deletion answers, or refused (404)."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    create_feature("ns", {"key": "cust_feat", "name": "c"}, store=ents[0], meta=metas[0], now=NOW)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"d{round_}"
        customer = _new_customer(metas[0], key)
        refused, landed = _lands_after_deletion(
            partial(entitlements_v2.create, "ns", key, {"type": "boolean", "featureKey": "cust_feat"}, store=ents[0],
                    meta=metas[0], now=NOW),
            customer, metas[1], catalogs[1], partial(_entitlement_ids, ents[1], key))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} deleted customers got an entitlement after their deletion "
                                   "answered", bad[:3])


def test_a_customer_deleted_while_an_entitlement_is_made_for_its_subject_never_gets_one_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subjects/{s}/entitlements (and a subscription's sync, which makes them the same way) needs a known
    subject: one upserted through /subjects, or a live customer's (404 once that customer is deleted). The create
    looked up the subject through its customer, then wrote: a deletion of the customer answering 204 in between did
    not see the entitlement, and a moment later the subject known only through the deleted customer had a new live
    entitlement. Now a create for a customer's subject takes that customer's lock its deletion takes
    (`customer_lock`) and looks the subject up again under it: there when the deletion answers, or refused (404)."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    create_feature("ns", {"key": "subj_feat", "name": "s"}, store=ents[0], meta=metas[0], now=NOW)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"s{round_}"
        customer = _new_customer(metas[0], key)
        refused, landed = _lands_after_deletion(
            partial(ents_service.create_entitlement, "ns", key, {"type": "boolean", "featureKey": "subj_feat"},
                    store=ents[0], meta=metas[0], now=NOW),
            customer, metas[1], catalogs[1], partial(_entitlement_ids, ents[1], key))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} subjects of deleted customers got an entitlement after "
                                   "the deletion answered", bad[:3])


def test_a_customer_deleted_while_its_entitlement_is_overridden_never_gets_the_new_one_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """An override (PUT /api/v1/subjects/{s}/entitlements/{e}/override, PUT /api/v2/customers/{c}/entitlements/{e}/
    override) needs the customer (or a subject known through it): 404 once it is deleted. The override looked it
    up, then wrote: a deletion answering 204 in between saw the old entitlement live, and a moment later a new one
    had taken its place. Now an override for a customer takes the customer's lock its deletion takes and looks the
    customer (the subject) up again under it: the new one is there when the deletion answers, or refused (404)."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    create_feature("ns", {"key": "over_feat", "name": "o"}, store=ents[0], meta=metas[0], now=NOW)
    body = {"type": "boolean", "featureKey": "over_feat"}
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"o{round_}"
        customer = _new_customer(metas[0], key)
        ent = ents_service.create_entitlement("ns", key, body, store=ents[0], meta=metas[0], now=NOW)
        override: Callable[[], Any] = (
            partial(entitlements_v2.override, "ns", key, ent["id"], body, store=ents[0], meta=metas[0], now=NOW)
            if round_ % 2 else
            partial(ents_service.override_entitlement, "ns", key, ent["id"], body, store=ents[0], meta=metas[0],
                    now=NOW))
        refused, landed = _lands_after_deletion(override, customer, metas[1], catalogs[1],
                                                partial(_entitlement_ids, ents[1], key))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} deleted customers got an overriding entitlement after "
                                   "the deletion answered", bad[:3])


def test_a_customer_deleted_while_its_entitlement_is_granted_never_gets_the_grant_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A grant through the customer (POST /api/v2/customers/{c}/entitlements/{e}/grants) or a subject known only
    through it (POST /api/v1/subjects/{s}/entitlements/{e}/grants) is 404 once the customer is deleted. The grant
    looked the customer up, then wrote: a deletion answering 204 in between saw no grant, and a moment later the
    entitlement had one. Now a grant for a customer takes the customer's lock its deletion takes and looks the
    customer (the subject) up again under it: there when the deletion answers, or refused (404)."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    metas[0].put_meter("ns", _meter("cgrant_tok"))
    create_feature("ns", {"key": "cgrant_feat", "name": "g", "meterSlug": "cgrant_tok"}, store=ents[0],
                   meta=metas[0], now=NOW)
    grant_body = {"amount": 10, "effectiveAt": "2026-06-01T00:00:00Z", "expiration": {"duration": "MONTH", "count": 1}}
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"cg{round_}"
        customer = _new_customer(metas[0], key)
        ent = ents_service.create_entitlement("ns", key, {"type": "metered", "featureKey": "cgrant_feat",
                                                          "usagePeriod": {"interval": "MONTH"}},
                                              store=ents[0], meta=metas[0], now=NOW)
        grant: Callable[[], Any] = (
            partial(entitlements_v2.create_grant, "ns", key, ent["id"], grant_body, store=ents[0], meta=metas[0],
                    now=NOW) if round_ % 2 else
            partial(ents_service.create_grant, "ns", key, ent["id"], grant_body, store=ents[0], meta=metas[0], now=NOW))
        refused, landed = _lands_after_deletion(grant, customer, metas[1], catalogs[1],
                                                partial(_grant_ids, ents[1], ent["id"]))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements of deleted customers got a grant after the "
                                   "deletion answered", bad[:3])


def test_a_customer_deleted_while_its_entitlement_is_reset_never_gets_the_reset_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A reset through the customer (v2) or a subject known only through it (v1) is 404 once the customer is
    deleted; as a grant's (above), the reset now takes the customer's lock its deletion takes and looks the subject
    up again under it: there when the deletion answers, or refused (404)."""
    from datetime import timedelta

    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2
    from billow.services.features import create_feature

    ents = [SqlEntitlementStore(m.engine) for m in metas]
    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    metas[0].put_meter("ns", _meter("creset_tok"))
    create_feature("ns", {"key": "creset_feat", "name": "r", "meterSlug": "creset_tok"}, store=ents[0],
                   meta=metas[0], now=NOW)
    later = NOW + timedelta(hours=1)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"cr{round_}"
        customer = _new_customer(metas[0], key)
        ent = ents_service.create_entitlement("ns", key, {"type": "metered", "featureKey": "creset_feat",
                                                          "usagePeriod": {"interval": "MONTH"}},
                                              store=ents[0], meta=metas[0], now=NOW)
        reset: Callable[[], Any] = (
            partial(entitlements_v2.reset, "ns", key, ent["id"], {}, store=ents[0], meta=metas[0], now=later)
            if round_ % 2 else
            partial(ents_service.reset, "ns", key, ent["id"], {}, store=ents[0], meta=metas[0], now=later))
        refused, landed = _lands_after_deletion(reset, customer, metas[1], catalogs[1],
                                                partial(_reset_count, ents[1], ent["id"]), later)
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements of deleted customers got a reset after the "
                                   "deletion answered", bad[:3])


def test_an_add_on_archived_while_it_is_added_to_a_subscription_never_gets_added_after_the_archive(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subscriptions/{s}/addons needs an active add-on (400 `addon.id` on an archived one). The add looked
    at the add-on, found it active, then wrote: an archive answering in between did not see it on the subscription
    (the archiving container, reading the subscription right after, found no add-on), and a moment later it was
    there. Now the add checks the add-on under the add-on's lock its archive takes (`adapters/sql.addon_use_lock`):
    on the subscription when the archive answers, or refused."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import catalog
    from billow.services import subscriptions as subs_service

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    fee = {"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M",
           "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}
    plan = {"name": "Base", "currency": "USD", "billingCadence": "P1M",
            "phases": [{"key": "default", "name": "D", "rateCards": [fee]}]}
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        customer: dict[str, Any] = {"id": new_id(), "key": f"a{round_}", "name": "C", "currency": "USD",
                                    "usageAttribution": {"subjectKeys": [f"a{round_}"]},
                                    "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-01T00:00:00Z"}
        metas[0].put_customer("ns", customer)
        sub = subs_service.create("ns", {"customPlan": plan, "customerId": customer["id"]}, store=catalogs[0],
                                  meta=metas[0], ents=ents[0], now=NOW)
        addon = catalog.create("ns", "addon", {"key": f"ad{round_}", "name": "A", "currency": "USD",
                                               "instanceType": "single", "rateCards": [{**fee, "key": f"ad{round_}"}]},
                               store=catalogs[0], now=NOW)
        catalog.publish("ns", "addon", addon["id"], store=catalogs[0], features=ents[0], now=NOW)
        seen: list[int] = []

        def archive(addon_id: str = addon["id"], sub_id: str = sub["id"], seen: list[int] = seen) -> None:
            catalog.archive("ns", "addon", addon_id, store=catalogs[1], now=NOW)
            stored = catalogs[1].get_subscription("ns", sub_id)
            assert stored is not None
            seen.append(len(stored["addons"]))

        _, errors = at_once([partial(subs_service.add_addon, "ns", sub["id"],
                                     {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"},
                                     store=catalogs[0], meta=metas[0], ents=ents[0], now=NOW), archive])
        bad += _refusals(errors)
        after = catalogs[1].get_subscription("ns", sub["id"])
        assert after is not None
        late += seen == [0] and len(after["addons"]) == 1
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} add-ons added to a subscription after their archive "
                                   "answered", bad[:3])


def test_a_feature_archived_while_a_rule_is_made_on_it_never_gets_one_after_the_archive(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A balance-threshold rule's `features` must be live features (400 `features[i]`). The rule's create looked at
    the feature, found it live, then wrote: an archive answering 204 in between did not see the rule (the archiving
    container, listing the rules right after, found none on it), and a moment later a rule on the archived feature
    was there. Now the rule's write takes the feature's lock its archive takes and checks it under it."""
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_notifications import SqlNotificationStore
    from billow.services import notifications as notes
    from billow.services.features import archive_feature, create_feature

    stores = [SqlNotificationStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    hook = notes.create_channel("ns", {"type": "WEBHOOK", "name": "hook", "url": "https://hooks.example.test/b"},
                                store=stores[0], now=NOW)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"rule_feat_{round_}"
        feature = create_feature("ns", {"key": key, "name": key}, store=ents[0], meta=metas[0], now=NOW)
        rule = {"type": "entitlements.balance.threshold", "name": "r", "channels": [hook["id"]], "features": [key],
                "thresholds": [{"value": 10, "type": "NUMBER"}]}
        seen: list[int] = []

        def on_it(key: str = key) -> int:
            return sum(1 for r in stores[1].list_rules("ns") if any(f["key"] == key for f in r.get("features", [])))

        def archive(feature_id: str = feature["id"], seen: list[int] = seen, on_it: Callable[[], int] = on_it) -> None:
            archive_feature("ns", feature_id, store=ents[1], now=NOW)
            seen.append(on_it())

        _, errors = at_once([partial(notes.create_rule, "ns", rule, store=stores[0], features=ents[0], now=NOW),
                             archive])
        bad += _refusals(errors)
        late += seen == [0] and on_it() == 1
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} features got a rule after their archive answered", bad[:3])


def test_a_plan_version_ended_while_a_subscription_is_made_or_changed_onto_it_never_gets_one_after(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subscriptions and .../{s}/change need an active plan version (400 `plan` on one archived,
    replaced or deleted). Both looked at the plan's versions, found the version active, then wrote the subscription
    under the customer's lock alone: an archive of the version (or a publish of the next one and a deletion of this
    one) by another container landing in between answered 200/204, and the subscription appeared after that on the
    archived or deleted version, which no order of the requests gives. Here the other container's write lands right
    before this one's (a hook on the store's add_subscription), in every case. Now the subscription's write takes the
    plan key's lock every version change takes (`adapters/sql.version_lock`) and checks the version under it: it is
    refused as it would be after, and nothing is written."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import ValidationFailed
    from billow.services import catalog
    from billow.services import subscriptions as subs_service

    meanwhile: list[Callable[[], Any]] = []

    class EndedMeanwhile(SqlCatalogStore):
        """This container's store: another container's version change lands after its look, before its write."""

        def add_subscription(self, namespace: str, doc: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            while meanwhile:
                meanwhile.pop()()
            super().add_subscription(namespace, doc, *args, **kwargs)

    slow, other = EndedMeanwhile(metas[0].engine), SqlCatalogStore(metas[1].engine)
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    fee = {"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M",
           "price": {"type": "flat", "amount": "10", "paymentTerm": "in_advance"}}

    def published(key: str) -> dict[str, Any]:
        v = catalog.create("ns", "plan", {"key": key, "name": key, "currency": "USD", "billingCadence": "P1M",
                                          "phases": [{"key": "default", "name": "D", "rateCards": [fee]}]},
                           store=other, now=NOW)
        return catalog.publish("ns", "plan", v["id"], store=other, features=ents[1], now=NOW)

    let_through = []
    for how in ("archive", "replace and delete", "change onto archived"):
        key = how.replace(" ", "_")
        v1 = published(key)
        customer = _new_customer(metas[0], f"c_{key}")
        if how == "replace and delete":
            v2 = catalog.next_version("ns", "plan", key, store=other, now=NOW)
            meanwhile[:] = [partial(catalog.delete, "ns", "plan", v1["id"], store=other, now=NOW),
                            partial(catalog.publish, "ns", "plan", v2["id"], store=other, features=ents[1], now=NOW)]
        else:
            meanwhile[:] = [partial(catalog.archive, "ns", "plan", v1["id"], store=other, now=NOW)]
        before: list[dict[str, Any]] = []
        try:
            if how == "change onto archived":
                running = subs_service.create("ns", {"plan": {"key": published(f"{key}_from")["key"]},
                                                     "customerId": customer["id"]},
                                              store=other, meta=metas[1], ents=ents[1], now=NOW)
                before = other.list_subscriptions("ns", customer["id"])
                subs_service.change("ns", running["id"], {"timing": "immediate", "plan": {"key": key, "version": 1}},
                                    store=slow, meta=metas[0], ents=ents[0], now=NOW)
            else:
                subs_service.create("ns", {"plan": {"key": key, "version": 1}, "customerId": customer["id"]},
                                    store=slow, meta=metas[0], ents=ents[0], now=NOW)
        except ValidationFailed as e:
            assert [err["field"] for err in e.errors] == ["plan"], e.errors
        else:
            let_through.append(how)
        assert not meanwhile
        after = other.list_subscriptions("ns", customer["id"])
        on_ended = [s["id"] for s in after if s not in before]
        if on_ended or [s["id"] for s in after] != [s["id"] for s in before]:
            let_through.append(f"{how}: subscriptions {[s['plan'] for s in after]} written")
    assert not let_through, let_through
